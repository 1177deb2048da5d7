"""How far any scheduler could go: the field's best immediate policy, SBS and the zero-queue bound.

For each load of `field_table`'s sweeps (every seed found in `--out`), the same requests' zero-queue
bound (`sbs.sim.oracle.zero_queue_ttft`: each prompt's prefill alone on an idle instance with its
longest earlier prefix cached, its KV transfer, a decode step alone) gives the most any policy could
cut from the best immediate policy's TTFT mean and p90, and SBS's cut is set beside it. A target
above the possible cut cannot be met by any scheduler, on this cluster and cost model.

    python -m sbs.bench.headroom --out out/field-seeds-sync [--workloads azure,mooncake,...]

Runs no simulation (the sweeps have the policies' figures; the bound is arithmetic over the requests,
rebuilt as the sweep built them): a few seconds per workload. Needs `../shared/traces`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sbs.bench.chunk_sync_band import workload_opts
from sbs.bench.field_table import WORKLOADS, sweep_files, versus


def bound_at(workload: str, seed: int, load: float, basis: float) -> tuple[dict[str, float], int]:
    """The zero-queue bound's TTFT mean and p90 at `load` × `basis` prompt tok/s, and the requests."""
    from sbs.sim import cli, oracle

    wl = cli.load_workload(workload_opts(WORKLOADS[workload], seed))
    trace = wl.at(load=load * basis / wl.nominal_tok_s)
    return oracle.bound_summary(trace, wl.cluster, wl.cost), len(trace)


def cuts(runs: list[dict[str, Any]], load: float, bound: dict[str, float]) -> dict[str, tuple[float, float]]:
    """At `load`: the best immediate policy's TTFT mean and p90 (the p90 the lowest of any), and the
    bound's and SBS's cuts from them (ratios − 1)."""
    _, b, pool, sbs = versus(runs, load)["sbs"]
    best = pool[b]["ttft_mean_s"], min(v["ttft_p90_s"] for v in pool.values())
    possible = bound["ttft_mean_s"] / best[0] - 1, bound["ttft_p90_s"] / best[1] - 1
    return {"best": best, "possible": possible, "sbs": sbs}


def table(workload: str, out: Path) -> list[str]:
    """Markdown lines: per load, the bound, the best immediate policy, the possible cut (the least over
    the seeds), SBS's cut (the worst over the seeds) and the share of the possible cut SBS takes."""
    sweeps = {s: json.loads(p.read_text()) for s, p in sweep_files(out, workload)}
    seeds = sorted(sweeps)
    lines = [
        f"### {workload} (seeds {'/'.join(map(str, seeds))})",
        "",
        "| load | bound mean/p90 | best immediate mean/p90 | possible cut: mean, p90 | sbs: mean, p90 "
        "| share of the possible cut sbs takes: mean, p90 |",
        "|---|---|---|---|---|---|",
    ]
    loads = sorted(set.intersection(*({r["load"] for r in sweeps[s]["runs"]} for s in seeds)))
    for load in loads:
        per = []
        for s in seeds:
            doc = sweeps[s]
            bound, n = bound_at(workload, s, load, doc["capacity_tok_s"])
            sbs_run = next(r for r in doc["runs"] if r["load"] == load and r["policy"] == "sbs")
            if sbs_run["completed"] + sbs_run["dropped"] != n:
                raise SystemExit(
                    f"headroom: {workload} seed {s} load {load:g}: {n} requests rebuilt, the sweep ran "
                    f"{sbs_run['completed'] + sbs_run['dropped']}: not the same workload"
                )
            per.append((bound, cuts(doc["runs"], load, bound)))
        bound, first = per[0]
        possible = [max(c["possible"][i] for _, c in per) for i in (0, 1)]
        sbs = [max(c["sbs"][i] for _, c in per) for i in (0, 1)]
        share = [min(c["sbs"][i] / c["possible"][i] for _, c in per) for i in (0, 1)]
        lines.append(
            f"| {load:g} | {bound['ttft_mean_s']:.2f}/{bound['ttft_p90_s']:.2f} "
            f"| {first['best'][0]:.2f}/{first['best'][1]:.2f} "
            f"| {possible[0]:+.0%}, {possible[1]:+.0%} | {sbs[0]:+.0%}, {sbs[1]:+.0%} "
            f"| {share[0]:.0%}, {share[1]:.0%} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/field"), help="field_table's --out")
    ap.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="Comma-separated: " + ", ".join(WORKLOADS)
    )
    a = ap.parse_args(argv)
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        ap.error(f"--workloads: unknown {unknown[0]!r}; valid: {', '.join(WORKLOADS)}")
    found = [w for w in names if sweep_files(a.out, w)]
    if not found:
        ap.error(f"--out {a.out}: no field_table sweeps there (run `python -m sbs.bench.field_table` first)")
    print("Bound and best at the first seed; possible cut: the least over the seeds; sbs: the worst; share: "
          "sbs's cut over the possible one, the least.\n")  # fmt: skip
    for w in found:
        print("\n".join(table(w, a.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
