"""One chaos scenario under load: the trace replay, the fault injector beside it, the figures.

The replay (`load.replay`) runs `warmup_s + fault_s + after_s` wall seconds of the trace at a
fraction of the stack's capacity (`sbs-bench`'s yardstick); the scenario's `inject(ctx)` runs in a
thread meanwhile: it waits for the warm-up, injects its faults, records what it measured (recovery
times, requests in flight on what it broke) and which targets held. A monitor samples whether the
stack is converged every 0.5 s; recovery is when it is again and the TTFT p90 of the next window is
back within 20 % of the steady state before the fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from sbs.bench.chaos.cluster import Stack
from sbs.bench.chaos.load import REQUEST_TIMEOUT_S, Deaths, Outcome, Tally, replay_in_child, ttft_p90
from sbs.sim.trace import Trace, build_trace
from sbs.sim.workload import load_scaled, tiled, truncated

RECOVERY_WINDOW_S = 10.0
DRAIN_S = REQUEST_TIMEOUT_S + 60.0
"""A request still open this long after the last send is hung: past its deadline by a minute."""
_ON_FAILED = re.compile(r"engine_failed|scheduler killed")
TTFT_SLACK = 1.2


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall seconds of each phase, and the fault cadence."""

    warmup_s: float = 30.0
    fault_s: float = 60.0
    after_s: float = 40.0
    kill_every_s: float = 10.0
    hang_s: float = 20.0
    operator_kills: int = 10
    max_output_tokens: int | None = None
    """Cap of each request's output (CI's short runs: the last long generations set the tail)."""

    @property
    def total_s(self) -> float:
        return self.warmup_s + self.fault_s + self.after_s


@dataclasses.dataclass
class Context:
    """What an injector sees and fills in."""

    stack: Stack
    timing: Timing
    t0: float
    deaths: Deaths = dataclasses.field(default_factory=Deaths)
    fault_start: float = math.nan
    fault_end: float = math.nan
    in_flight: int = 0
    """Requests in flight on the components the scenario broke, summed over its faults."""
    targets: dict[str, tuple[bool, str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def sleep_until(self, offset_s: float) -> None:
        delay = self.t0 + offset_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def target(self, name: str, ok: bool, detail: str) -> None:
        self.targets[name] = (ok, detail)


class Scenario(Protocol):
    name: str
    kind: str

    def inject(self, ctx: Context) -> None: ...


@dataclasses.dataclass
class Result:
    name: str
    kind: str
    tally: Tally
    ttft_before: float
    ttft_during: float
    ttft_after: float
    recovery_s: float | None
    targets: dict[str, tuple[bool, str]]
    notes: list[str]

    @property
    def ok(self) -> bool:
        t = self.tally
        return t.lost == 0 and t.hung == 0 and all(ok for ok, _ in self.targets.values())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


def workload(base: Trace, stack: Stack, load: float, timing: Timing) -> Trace:
    """`base` at `load` × the stack's nominal prefill capacity, cut or repeated to the run's length
    (engine seconds: wall ÷ time factor)."""
    nominal = stack.shape.bench_cluster().nominal_prefill_tok_s(base)
    trace = load_scaled(base, load * nominal)
    span = timing.total_s / stack.time_factor
    trace = tiled(trace, span) if span > trace.duration_s else truncated(trace, span)
    cap = timing.max_output_tokens
    if cap is None:
        return trace
    rs = trace.requests
    return build_trace(f"{trace.name} outputs <= {cap}", [r.arrival_s for r in rs],
                       [r.prompt_tokens for r in rs], [min(r.output_tokens, cap) for r in rs])  # fmt: skip


def engine_get(pod: dict[str, Any], path: str) -> str:
    """GET `path` of an engine pod's HTTP port ("" when it does not answer)."""
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "http")
    try:
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def engine_loads(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """An engine's `/v1/loads` entries, one per DP rank ([] when it does not answer)."""
    try:
        return json.loads(engine_get(pod, "/v1/loads"))["loads"]
    except (ValueError, KeyError):
        return []


def engine_in_flight(pod: dict[str, Any]) -> int:
    """Requests an engine holds (running, waiting, and in its PD queues), from its `/v1/loads`."""
    total = 0
    for rank in engine_loads(pod):
        total += rank.get("num_running_reqs", 0) + rank.get("num_waiting_reqs", 0)
        pd = rank.get("disaggregation") or {}
        total += sum(v for k, v in pd.items() if k.endswith("_queue_reqs"))
    return total


def counter_sum(text: str, prefixes: tuple[str, ...], having: str = "") -> float:
    """Sum of the Prometheus samples whose line starts with one of `prefixes` and contains `having`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefixes) and having in line)  # fmt: skip


def _engine_key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _scheduler_metric(stack: Stack, name: str, pod: dict[str, Any]) -> int:
    """A scheduler metric's samples for the engine of `pod`, summed over ranks and replicas."""
    key = f'engine="{_engine_key(pod)}"'
    total = 0.0
    for url in stack.scheduler_urls():
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
                total += counter_sum(r.read().decode(), (name + "{",), key)
        except OSError:
            continue
    return int(total)


def scheduler_assigned(stack: Stack, pod: dict[str, Any]) -> int:
    """Requests the scheduler's core has on an engine (its `sbs_rank_assigned_requests`)."""
    return _scheduler_metric(stack, "sbs_rank_assigned_requests", pod)


def scheduler_sent(stack: Stack, pod: dict[str, Any]) -> int:
    """Requests the schedulers have sent to an engine so far (`sbs_engine_dispatches_total`)."""
    return _scheduler_metric(stack, "sbs_engine_dispatches_total", pod)


def scheduler_held(stack: Stack, pod: dict[str, Any]) -> int:
    """Requests the schedulers' relays hold on an engine now (`GET /engines`' `in_flight`)."""
    key = _engine_key(pod)
    return sum(int(e.get("in_flight", 0)) for e in stack.engines() if e.get("key") == key)


def in_flight(stack: Stack, pod: dict[str, Any]) -> int:
    """Requests on an engine: the largest of its own count, the core's and the relays' (the first two
    are snapshots that can lag a step behind)."""
    return max(engine_in_flight(pod), scheduler_assigned(stack, pod), scheduler_held(stack, pod))


def in_flight_across(stack: Stack, pod: dict[str, Any], fault: Callable[[], Any]) -> int:
    """Requests on an engine when `fault()` broke it: `in_flight` just before, plus what the
    schedulers sent it from then until just after (they have not noticed yet)."""
    sent = scheduler_sent(stack, pod)
    before = in_flight(stack, pod)
    fault()
    return before + max(0, scheduler_sent(stack, pod) - sent)


def engine_served(pod: dict[str, Any]) -> int:
    """Requests an engine finished or aborted so far (its `/metrics` counters)."""
    names = ("sglang:num_requests_total{", "sglang:num_aborted_requests_total{")
    return int(counter_sum(engine_get(pod, "/metrics"), names))


class _Monitor:
    """Samples `stack.converged()` every 0.5 s in a thread: (monotonic time, converged)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.samples: list[tuple[float, bool]] = []
        self.endpoints: list[int] = []
        """Ready scheduler endpoints at each sample."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                ok = self.stack.converged()
                self.endpoints.append(len(self.stack.scheduler_urls()))
            except Exception:  # the API may be down (a restart scenario): not converged
                ok = False
            self.samples.append((time.monotonic(), ok))

    def __enter__(self) -> _Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def recovery(
    outcomes: list[Outcome], samples: list[tuple[float, bool]], ctx: Context, before: float
) -> float | None:
    """Seconds from the fault's end until converged and the next window's TTFT p90 is within 20 % of
    `before`; None when that never happened in the run."""
    tf = ctx.stack.time_factor
    for t, ok in samples:
        if t < ctx.fault_end or not ok:
            continue
        p90 = ttft_p90(outcomes, t, t + RECOVERY_WINDOW_S, tf)
        if math.isnan(before) or (not math.isnan(p90) and p90 <= TTFT_SLACK * before):
            return max(0.0, t - ctx.fault_end)
    return None


def run(stack: Stack, scenario: Scenario, base: Trace, timing: Timing, *, load: float,
        log: Callable[[str], None] = print) -> Result:  # fmt: skip
    """One scenario on a converged `stack`; returns its figures."""
    stack.wait_converged(180)
    trace = workload(base, stack, load, timing)
    log(f"[{scenario.name}] {len(trace)} requests over {timing.total_s:.0f} s wall (load {load:g}, "
        f"time factor {stack.time_factor:g})")  # fmt: skip
    ctx = Context(stack, timing, time.monotonic() + 0.2)
    errors: list[BaseException] = []

    def inject() -> None:
        try:
            scenario.inject(ctx)
        except BaseException as exc:  # reported, and the scenario fails
            errors.append(exc)

    injector = threading.Thread(target=inject, name=f"chaos-{scenario.name}", daemon=True)
    with _Monitor(stack) as monitor:
        injector.start()
        outcomes = replay_in_child(
            trace, stack.time_factor, kubeconfig=str(stack.plane.kubeconfig), namespace=stack.namespace,
            selector=stack.scheduler_selector, port=stack.shape.scheduler_port, drain_s=DRAIN_S,
        )  # fmt: skip
        injector.join()
    ctx.deaths.attribute(outcomes)
    ctx.in_flight += ctx.deaths.in_flight(outcomes)
    gaps = sum(1 for n in monitor.endpoints if n == 0)
    if gaps:
        ctx.notes.append(f"no Ready scheduler endpoint in {gaps} of {len(monitor.endpoints)} samples (0.5 s)")
    if errors:
        ctx.target("injector", False, f"{type(errors[0]).__name__}: {errors[0]}")
    if math.isnan(ctx.fault_end):
        ctx.fault_start = ctx.fault_end = ctx.t0 + timing.warmup_s
    tf = stack.time_factor
    before = ttft_p90(outcomes, ctx.t0, ctx.fault_start, tf)
    during = ttft_p90(outcomes, ctx.fault_start, ctx.fault_end, tf)
    after = ttft_p90(outcomes, ctx.fault_end, math.inf, tf)
    tally = Tally.of(outcomes)
    # Errors of requests that were on what failed, vs. requests the scheduler held while a role had
    # no usable engine at all (overlapping outages: every group of the role down at once).
    on_failed = sum(1 for o in outcomes if o.kind == "retryable" and _ON_FAILED.search(o.detail))
    if ctx.in_flight or on_failed:
        ok = on_failed <= ctx.in_flight
        ctx.target("retryable on the failed component <= in flight", ok, f"{on_failed} <= {ctx.in_flight}")
    if tally.retryable - on_failed:
        ctx.notes.append(f"{tally.retryable - on_failed} other retryable (no usable engine of a role left)")
    rec = recovery(outcomes, monitor.samples, ctx, before)
    return Result(scenario.name, scenario.kind, tally, before, during, after, rec, ctx.targets, ctx.notes)
