"""Chunk sync's share (`StaggeredPolicy.chunk_sync`): SBS with and without it, over a band of loads.

Near its capacity a workload's single runs are chaotic: one seed at one load can swing by half
between neighbouring loads. So this runs a staggered policy with the prefill snapshots setting its
carries and without, at each load of a band and each seed, on one of `field_table`'s workloads at
`--basis` prompt tok/s (its best immediate policy's capacity), and prints each load's TTFT mean and
p90 over the seeds and the band's.

    python -m sbs.bench.chunk_sync_band --workload azure-long33 --basis 246600 \\
        --loads 0.5,0.6,0.7,0.8,0.9 [--seeds 0,1,2] [--policies sbs,sbs-fcfs] [--jobs 2]

Needs `../shared/traces`. azure-long33's band above takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from statistics import fmean

from sbs.bench.field_table import WORKLOADS
from sbs.settings import scheduling

Run = tuple[str, float, float, int, str, bool]
"""(workload, basis tok/s, load, seed, policy, chunk sync)."""


def workload_opts(args: Sequence[str], seed: int) -> dict[str, object]:
    """`sbs-sim`'s workload options from a `field_table.WORKLOADS` entry."""
    flags = dict(zip(args[::2], args[1::2], strict=True))
    return {
        "trace_path": flags["--trace"],
        "fmt": flags.get("--format", "azure"),
        "duration": float(flags["--duration"]),
        "long_prompts": flags.get("--long-prompts"),
        "arrivals": flags.get("--arrivals", "trace"),
        "cluster": "ds3-h800",
        "cost_override": None,
        "seed": seed,
    }


def measure(run: Run) -> tuple[float, float]:
    """TTFT (mean, p90) of one run."""
    from sbs.sim import cli
    from sbs.sim.simulator import Simulation

    name, basis, load, seed, policy, sync = run
    opts = workload_opts(WORKLOADS[name], seed)
    wl = cli.load_workload(opts)
    trace = wl.at(load=load * basis / wl.nominal_tok_s)
    settings = scheduling.policy_settings(policy).model_copy(update={"chunk_sync": sync})
    s = Simulation(trace, wl.cluster, settings).run().recorder.summary(slo_ttft_s=2.0, slo_tpot_s=0.1)
    return s["ttft_mean_s"], s["ttft_p90_s"]


def table(runs: Sequence[Run], results: Sequence[tuple[float, float]]) -> list[str]:
    """One line per policy and setting: per load the seeds' mean of TTFT mean / p90, then the band's."""
    by = dict(zip(runs, results, strict=True))
    loads = sorted({r[2] for r in runs})
    lines = []
    for policy in dict.fromkeys(r[4] for r in runs):
        for sync in (True, False):
            mine = [(r[2], v) for r, v in by.items() if r[4] == policy and r[5] is sync]
            cells = []
            for load in loads:
                at = [v for ld, v in mine if ld == load]
                cells.append(f"{load:g}: {fmean(m for m, _ in at):.2f}/{fmean(p for _, p in at):.2f}")
            band = f"{fmean(m for _, (m, _) in mine):.2f}/{fmean(p for _, (_, p) in mine):.2f}"
            lines.append(
                f"{policy:9s} chunk sync {'on ' if sync else 'off'}  band {band}  | " + "  ".join(cells)
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--basis", type=float, required=True, help="Load 1.0, prompt tok/s")
    ap.add_argument("--loads", required=True, help="Comma-separated fractions of --basis")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--policies", default="sbs", help="Staggered policies: sbs, sbs-fcfs")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        loads = [float(x) for x in a.loads.split(",")]
        seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError as exc:
        ap.error(f"--loads/--seeds: {exc}")
    if a.basis <= 0 or not loads or min(loads) <= 0:
        ap.error("--basis and every --loads value must be > 0")
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    for p in policies:
        try:
            ok = isinstance(scheduling.policy_settings(p), scheduling.StaggeredPolicy)
        except ValueError as exc:
            ap.error(f"--policies: {exc}")
        if not ok:
            ap.error(f"--policies: {p!r} keeps no carries; give sbs or sbs-fcfs")
    runs = [
        (a.workload, a.basis, ld, s, p, sync)
        for p in policies
        for sync in (True, False)
        for ld in loads
        for s in seeds
    ]
    print(f"{a.workload} at {a.basis / 1e3:.1f}k prompt tok/s, seeds {a.seeds}: TTFT mean/p90 (s) over seeds")
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(measure, runs))
    print("\n".join(table(runs, results)))


if __name__ == "__main__":
    main()
