"""`/metrics`: SGLang's Prometheus metric names, labels and buckets, on a per-engine registry.

Scheduler metrics (gauges, PD failure counters, the KV-transfer histogram) carry `model_name`,
`engine_type`, `tp_rank`, `pp_rank`, `moe_ep_rank` and `dp_rank`, one series per DP rank (DP attention
with attention TP 1, so tp_rank = moe_ep_rank = dp_rank). Tokenizer metrics (token counters, TTFT,
ITL, end-to-end latency) carry `model_name` and `engine_type` only, as in SGLang. Times are wall time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sbs.sim.emulator.settings import EngineSettings

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.06,
    0.08,
    0.1,
    0.2,
    0.3,
    0.4,
)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 800)
KV_MS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

STAGE_BUCKETS = tuple(0.001 * 1.62**k for k in range(30))
"""SGLang's `exponential_buckets(start=0.001, width=1.62, length=30)`."""
_RANK_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "dp_rank")
_TOKENIZER_LABELS = ("model_name", "engine_type")

_GAUGES = {
    "num_running_reqs": "The number of running requests.",
    "num_queue_reqs": "The number of requests in the waiting queue.",
    "num_used_tokens": "The number of used tokens.",
    "token_usage": "The token usage.",
    "max_total_num_tokens": "Maximum total number of tokens in the KV cache pool.",
    "gen_throughput": "The generation throughput (token/s).",
    "cache_hit_rate": "The prefix cache hit rate.",
    "utilization": "The utilization.",
    "num_prefill_bootstrap_queue_reqs": "The number of requests in the prefill bootstrap queue.",
    "num_prefill_inflight_queue_reqs": "The number of requests in the prefill inflight (transfer) queue.",
    "num_decode_prealloc_queue_reqs": "The number of requests in the decode prealloc queue.",
    "num_decode_transfer_queue_reqs": "The number of requests in the decode transfer queue.",
}


class EngineMetrics:
    """The metric families of one engine; `render()` is the `/metrics` body."""

    def __init__(self, settings: EngineSettings) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._base = {"model_name": settings.served_name, "engine_type": settings.engine_type}
        self._rank_labels = [
            {**self._base, "tp_rank": str(i), "pp_rank": "0", "moe_ep_rank": str(i), "dp_rank": str(i)}
            for i in range(settings.dp_size)
        ]
        self.gauges = {
            name: Gauge(f"sglang:{name}", doc, _RANK_LABELS, registry=r) for name, doc in _GAUGES.items()
        }
        self.bootstrap_failed = Counter(
            "sglang:num_bootstrap_failed_reqs",
            "PD requests that failed in bootstrap.",
            _RANK_LABELS,
            registry=r,
        )
        self.transfer_failed = Counter(
            "sglang:num_transfer_failed_reqs",
            "PD requests whose KV transfer failed.",
            _RANK_LABELS,
            registry=r,
        )
        self.kv_transfer_latency_ms = Histogram(
            "sglang:kv_transfer_latency_ms",
            "KV transfer latency (prefill side), ms.",
            _RANK_LABELS,
            buckets=KV_MS_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "sglang:per_stage_req_latency_seconds",
            "The latency of each stage of requests.",
            (*_RANK_LABELS, "stage"),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        tl = _TOKENIZER_LABELS
        self.prompt_tokens = Counter("sglang:prompt_tokens", "Prefill tokens processed.", tl, registry=r)
        self.generation_tokens = Counter("sglang:generation_tokens", "Generation tokens.", tl, registry=r)
        self.num_requests = Counter("sglang:num_requests", "Requests finished.", tl, registry=r)
        self.num_aborted = Counter("sglang:num_aborted_requests", "Requests aborted.", tl, registry=r)
        self.cached_tokens = Counter(
            "sglang:cached_tokens",
            "Prompt tokens served from the prefix cache.",
            (*tl, "cache_source"),
            registry=r,
        )
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds", "Time to first token.", tl, buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "sglang:inter_token_latency_seconds", "Inter-token latency.", tl, buckets=ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "End-to-end request latency.",
            tl,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        for labels in self._rank_labels:  # every rank's series exists from the start, as in SGLang
            for g in self.gauges.values():
                g.labels(**labels)
            self.bootstrap_failed.labels(**labels)
            self.transfer_failed.labels(**labels)
        for c in (self.prompt_tokens, self.generation_tokens, self.num_requests, self.num_aborted):
            c.labels(**self._base)

    def rank(self, dp_rank: int) -> dict[str, str]:
        return self._rank_labels[dp_rank]

    @property
    def base(self) -> dict[str, str]:
        return self._base

    def set_gauges(self, loads: Sequence[Mapping[str, Any]]) -> None:
        """Refresh the scheduler gauges from one load snapshot (one entry per DP rank)."""
        g = self.gauges
        for entry in loads:
            lab = self._rank_labels[entry["dp_rank"]]
            dis = entry["disaggregation"]
            g["num_running_reqs"].labels(**lab).set(entry["num_running_reqs"])
            g["num_queue_reqs"].labels(**lab).set(entry["num_waiting_reqs"])
            g["num_used_tokens"].labels(**lab).set(entry["num_used_tokens"])
            g["token_usage"].labels(**lab).set(entry["token_usage"])
            g["max_total_num_tokens"].labels(**lab).set(entry["max_total_num_tokens"])
            g["gen_throughput"].labels(**lab).set(entry["gen_throughput"])
            g["cache_hit_rate"].labels(**lab).set(entry["cache_hit_rate"])
            g["utilization"].labels(**lab).set(entry["utilization"])
            g["num_prefill_bootstrap_queue_reqs"].labels(**lab).set(dis["prefill_bootstrap_queue_reqs"])
            g["num_prefill_inflight_queue_reqs"].labels(**lab).set(dis["prefill_inflight_queue_reqs"])
            g["num_decode_prealloc_queue_reqs"].labels(**lab).set(dis["decode_prealloc_queue_reqs"])
            g["num_decode_transfer_queue_reqs"].labels(**lab).set(dis["decode_transfer_queue_reqs"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
