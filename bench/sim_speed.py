"""Speed of the simulator on the full Azure conversation trace (1 hour, 19,366 requests).

Runs `sbs.sim.simulator.Simulation` on the `ds3-h800` preset for each policy (default: sbs and
least_load) on (a) the trace at its own timestamps and (b) the trace time-scaled to 0.8 of the
cluster's nominal prefill load, and reports CPU seconds (`time.process_time`) per run. The target is
1 h of trace in at most 60 CPU seconds on one core. Both cases simulate the same requests (case (b)
only compresses their timestamps), so each run is judged on its CPU seconds per hour of the original
trace: the full trace's 3,502 s count as one hour's worth (scaled when `--duration` cuts it short).

Run: `python -m sbs.bench.sim_speed [--policies sbs,least_load] [--cases own,load0.8] [--duration S]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from sbs.settings.scheduling import policy_settings
from sbs.sim.cluster import PRESETS
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, truncated

TRACE = "../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
TARGET_CPU_S_PER_HOUR = 60.0
LOAD = 0.8


def _progress(label: str) -> object:
    """A Simulation progress callback printing every 10 % of arrivals, with CPU seconds so far."""
    start = time.process_time()
    shown = [-1]

    def report(frac: float) -> None:
        tenth = int(frac * 10)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"  {label}: {frac:4.0%} of arrivals, {time.process_time() - start:6.1f} CPU s", flush=True)

    return report


def run_case(trace: Trace, cluster_name: str, policy: str, label: str) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, events) of one simulation run."""
    cluster = PRESETS[cluster_name]
    sim = Simulation(trace, cluster, policy_settings(policy), progress=_progress(label))  # type: ignore[arg-type]
    c0 = time.process_time()
    w0 = time.perf_counter()
    result = sim.run()
    return time.process_time() - c0, time.perf_counter() - w0, result.events


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--cluster", default="ds3-h800")
    ap.add_argument("--policies", default="sbs,least_load")
    ap.add_argument("--cases", default="own,load0.8", help="own: own timestamps; load0.8: 0.8 x nominal")
    ap.add_argument("--duration", type=float, default=None, help="keep only the first S seconds (smoke test)")
    args = ap.parse_args(argv)

    base = load_trace(args.trace)
    if args.duration:
        base = truncated(base, args.duration)
    cost = CostModel()
    nominal = nominal_prefill_tok_s(PRESETS[args.cluster], cost, base)
    cases = {
        "own": base,
        "load0.8": load_scaled(base, LOAD * nominal),
    }
    print(
        f"trace {base.name}: {len(base)} requests over {base.duration_s:.0f} s "
        f"({base.prompt_tokens_per_s:.0f} prompt tok/s); cluster {args.cluster}, nominal {nominal:.0f} tok/s",
        flush=True,
    )
    rows = []
    for case in args.cases.split(","):
        trace = cases[case]
        for policy in args.policies.split(","):
            label = f"{case:8} {policy:10}"
            print(f"{label}: {len(trace)} requests over {trace.duration_s:.0f} s of trace", flush=True)
            cpu, wall, events = run_case(trace, args.cluster, policy, label)
            per_hour = cpu * 3600.0 / base.duration_s if base.duration_s > 0 else float("inf")
            rows.append((label, trace.duration_s, events, cpu, wall, per_hour))
            print(f"{label}: {cpu:.1f} CPU s ({wall:.1f} s wall), {events} events", flush=True)
    print()
    header = f"{'case     policy':20} {'sim s':>8} {'events':>9} {'CPU s':>8} {'wall s':>8}"
    print(f"{header} {'CPU s per trace h':>18}")
    for label, dur, events, cpu, wall, per_hour in rows:
        print(f"{label:20} {dur:8.1f} {events:9d} {cpu:8.1f} {wall:8.1f} {per_hour:18.1f}")
    print()
    for label, _, _, _, _, per_hour in rows:
        ok = per_hour <= TARGET_CPU_S_PER_HOUR
        print(f"{label}: 1 h of trace <= 60 s on one core: {'met' if ok else 'not met'} ({per_hour:.1f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
