"""Measured capacity: each policy's saturation throughput on a workload, and the knee of its TTFT curve.

`--load` is a fraction of the *nominal* prefill capacity (`sbs.sim.nominal_capacity`: full, balanced
chunks, no cache hits), which policies approach at best on short prompts; on long-context traces
the real figure can be a third of it or less. `measure` finds, per policy, the highest offered load
the cluster sustains with a bounded queue, by simulating the workload at a few load multipliers.

**Sustainable.** A run is sustainable when its prefill backlog does not grow. The backlog B(t) is the
prompt tokens that have arrived by t and not yet had their first token (queued in the scheduler or
an engine, or in a prefill step or KV transfer; a dropped request stays in it for good). With the
arrival window [0, T) cut in thirds, the *deficit* is the growth of B's time average from the middle
third to the last, per second, as a fraction of the prompt tokens/s offered over the last two
thirds::

    deficit = (mean B over [2T/3, T) − mean B over [T/3, 2T/3)) / (T/3) / offered_rate([T/3, T))

and the run is sustainable when deficit ≤ `max_deficit` (5 %). Served = arrived − growth of B, so
this is "completed prompt tok/s ≥ 95 % of offered" measured in the steady part of the run, but
without its two biases: the first third (the cluster starting empty) is left out, and time averages
over 40 s (at T = 120 s) replace the backlog at two instants, so a burst in flight at the end, a long
prompt in service or the drain of the last requests after arrivals stop do not decide it. A queue
that grows without bound grows linearly, by (offered − capacity) per second, which gives exactly
deficit = 1 − capacity/offered; a stable queue's time averages are equal up to the trace's own
burstiness. On a bursty trace the figure is the capacity for *that* trace's burst pattern over the run.
The window must be long against the queue's time scale: when requests take tens of seconds to a
first token (long contexts), a queue that grows slowly looks settled in 120 s. A capacity whose run
had TTFT p90 above T/6 carries a `warning` to use a longer `--duration`.

**Search.** Bracket, then bisect the multiplier x of nominal: start at x = 1; while unsustainable,
step down to the served rate it showed, x·(1 − deficit) less the precision (the step clamped to
×0.25…×0.9); while sustainable, double (up to `max_load`), or, when the backlog already grew by
over half the tolerance, step just past the edge estimated below. Then narrow [lo, hi] (the highest
sustainable and lowest unsustainable x) until hi/lo ≤ 1 + `precision` (3 %). The sustainability
edge is estimated from hi's served rate, hi·(1 − deficit)/(1 − max_deficit), and the next run aims a
third of the precision below it after an unsustainable run, above it after a sustainable one
(clamped to the inner 80 % of the bracket, log scale); when a run's verdict is not the one aimed at,
or the aim falls outside the bracket, the next step is a plain bisection (geometric mean). Good
estimates finish in two runs, bad ones cost bisection steps; costly runs far above capacity are
avoided.
The capacity is what lo *served*: lo·(1 − deficit) (deficit clipped at 0), so the up to 5 %
of backlog growth the criterion tolerates is not counted as capacity; it is never above a load found
sustainable. Each run uses the same workload options as `compare` (`--duration`, `--arrivals`, ...),
so capacity loads mean what `--load` means.

**Knee.** The lowest load at which TTFT p90 exceeds `knee_factor` (2×) its value at 0.1 of the
capacity: the policy's latency has doubled from queueing. Found on the grid `knee_grid` of fractions of
the capacity (plus the capacity run itself), linearly interpolated between the last grid point within
2× and the first beyond (`sbs.sim.report.max_load_meeting`); None when TTFT p90 stays within 2× up to
the capacity.

Sans-IO: no printing or files; callbacks report progress. Deterministic for a given workload: probes
depend only on earlier results of the same policy, however many worker processes run them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sbs.settings import scheduling
from sbs.sim import report
from sbs.sim.cluster import ClusterConfig
from sbs.sim.runner import LazyPool
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace


@dataclass(frozen=True)
class CapacitySettings:
    precision: float = 0.03
    """Stop bisecting when hi/lo ≤ 1 + precision."""
    max_deficit: float = 0.05
    """Sustainable when the backlog grows by at most this fraction of the offered rate."""
    start_load: float = 1.0
    max_load: float = 4.0
    min_load: float = 1 / 64
    knee: bool = True
    knee_grid: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.85)
    """Fractions of the capacity run for the knee; the first is the reference."""
    knee_factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.precision < 1):
            raise ValueError(f"precision must be in (0, 1), got {self.precision!r}")
        if not (0 < self.max_deficit < 1):
            raise ValueError(f"max_deficit must be in (0, 1), got {self.max_deficit!r}")
        if not (0 < self.min_load <= self.start_load <= self.max_load):
            raise ValueError("need 0 < min_load <= start_load <= max_load")


@dataclass(frozen=True)
class Probe:
    """One simulated load of one policy."""

    load: float
    """Load multiplier of nominal."""
    offered_tok_s: float
    """Prompt tok/s the run's trace offers (after --duration and --arrivals)."""
    deficit: float
    """Backlog growth per second as a fraction of the offered rate (module docstring)."""
    sustainable: bool
    ttft_p90_s: float
    completed: int
    dropped: int
    purpose: str
    """"search", "knee", or "at" (`at_loads`)."""
    span_s: float = 0.0
    """The run's arrival window T."""
    sim_cpu_s: float = field(default=0.0, compare=False)

    @property
    def served_tok_s(self) -> float:
        """Offered × (1 − deficit): the served rate, an estimate of capacity when overloaded."""
        return self.offered_tok_s * (1.0 - max(self.deficit, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_of_nominal": self.load,
            "offered_tok_s": self.offered_tok_s,
            "served_tok_s": self.served_tok_s,
            "deficit": self.deficit,
            "sustainable": self.sustainable,
            "ttft_p90_s": _finite(self.ttft_p90_s),
            "completed": self.completed,
            "dropped": self.dropped,
            "purpose": self.purpose,
            "sim_cpu_s": round(self.sim_cpu_s, 2),
        }


@dataclass(frozen=True)
class PolicyCapacity:
    """One policy's measured capacity and knee, with every run it took."""

    policy: str
    nominal_tok_s: float
    capacity_load: float | None
    """The capacity as a multiplier of nominal: the served rate at `sustainable_load`; None when even
    `min_load` is unsustainable."""
    sustainable_load: float | None
    """Highest sustainable multiplier of nominal found (offered)."""
    upper_load: float | None
    """Lowest unsustainable multiplier found; None when `max_load` is still sustainable."""
    knee_load: float | None
    ttft_p90_ref_s: float | None
    """TTFT p90 at the knee grid's reference load (0.1 of capacity)."""
    probes: tuple[Probe, ...]

    @property
    def warning(self) -> str | None:
        """Set when the run at the capacity is too short to judge: its TTFT p90 is over a sixth of the
        window, so a slowly growing queue can pass for a settled one (the figure may be high)."""
        at = next((p for p in self.probes if p.load == self.sustainable_load), None)
        if at is None or not at.ttft_p90_s > at.span_s / 6:
            return None
        return (
            f"TTFT p90 at the capacity ({at.ttft_p90_s:.1f} s) is over a sixth of the {at.span_s:.0f} s "
            f"runs: queues may not have settled and the capacity may be high; use a longer --duration"
        )

    @property
    def capacity_tok_s(self) -> float:
        """The capacity in the `--load` yardstick: `capacity_load` × nominal."""
        return (self.capacity_load or 0.0) * self.nominal_tok_s

    @property
    def served_tok_s(self) -> float:
        """Prompt tok/s the run at `sustainable_load` served. Differs from `capacity_tok_s` as far as
        the cut (`--duration`) of the load-scaled trace offers more or less than its whole mean."""
        at = next((p for p in self.probes if p.load == self.sustainable_load), None)
        return 0.0 if at is None else at.served_tok_s

    @property
    def status(self) -> str:
        if self.capacity_load is None:
            return "below min load"
        return "bracketed" if self.upper_load is not None else "above max load"

    def to_dict(self) -> dict[str, Any]:
        knee = self.knee_load
        return {
            "policy": self.policy,
            "capacity_tok_s": self.capacity_tok_s,
            "capacity_of_nominal": self.capacity_load or 0.0,
            "sustainable_tok_s": (self.sustainable_load or 0.0) * self.nominal_tok_s,
            "served_tok_s": self.served_tok_s,
            "upper_tok_s": None if self.upper_load is None else self.upper_load * self.nominal_tok_s,
            "status": self.status,
            "knee_tok_s": None if knee is None else knee * self.nominal_tok_s,
            "knee_of_capacity": None if knee is None or not self.capacity_load else knee / self.capacity_load,
            "ttft_p90_ref_s": self.ttft_p90_ref_s,
            "runs": len(self.probes),
            "sim_cpu_s": round(sum(p.sim_cpu_s for p in self.probes), 1),
            "warning": self.warning,
            "probes": [p.to_dict() for p in self.probes],
        }


# -- the sustainability criterion -----------------------------------------------------------------


def deficit(arrival: np.ndarray, first_token: np.ndarray, prompt: np.ndarray) -> float:
    """Backlog growth from the middle to the last third of the arrival window, per second, as a fraction
    of the prompt tok/s offered over the last two thirds (module docstring). `first_token` is NaN for a
    request never served (it stays in the backlog)."""
    span = float(np.max(arrival)) if len(arrival) else 0.0
    if span <= 0:
        raise ValueError("the arrival window spans no time, so no backlog growth can be measured")
    done = np.where(np.isnan(first_token), np.inf, first_token)
    third = span / 3.0

    def mean_backlog(t0: float, t1: float) -> float:
        overlap = np.clip(np.minimum(done, t1) - np.maximum(arrival, t0), 0.0, None)
        return float(np.sum(prompt * overlap)) / (t1 - t0)

    offered = float(np.sum(prompt[arrival >= third])) / (2.0 * third)
    if offered <= 0:
        return 0.0
    growth = (mean_backlog(2 * third, span) - mean_backlog(third, 2 * third)) / third
    return growth / offered


def run_probe(
    args: tuple[Trace, ClusterConfig, scheduling.PolicySettings, float, str, float],
) -> Probe:
    """Simulate one load and judge it (module level, so worker processes can run it)."""
    trace, cluster, policy, load, purpose, max_deficit = args
    start = time.process_time()
    rec = Simulation(trace, cluster, policy).run().recorder
    cpu = time.process_time() - start
    s = rec.summary(slo_ttft_s=math.inf, slo_tpot_s=math.inf)
    d = deficit(rec.arrival, rec.first_token, rec.prompt)
    return Probe(
        load=load,
        offered_tok_s=trace.prompt_tokens_per_s,
        deficit=d,
        sustainable=d <= max_deficit,
        ttft_p90_s=float(s["ttft_p90_s"]),
        completed=int(s["completed"]),
        dropped=int(s["dropped"]),
        purpose=purpose,
        span_s=trace.duration_s,
        sim_cpu_s=cpu,
    )


# -- the search (one state machine per policy) -----------------------------------------------------


class Search:
    """Which loads to simulate next for one policy, given the probes so far."""

    def __init__(self, policy: str, settings: CapacitySettings) -> None:
        self.policy = policy
        self.cfg = settings
        self.probes: dict[float, Probe] = {}
        self.lo: float | None = None
        self.hi: float | None = None
        self.last_sustainable = False
        self.expect: bool | None = None
        """The verdict the last probe was aimed at (None: a bisection or bracket step)."""
        self.surprised = False
        self.searching = True

    def next_loads(self) -> list[float]:
        """The loads to simulate now (several for the knee grid); [] when done."""
        if self.searching:
            load = self._next_search_load()
            if load is not None:
                return [load]
            self.searching = False
        if not self.cfg.knee or self.lo is None:
            return []
        return [x for x in self._knee_loads() if x not in self.probes]

    def observe(self, probe: Probe) -> None:
        self.probes[probe.load] = probe
        if probe.purpose != "search":
            return
        self.last_sustainable = probe.sustainable
        self.surprised = self.expect is not None and probe.sustainable != self.expect
        if probe.sustainable:
            self.lo = max(self.lo or 0.0, probe.load)
        else:
            self.hi = probe.load if self.hi is None else min(self.hi, probe.load)

    def _next_search_load(self) -> float | None:
        cfg, lo, hi = self.cfg, self.lo, self.hi
        if lo is None and hi is None:
            return cfg.start_load
        if lo is None:
            assert hi is not None
            step = min(0.9, max(0.25, (1.0 - max(self.probes[hi].deficit, 0.0)) * (1.0 - cfg.precision)))
            nxt = hi * step
            return nxt if nxt >= cfg.min_load else (cfg.min_load if hi > cfg.min_load else None)
        if hi is None:
            if lo >= cfg.max_load:
                return None
            d = self.probes[lo].deficit
            if d <= cfg.max_deficit / 2:  # clearly below the edge: double
                return min(2.0 * lo, cfg.max_load)
            edge = lo * (1.0 - d) / (1.0 - cfg.max_deficit)  # near it: just past the estimated edge
            return min(max(edge * (1.0 + cfg.precision / 3), lo * (1.0 + cfg.precision)), cfg.max_load)
        if hi / lo <= 1.0 + cfg.precision:
            return None
        # hi served hi·(1 − deficit); at that rate the growth reaches max_deficit at `edge`
        edge = hi * (1.0 - self.probes[hi].deficit) / (1.0 - cfg.max_deficit)
        expect = not self.last_sustainable  # probe the side of the edge not just seen
        guess = edge * (1.0 - cfg.precision / 3 if expect else 1.0 + cfg.precision / 3)
        if self.surprised or not lo < guess < hi:  # the estimate has misled, or cannot be right
            self.expect = None
            return math.sqrt(lo * hi)
        self.expect = expect
        span = math.log(hi / lo)
        return min(max(guess, lo * math.exp(0.1 * span)), lo * math.exp(0.9 * span))

    @property
    def capacity(self) -> float | None:
        """The served rate at the highest sustainable load (a multiplier of nominal)."""
        return None if self.lo is None else self.lo * (1.0 - max(self.probes[self.lo].deficit, 0.0))

    def _knee_loads(self) -> list[float]:
        assert self.capacity is not None
        return [self.capacity * f for f in self.cfg.knee_grid]

    def result(self, nominal_tok_s: float) -> PolicyCapacity:
        knee, ref = None, None
        if self.cfg.knee and self.lo is not None:
            pts = [self.probes[x] for x in (*self._knee_loads(), self.lo) if x in self.probes]
            ref = pts[0].ttft_p90_s if pts else None
            if ref is not None and math.isfinite(ref):
                threshold = self.cfg.knee_factor * ref
                rows = [
                    {"policy": self.policy, "load": p.load, "summary": {"ttft_p90_s": p.ttft_p90_s}}
                    for p in pts
                ]
                if any(not p.ttft_p90_s <= threshold for p in pts):
                    knee = report.max_load_meeting(rows, threshold)[self.policy]
        return PolicyCapacity(
            policy=self.policy,
            nominal_tok_s=nominal_tok_s,
            capacity_load=self.capacity,
            sustainable_load=self.lo,
            upper_load=self.hi,
            knee_load=knee,
            ttft_p90_ref_s=ref,
            probes=tuple(self.probes.values()),
        )


def measure(
    trace_at: Callable[[float], Trace],
    cluster: ClusterConfig,
    policies: Sequence[scheduling.PolicySettings],
    nominal_tok_s: float,
    *,
    settings: CapacitySettings = CapacitySettings(),
    jobs: int = 1,
    on_probe: Callable[[str, Probe], None] | None = None,
    on_done: Callable[[PolicyCapacity], None] | None = None,
) -> list[PolicyCapacity]:
    """Each policy's capacity (in the order given, duplicates once). `trace_at(x)` is the workload at
    load multiplier x of `nominal_tok_s`. The policies' searches advance together, one round at a time,
    their probes run in `jobs` worker processes."""
    by_name = {p.name: p for p in policies}
    searches = {name: Search(name, settings) for name in by_name}
    done: dict[str, PolicyCapacity] = {}
    with _Workers(jobs) as workers:
        while True:
            todo = []
            for name, search in searches.items():
                loads = [] if name in done else search.next_loads()
                if not loads and name not in done:
                    done[name] = search.result(nominal_tok_s)
                    if on_done is not None:
                        on_done(done[name])
                purpose = "search" if search.searching else "knee"
                todo += [
                    (name, (trace_at(x), cluster, by_name[name], x, purpose, settings.max_deficit))
                    for x in loads
                ]
            if not todo:
                break
            for name, probe in workers.run(todo, on_probe):
                searches[name].observe(probe)
    return [done[name] for name in by_name]


def at_loads(
    trace_at: Callable[[float], Trace],
    cluster: ClusterConfig,
    policies: Sequence[scheduling.PolicySettings],
    loads: Sequence[float],
    *,
    max_deficit: float = CapacitySettings.max_deficit,
    jobs: int = 1,
    on_probe: Callable[[str, Probe], None] | None = None,
) -> dict[str, list[Probe]]:
    """Every policy simulated at the same `loads` (multipliers of nominal), no search: per policy its
    probes in the order of `loads`. Near saturation the deficit of one run moves by a few points from
    one load to the next, so a searched capacity depends on the loads its search happened to try;
    policies judged at the same loads compare like for like."""
    names = list(dict.fromkeys(p.name for p in policies))
    by_name = {p.name: p for p in policies}
    traces = {x: trace_at(x) for x in loads}
    todo = [(n, (traces[x], cluster, by_name[n], x, "at", max_deficit)) for n in names for x in loads]
    out: dict[str, list[Probe]] = {name: [] for name in names}
    with _Workers(jobs) as workers:
        for name, probe in workers.run(todo, on_probe):
            out[name].append(probe)
    return {name: sorted(probes, key=lambda p: loads.index(p.load)) for name, probes in out.items()}


class _Workers(LazyPool):
    """Runs probes here, or in `jobs` forked worker processes from the first batch of more than one."""

    def run(
        self, todo: list[tuple[str, tuple]], on_probe: Callable[[str, Probe], None] | None
    ) -> Iterator[tuple[str, Probe]]:
        """(policy, probe) of each (policy, `run_probe` arguments): in order here, in the order they
        finish in the workers; `on_probe` is told of each first."""
        pool = self.for_batch(len(todo))
        if pool is None:
            results: Iterable[tuple[int, Probe]] = ((i, run_probe(args)) for i, (_, args) in enumerate(todo))
        else:
            results = pool.imap_unordered(_indexed, list(enumerate(todo)))
        for i, probe in results:
            if on_probe is not None:
                on_probe(todo[i][0], probe)
            yield todo[i][0], probe


def _indexed(item: tuple[int, tuple[str, tuple]]) -> tuple[int, Probe]:
    i, (_, args) = item
    return i, run_probe(args)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
