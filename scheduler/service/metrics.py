"""The service's Prometheus metrics, in their own registry (names in docs/service.md).

Request accounting obeys one invariant: every accepted request ends exactly once, completed or
errored (by reason), so `sbs_requests_accepted_total == sbs_requests_completed_total +
sbs_requests_errored_total` once nothing is outstanding. Per-rank state (assigned load, imbalance,
suspect engines, core counters) is read from the dispatcher when scraped, not pushed on every event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sbs.scheduler.service.loop_metrics import LoopCounter, LoopHistogram
from sbs.scheduler.service.protocol import ENDPOINTS

ERROR_REASONS = (
    "deadline",
    "client_disconnect",
    "engine_failed",
    "engine_failed_after_prefill",
    "upstream_rejected",
    "rejected",
    "internal_error",
)
"""Why an accepted request ended in an error (docs/service.md, "Fault semantics")."""
REJECT_REASONS = (
    "invalid_request",
    "buffer_full",
    "too_many_outstanding",
    "not_ready",
    "unauthorized",
    "parse_unavailable",
    "too_many_connections",
)
"""Why a request was refused before it was accepted."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 120, 300)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
DECODE_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


@dataclass(frozen=True, slots=True)
class RankRow:
    role: str
    engine: str
    dp_rank: int
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class EngineRow:
    role: str
    engine: str
    revision: str
    state: str
    """usable | suspect | draining | resolving"""


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the dispatcher reports at scrape time."""

    ranks: list[RankRow]
    imbalance: dict[tuple[str, str], float]
    """(role, revision) → max/mean assigned tokens over the usable ranks (1.0 when all are idle)."""
    engines: list[EngineRow]
    core: dict[str, int]
    """The cores' cumulative `SchedulerStats` (summed over pools and their rebuilds)."""


class Metrics:
    """All metrics of one service instance."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = LoopCounter(
            "sbs_requests_accepted", "Requests accepted into the scheduler.", ["endpoint"], registry=r
        )
        self.completed = LoopCounter(
            "sbs_requests_completed", "Accepted requests answered successfully.", ["endpoint"], registry=r
        )
        self.errored = LoopCounter(
            "sbs_requests_errored",
            "Accepted requests that ended in an error, by reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.rejected = LoopCounter(
            "sbs_requests_rejected",
            "Requests refused at admission (never accepted), by reason.",
            ["reason"],
            registry=r,
        )
        self.redispatched = LoopCounter(
            "sbs_requests_redispatched",
            "Requests sent again because an engine failed before their prefill completed.",
            ["role"],
            registry=r,
        )
        self.dispatched = LoopCounter(
            "sbs_dispatches", "PD dispatches sent, by the core's release reason.", ["reason"], registry=r
        )
        self.engine_dispatches = LoopCounter(
            "sbs_engine_dispatches",
            "Requests sent to an engine (each attempt, prefill and decode side).",
            ["role", "engine"],
            registry=r,
        )
        self.forwarded = LoopCounter(
            "sbs_requests_forwarded",
            "Requests forwarded to a peer scheduler replica (this one owned no prefill instance).",
            registry=r,
        )
        self.poll_failures = LoopCounter(
            "sbs_engine_poll_failures", "Failed load polls.", ["engine"], registry=r
        )
        self.watcher_restarts = LoopCounter(
            "sbs_engine_watcher_restarts",
            "Engine watcher tasks that died and were started again.",
            registry=r,
        )
        self.connections = Gauge("sbs_client_connections", "Open client connections.", registry=r)
        self.ttft = LoopHistogram(
            "sbs_ttft_seconds",
            "Arrival to the first streamed byte (streaming requests).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = LoopHistogram(
            "sbs_tpot_seconds",
            "Time per output token of completed streaming requests, after the first (as relayed).",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.itl = LoopHistogram(
            "sbs_itl_seconds",
            "Inter-token latency per relayed chunk: its gap divided by the tokens it carried.",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.queue_wait = LoopHistogram(
            "sbs_queue_wait_seconds",
            "Arrival to dispatch: time in the scheduler's buffer.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.e2e = LoopHistogram(
            "sbs_e2e_latency_seconds",
            "Arrival to the last byte, by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = LoopHistogram(
            "sbs_request_prompt_tokens",
            "Prompt tokens of accepted requests (estimated from bytes unless input_ids were sent).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = LoopHistogram(
            "sbs_request_output_tokens",
            "Tokens accepted requests may generate (their max_tokens).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_size = LoopHistogram(
            "sbs_batch_size",
            "Requests per release to one prefill instance.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dispatch_interval = LoopHistogram(
            "sbs_dispatch_interval_seconds",
            "Time between consecutive releases.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.buffered = Gauge(
            "sbs_buffered_requests", "Accepted requests waiting in the scheduler's buffer.", registry=r
        )
        self.outstanding = Gauge(
            "sbs_outstanding_requests", "Accepted requests not yet finished.", registry=r
        )

        for endpoint in ENDPOINTS:  # every series exists from the start (dashboards, rate())
            self.accepted.labels(endpoint)
            self.completed.labels(endpoint)
            for reason in ERROR_REASONS:
                self.errored.labels(endpoint, reason)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for role in ("prefill", "decode", "none"):
            self.redispatched.labels(role)
        self.e2e.labels("completed")
        self.e2e.labels("errored")

    def attach(self, snapshot: Callable[[], StateSnapshot]) -> None:
        """Export the dispatcher's state at scrape time."""
        self.registry.register(_StateCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        reqs = GaugeMetricFamily(
            "sbs_rank_assigned_requests",
            "Outstanding requests per DP rank as the scheduler accounts them (dispatches + snapshots).",
            labels=["role", "engine", "dp_rank"],
        )
        toks = GaugeMetricFamily(
            "sbs_rank_assigned_tokens",
            "Outstanding tokens per DP rank (prefill: uncached prompt tokens; decode: KV tokens).",
            labels=["role", "engine", "dp_rank"],
        )
        for row in s.ranks:
            labels = [row.role, row.engine, str(row.dp_rank)]
            reqs.add_metric(labels, row.requests)
            toks.add_metric(labels, row.tokens)
        yield reqs
        yield toks
        imb = GaugeMetricFamily(
            "sbs_rank_imbalance_ratio",
            "Max over mean assigned tokens of the usable ranks.",
            labels=["role", "revision"],
        )
        for (role, rev), v in sorted(s.imbalance.items()):
            imb.add_metric([role, rev], v)
        yield imb
        state = GaugeMetricFamily(
            "sbs_engine_state",
            "1 for the engine's current state.",
            labels=["role", "engine", "revision", "state"],
        )
        suspects: dict[str, int] = {"prefill": 0, "decode": 0}
        for e in s.engines:
            state.add_metric([e.role, e.engine, e.revision, e.state], 1)
            if e.state == "suspect":
                suspects[e.role] = suspects.get(e.role, 0) + 1
        yield state
        sus = GaugeMetricFamily(
            "sbs_suspect_engines", "Engines skipped as suspect (stale or failing).", labels=["role"]
        )
        for role, n in sorted(suspects.items()):
            sus.add_metric([role], n)
        yield sus
        for key, value in sorted(s.core.items()):
            c = CounterMetricFamily(f"sbs_core_{key}", f"Scheduling core counter '{key}'.")
            c.add_metric([], value)
            yield c
