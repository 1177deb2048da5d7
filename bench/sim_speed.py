"""Speed of the simulator: CPU seconds per run, and how much of it the scheduling core takes.

By default: the full Azure conversation trace (1 hour, 19,366 requests) on the `ds3-h800` preset for
each policy (default: sbs and least_load), (a) at its own timestamps and (b) time-scaled to `--load`
(0.8) of the cluster's nominal prefill load; each run is judged on its CPU seconds per hour of the
original trace (target: 60). Both cases simulate the same requests (case (b) only compresses their
timestamps), so the full trace's 3,502 s count as one hour's worth (scaled when `--duration` cuts it).

The cluster-scale target (issue 14) is `--target 3200`: the `ds3-h800-3200` preset (64 prefill
instances × DP32 plus 8 decode × DP144), the trace at 0.7 of nominal repeated to 10 minutes, policy
sbs, in at most 300 CPU seconds on one core. `--tile S` shortens that (the verdict then projects the
CPU seconds linearly to the full 600 s and says so).

Every run also reports the CPU seconds spent on the scheduler's side of the loop (each replica's
`CoreLoop.handle`: the core's `handle` and `next_deadline`, and queuing what they return) and the rest,
the simulator's own share. The side is timed by the cheap wall clock around each call and scaled by the
run's CPU/wall ratio: reading the process CPU clock a million times would itself cost seconds.

Run: `python -m sbs.bench.sim_speed [--policies sbs,least_load] [--cases own,load] [--duration S]`
or `python -m sbs.bench.sim_speed --target 3200 [--tile S]`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sbs.scheduler.core.events import Event
from sbs.scheduler.core.types import Decision
from sbs.settings.scheduling import policy_settings
from sbs.sim.cluster import PRESETS, ClusterConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, tiled, truncated

TRACE = "../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
TARGET_CPU_S_PER_HOUR = 60.0
LOAD = 0.8
SCALE_TARGET = {"cluster": "ds3-h800-3200", "load": 0.7, "tile_s": 600.0, "policies": "sbs", "cpu_s": 300.0}
"""Issue 14: 3,200 ranks, 10 minutes of the Azure conversation trace at 0.7 of nominal, ≤ 5 CPU minutes."""


@dataclass(frozen=True)
class Run:
    label: str
    sim_s: float
    requests: int
    events: int
    cpu_s: float
    core_cpu_s: float
    wall_s: float


def _progress(label: str) -> Callable[[float], None]:
    """A Simulation progress callback printing every 10 % of arrivals, with CPU seconds so far."""
    start = time.process_time()
    shown = [-1]

    def report(frac: float) -> None:
        tenth = int(frac * 10)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"  {label}: {frac:4.0%} of arrivals, {time.process_time() - start:6.1f} CPU s", flush=True)

    return report


def _time_core(sim: Simulation) -> list[float]:
    """Wrap every replica's `CoreLoop.handle` to sum its wall seconds (one cell)."""
    spent = [0.0]
    clock = time.perf_counter

    def timed(fn: Callable[[Event | None, float], list[Decision]]) -> Callable[..., list[Decision]]:
        def call(event: Event | None, t: float) -> list[Decision]:
            c = clock()
            out = fn(event, t)
            spent[0] += clock() - c
            return out

        return call

    for core in sim.replicas.cores:
        core.handle = timed(core.handle)  # type: ignore[method-assign]
    return spent


def run_case(trace: Trace, cluster: ClusterConfig, policy: str, label: str) -> Run:
    """One simulation run, timed."""
    sim = Simulation(trace, cluster, policy_settings(policy), progress=_progress(label))  # type: ignore[arg-type]
    core = _time_core(sim)
    c0 = time.process_time()
    w0 = time.perf_counter()
    result = sim.run()
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    return Run(label, trace.duration_s, len(trace), result.events, cpu, core[0] * cpu / wall, wall)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--cluster", default="ds3-h800", choices=sorted(PRESETS))
    ap.add_argument("--policies", default="sbs,least_load")
    ap.add_argument("--cases", default="own,load", help="own: own timestamps; load: --load x nominal")
    ap.add_argument("--load", type=float, default=LOAD, help="fraction of nominal for the load case")
    ap.add_argument("--duration", type=float, default=None, help="keep only the first S seconds (smoke test)")
    ap.add_argument("--tile", type=float, default=None, help="repeat the load case to S seconds of arrivals")
    ap.add_argument("--target", choices=["3200"], default=None, help="the 3,200-rank target of issue 14")
    args = ap.parse_args(argv)
    target_cpu_s = None
    if args.target:
        args.cluster, args.load = SCALE_TARGET["cluster"], SCALE_TARGET["load"]
        args.policies, args.cases = SCALE_TARGET["policies"], "load"
        args.tile = args.tile or SCALE_TARGET["tile_s"]
        target_cpu_s = float(SCALE_TARGET["cpu_s"])  # type: ignore[arg-type]

    cluster = PRESETS[args.cluster]
    base = load_trace(args.trace)
    if args.duration:
        base = truncated(base, args.duration)
    nominal = nominal_prefill_tok_s(cluster, CostModel(), base)
    c0 = time.process_time()
    scaled = load_scaled(base, args.load * nominal)
    cases = {"own": base, "load": tiled(scaled, args.tile) if args.tile else scaled}
    cases["load0.8"] = cases["load"]  # the old name of the case
    print(
        f"trace {base.name}: {len(base)} requests over {base.duration_s:.0f} s "
        f"({base.prompt_tokens_per_s:.0f} prompt tok/s); cluster {args.cluster}, "
        f"nominal {nominal:.0f} tok/s; "
        f"load case {args.load:g} x nominal{f', tiled to {args.tile:g} s' if args.tile else ''} "
        f"(built in {time.process_time() - c0:.1f} CPU s)",
        flush=True,
    )
    runs = []
    for case in args.cases.split(","):
        trace = cases[case]
        for policy in args.policies.split(","):
            label = f"{case:8} {policy:10}"
            print(f"{label}: {len(trace)} requests over {trace.duration_s:.0f} s of trace", flush=True)
            run = run_case(trace, cluster, policy, label)
            runs.append(run)
            print(
                f"{label}: {run.cpu_s:.1f} CPU s ({run.wall_s:.1f} s wall; core {run.core_cpu_s:.1f} s, "
                f"simulator {run.cpu_s - run.core_cpu_s:.1f} s), {run.events} events",
                flush=True,
            )
    _table(runs, base)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for run in runs:
        if target_cpu_s is not None:
            full = SCALE_TARGET["tile_s"]
            cpu = run.cpu_s * full / run.sim_s  # type: ignore[operator]
            how = "measured" if run.sim_s >= full - 1 else f"projected from {run.sim_s:.0f} s"  # type: ignore[operator]
            ok = cpu <= target_cpu_s
            print(
                f"{run.label}: 3,200 ranks, {full:g} s of trace at {args.load:g} of nominal in <= "
                f"{target_cpu_s:g} s on one core: {'met' if ok else 'not met'} ({cpu:.0f} CPU s, {how}; "
                f"core {run.core_cpu_s / run.cpu_s:.0%} of it)"
            )
        else:
            per_hour = run.cpu_s * 3600.0 / base.duration_s if base.duration_s > 0 else float("inf")
            ok = per_hour <= TARGET_CPU_S_PER_HOUR
            verdict = "met" if ok else "not met"
            print(f"{run.label}: 1 h of trace <= 60 s on one core: {verdict} ({per_hour:.1f} s)")
    sys.stdout.flush()


def _table(runs: list[Run], base: Trace) -> None:
    print()
    print(
        f"{'case     policy':20} {'trace s':>8} {'requests':>9} {'events':>9} {'CPU s':>8} {'core s':>8} "
        f"{'sim s':>8} {'us/req':>7} {'wall s':>8}"
    )
    for r in runs:
        print(
            f"{r.label:20} {r.sim_s:8.1f} {r.requests:9d} {r.events:9d} {r.cpu_s:8.1f} {r.core_cpu_s:8.1f} "
            f"{r.cpu_s - r.core_cpu_s:8.1f} {r.cpu_s / max(r.requests, 1) * 1e6:7.0f} {r.wall_s:8.1f}"
        )
    print()


if __name__ == "__main__":
    main()
