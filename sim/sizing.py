"""Predictive sizing: the fewest prefill and decode groups that meet TTFT and TPOT p90 SLOs on a workload.

`plan_groups(trace, cluster, slo)` runs the calibrated simulator on `trace` with `cluster`'s group
shapes (nodes, DP size, chunk, caps per instance of each role) and varies only the number of groups
(instances) per role. Both roles are assumed monotone: more groups of a role never make its latency
worse. The search:

1. **Prefill.** With decode at its maximum (generous), find the fewest prefill groups whose TTFT p90
   meets the SLO: exponential steps from the minimum (1, 2, 4, 8, … above it, capped at the maximum),
   then bisection between the last miss and the first hit.
2. **Decode.** With that prefill count, find the fewest decode groups meeting *both* SLOs the same
   way. TTFT is checked again here because it also depends on decode (first tokens are produced by
   decode, and a request joins a decode batch only when KV and the running cap allow), so the pair
   returned has itself been simulated and meets both.

A candidate meets an SLO when its p90 over completed requests is within it and no request was
dropped. `slo_attainment` is the fraction of *all* the trace's requests that completed with
TTFT ≤ the TTFT SLO and TPOT ≤ the TPOT SLO (the p90 targets used as per-request bounds; TPOT as in
`sbs.sim.recorder`, 0 for single-token outputs; a dropped request misses). Every candidate is
simulated at most once; the answer is the fewest-groups pair whose predecessor in the search missed.

Sans-IO and deterministic: no files, no clock in the result, no printing; runs are seeded by the
cluster's `seed`. With `jobs > 1` the points the sequential search may need next (the next
exponential steps, the next bisection midpoints) are simulated in parallel worker processes; the
answer is the same as with `jobs=1`, only extra candidates may appear in `evaluated`.

`sbs.sim.workload.synthetic_from_observed` turns observed statistics (request rate, prompt and output
length samples) into a trace to plan for, so a controller can size ahead of load with the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sbs.settings import scheduling
from sbs.sim import runner
from sbs.sim.cluster import ClusterConfig
from sbs.sim.trace import Trace


@dataclass(frozen=True)
class Slo:
    """The service-level objectives a plan must meet."""

    ttft_p90_s: float
    """90th percentile of time to first token, seconds (arrival → first token at the client)."""
    tpot_p90_s: float
    """90th percentile of per-request time per output token, seconds ((e2e − TTFT)/(output − 1))."""

    def __post_init__(self) -> None:
        for name in ("ttft_p90_s", "tpot_p90_s"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class PlanLimits:
    """The range of group counts searched, per role, and an optional GPU budget."""

    min_prefill_groups: int = 1
    max_prefill_groups: int = 16
    """16 prefill groups of `ds3-h800` (4 nodes each) is 512 GPUs, 4× the preset's prefill tier."""
    min_decode_groups: int = 1
    max_decode_groups: int = 8
    """Also the "generous" decode count used while searching prefill; 8 × DP144 is 8× the preset's."""
    max_gpus: int | None = None
    """A plan needing more GPUs than this is reported infeasible; None = no budget."""

    def __post_init__(self) -> None:
        for role in ("prefill", "decode"):
            lo, hi = getattr(self, f"min_{role}_groups"), getattr(self, f"max_{role}_groups")
            if type(lo) is not int or lo < 1:
                raise ValueError(f"min_{role}_groups must be an integer >= 1, got {lo!r}")
            if type(hi) is not int or hi < lo:
                raise ValueError(
                    f"max_{role}_groups must be an integer >= min_{role}_groups ({lo}), got {hi!r}"
                )
        if self.max_gpus is not None and (type(self.max_gpus) is not int or self.max_gpus < 1):
            raise ValueError(f"max_gpus must be a positive integer or None, got {self.max_gpus!r}")


@dataclass(frozen=True)
class Candidate:
    """One simulated pair of group counts and its figures."""

    prefill_groups: int
    decode_groups: int
    gpus: int
    ttft_p90_s: float
    tpot_p90_s: float
    slo_attainment: float
    completed: int
    dropped: int
    meets_ttft: bool
    meets_tpot: bool
    phase: str
    """The search step that asked for it: "prefill" (decode at its maximum) or "decode"."""
    sim_cpu_s: float = field(default=0.0, compare=False)
    """CPU seconds of the simulation (not part of equality: the only non-deterministic figure)."""

    @property
    def meets(self) -> bool:
        return self.meets_ttft and self.meets_tpot

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill_groups": self.prefill_groups,
            "decode_groups": self.decode_groups,
            "gpus": self.gpus,
            "ttft_p90_s": _finite(self.ttft_p90_s),
            "tpot_p90_s": _finite(self.tpot_p90_s),
            "slo_attainment": _finite(self.slo_attainment),
            "completed": self.completed,
            "dropped": self.dropped,
            "meets_ttft": self.meets_ttft,
            "meets_tpot": self.meets_tpot,
            "phase": self.phase,
            "sim_cpu_s": round(self.sim_cpu_s, 3),
        }


@dataclass(frozen=True)
class PlanResult:
    """The answer: group counts and figures when feasible (None otherwise), and every candidate tried."""

    feasible: bool
    prefill_groups: int | None
    decode_groups: int | None
    gpus: int | None
    ttft_p90_s: float | None
    tpot_p90_s: float | None
    slo_attainment: float | None
    reason: str
    """Why the answer is what it is, in one sentence (which SLO binds, or what missed at the limits)."""
    policy: str
    trace: str
    requests: int
    slo: Slo
    limits: PlanLimits
    cluster: ClusterConfig
    """The cluster with the planned counts (the shape with the minimum counts when infeasible)."""
    evaluated: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        """The `sbs-sim plan --json` document."""
        return {
            "feasible": self.feasible,
            "prefill_groups": self.prefill_groups,
            "decode_groups": self.decode_groups,
            "gpus": self.gpus,
            "ttft_p90_s": _finite(self.ttft_p90_s),
            "tpot_p90_s": _finite(self.tpot_p90_s),
            "slo_attainment": _finite(self.slo_attainment),
            "reason": self.reason,
            "policy": self.policy,
            "trace": self.trace,
            "requests": self.requests,
            "slo_ttft_p90_s": self.slo.ttft_p90_s,
            "slo_tpot_p90_s": self.slo.tpot_p90_s,
            "limits": {
                "min_prefill_groups": self.limits.min_prefill_groups,
                "max_prefill_groups": self.limits.max_prefill_groups,
                "min_decode_groups": self.limits.min_decode_groups,
                "max_decode_groups": self.limits.max_decode_groups,
                "max_gpus": self.limits.max_gpus,
            },
            "cluster": self.cluster.model_dump(),
            "evaluated": [c.to_dict() for c in self.evaluated],
        }


def sized(cluster: ClusterConfig, prefill_groups: int, decode_groups: int) -> ClusterConfig:
    """`cluster` with `prefill_groups` prefill and `decode_groups` decode instances, shapes unchanged."""
    return cluster.model_copy(
        update={
            "name": f"{cluster.name} {prefill_groups}P{decode_groups}D",
            "prefill": cluster.prefill.model_copy(update={"instances": prefill_groups}),
            "decode": cluster.decode.model_copy(update={"instances": decode_groups}),
        }
    )


def gpus_of(cluster: ClusterConfig, prefill_groups: int, decode_groups: int) -> int:
    """GPUs of `prefill_groups` + `decode_groups` groups of `cluster`'s shapes."""
    p, d = cluster.prefill, cluster.decode
    return prefill_groups * p.dp_size + decode_groups * d.dp_size


def plan_groups(
    trace: Trace,
    cluster: ClusterConfig,
    slo: Slo,
    policy: str | scheduling.PolicySettings = "sbs",
    limits: PlanLimits = PlanLimits(),
    *,
    jobs: int = 1,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> PlanResult:
    """The fewest prefill groups, then decode groups, of `cluster`'s shapes meeting `slo` on `trace`.

    `cluster`'s instance counts are ignored (only its shapes and knobs count). `on_candidate` is called
    with each candidate once simulated, in search order. Raises `ValueError` for a bad argument and
    `sbs.sim.errors.SimInputError` when the shapes cannot run the trace at all.
    """
    if len(trace) == 0:
        raise ValueError(f"trace {trace.name!r} has no requests to plan for")
    if type(jobs) is not int or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    pol = scheduling.policy_settings(policy) if isinstance(policy, str) else policy
    with _Evaluator(trace, cluster, slo, pol, jobs, on_candidate) as ev:
        return _search(ev, trace, cluster, slo, pol, limits, jobs)


# -- search ----------------------------------------------------------------------------------------


def _search(
    ev: _Evaluator,
    trace: Trace,
    cluster: ClusterConfig,
    slo: Slo,
    pol: scheduling.PolicySettings,
    limits: PlanLimits,
    jobs: int,
) -> PlanResult:
    p_lo, p_hi = limits.min_prefill_groups, limits.max_prefill_groups
    d_lo, d_hi = limits.min_decode_groups, limits.max_decode_groups

    def result(feasible: bool, reason: str, best: Candidate | None) -> PlanResult:
        counts = (best.prefill_groups, best.decode_groups) if best else (p_lo, d_lo)
        return PlanResult(
            feasible=feasible,
            prefill_groups=best.prefill_groups if best else None,
            decode_groups=best.decode_groups if best else None,
            gpus=best.gpus if best else None,
            ttft_p90_s=best.ttft_p90_s if best else None,
            tpot_p90_s=best.tpot_p90_s if best else None,
            slo_attainment=best.slo_attainment if best else None,
            reason=reason,
            policy=pol.name,
            trace=trace.name,
            requests=len(trace),
            slo=slo,
            limits=limits,
            cluster=sized(cluster, *counts),
            evaluated=tuple(ev.order),
        )

    prefill = _smallest(
        p_lo,
        p_hi,
        lambda p: ev.get(p, d_hi, "prefill").meets_ttft,
        lambda ps: ev.prefetch([(p, d_hi) for p in ps], "prefill"),
        jobs,
    )
    if prefill is None:
        top = ev.get(p_hi, d_hi, "prefill")
        return result(False, f"infeasible within the limits: {_miss(top, slo)} at the maximum counts", None)
    decode = _smallest(
        d_lo,
        d_hi,
        lambda d: ev.get(prefill, d, "decode").meets,
        lambda ds: ev.prefetch([(prefill, d) for d in ds], "decode"),
        jobs,
    )
    if decode is None:
        top = ev.get(prefill, d_hi, "decode")
        return result(
            False, f"infeasible within the limits: {_miss(top, slo)} at the maximum decode count", None
        )
    best = ev.get(prefill, decode, "decode")
    if limits.max_gpus is not None and best.gpus > limits.max_gpus:
        return result(
            False,
            f"infeasible within the limits: the smallest plan ({prefill}P + {decode}D) needs {best.gpus} "
            f"GPUs, over the budget of {limits.max_gpus}",
            None,
        )
    return result(True, _why(ev, best, limits), best)


def _smallest(
    lo: int, hi: int, ok: Callable[[int], bool], prefetch: Callable[[list[int]], None], jobs: int
) -> int | None:
    """The smallest n in [lo, hi] with ok(n), assuming ok is monotone; None if ok(hi) is false.

    Exponential steps lo, lo+1, lo+3, lo+7, … (capped at hi) until a hit, then bisection between the
    last miss and the hit. Before each test, `prefetch` gets the next `jobs` points the sequential
    search could test (so they can be simulated together); it never changes which points are tested.
    """
    steps = _exponential(lo, hi)
    miss, hit = lo - 1, None
    for i, n in enumerate(steps):
        prefetch(steps[i : i + jobs])
        if ok(n):
            hit = n
            break
        miss = n
    if hit is None:
        return None
    while hit - miss > 1:
        prefetch(list(_midpoints(miss, hit))[:jobs])
        mid = (miss + hit) // 2
        if ok(mid):
            hit = mid
        else:
            miss = mid
    return hit


def _exponential(lo: int, hi: int) -> list[int]:
    out, k = [], 0
    while not out or out[-1] < hi:
        out.append(min(hi, lo - 1 + 2**k))
        k += 1
    return out


def _midpoints(miss: int, hit: int) -> Iterator[int]:
    """Bisection points of (miss, hit) in the order a sequential search may need them (breadth-first)."""
    queue = [(miss, hit)]
    while queue:
        a, b = queue.pop(0)
        if b - a > 1:
            mid = (a + b) // 2
            yield mid
            queue += [(a, mid), (mid, b)]


def _misses(c: Candidate, slo: Slo) -> str:
    parts = []
    if c.dropped:
        parts.append(f"{c.dropped} requests dropped")
    if not c.ttft_p90_s <= slo.ttft_p90_s:
        parts.append(f"TTFT p90 {c.ttft_p90_s:.3f} s > {slo.ttft_p90_s:g} s")
    if not c.tpot_p90_s <= slo.tpot_p90_s:
        parts.append(f"TPOT p90 {c.tpot_p90_s:.4f} s > {slo.tpot_p90_s:g} s")
    return " and ".join(parts)


def _miss(c: Candidate, slo: Slo) -> str:
    return f"{_misses(c, slo)} with {c.prefill_groups}P + {c.decode_groups}D"


def _why(ev: _Evaluator, best: Candidate, limits: PlanLimits) -> str:
    """Which tested neighbour shows each count is the fewest, or that it is the minimum allowed."""
    p, d = best.prefill_groups, best.decode_groups
    below_p = ev.cache.get((p - 1, limits.max_decode_groups))
    if p > limits.min_prefill_groups and below_p is not None:
        first = f"{p - 1}P + {limits.max_decode_groups}D misses TTFT ({below_p.ttft_p90_s:.3f} s)"
    else:
        first = f"{p}P (the minimum allowed) meets TTFT"
    below_d = ev.cache.get((p, d - 1))
    if d > limits.min_decode_groups and below_d is not None:
        second = f"{p}P + {d - 1}D misses ({_misses(below_d, ev.slo)})"
    else:
        second = f"{d}D (the minimum allowed) meets both"
    return f"{first}; {second}"


class _Evaluator(runner.LazyPool):
    """Simulates candidates once each (in worker processes when jobs > 1), in a fixed order."""

    def __init__(
        self,
        trace: Trace,
        cluster: ClusterConfig,
        slo: Slo,
        policy: scheduling.PolicySettings,
        jobs: int,
        on_candidate: Callable[[Candidate], None] | None,
    ) -> None:
        super().__init__(jobs)
        self.trace, self.cluster, self.slo, self.policy = trace, cluster, slo, policy
        self.on_candidate = on_candidate
        self.cache: dict[tuple[int, int], Candidate] = {}
        self.order: list[Candidate] = []

    def get(self, p: int, d: int, phase: str) -> Candidate:
        self.prefetch([(p, d)], phase)
        return self.cache[(p, d)]

    def prefetch(self, points: list[tuple[int, int]], phase: str) -> None:
        todo = list(dict.fromkeys(pt for pt in points if pt not in self.cache))
        if not todo:
            return
        args = [
            (runner.RunSpec(self.trace, sized(self.cluster, p, d), self.policy), *self._slo())
            for p, d in todo
        ]
        pool = self.for_batch(len(todo))
        outs = [_run(a) for a in args] if pool is None else pool.map(_run, args)
        for (p, d), out in zip(todo, outs, strict=True):
            cand = self._candidate(p, d, out, phase)
            self.cache[(p, d)] = cand
            self.order.append(cand)
            if self.on_candidate is not None:
                self.on_candidate(cand)

    def _slo(self) -> tuple[float, float]:
        return self.slo.ttft_p90_s, self.slo.tpot_p90_s

    def _candidate(self, p: int, d: int, s: dict[str, Any], phase: str) -> Candidate:
        completed, dropped = int(s["completed"]), int(s["dropped"])
        attained = s["slo_attainment"] * completed / len(self.trace) if completed else 0.0
        ttft, tpot = float(s["ttft_p90_s"]), float(s["tpot_p90_s"])
        return Candidate(
            prefill_groups=p,
            decode_groups=d,
            gpus=gpus_of(self.cluster, p, d),
            ttft_p90_s=ttft,
            tpot_p90_s=tpot,
            slo_attainment=float(attained),
            completed=completed,
            dropped=dropped,
            meets_ttft=dropped == 0 and ttft <= self.slo.ttft_p90_s,
            meets_tpot=dropped == 0 and tpot <= self.slo.tpot_p90_s,
            phase=phase,
            sim_cpu_s=float(s["sim_cpu_s"]),
        )


def _run(args: tuple[runner.RunSpec, float, float]) -> dict[str, Any]:
    """One simulation's summary (module level, so worker processes can run it)."""
    return runner.run_one(*args)["summary"]


# -- argument checks -------------------------------------------------------------------------------


def _positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
