"""Reproduce the paper's comparison on the shared traces and print SBS's ratios to the best baseline.

For each trace (DeepSeek-V3 on the default H800 cluster `ds3-h800`; the trace scaled to a load and
repeated to a fixed span of arrivals):
1. sweep every policy over loads (fractions of the nominal prefill capacity, sbs.sim.nominal_capacity);
2. the *baseline's capacity* is the highest load at which the best immediate-dispatch baseline keeps
   its TTFT p90 within KNEE × its own p90 at the lowest load of the grid (the knee of its latency-load
   curve: queueing has not yet multiplied its latency), refined by bisection;
3. goodput at a TTFT-p90 SLO: each policy's highest load meeting the SLO (interpolated on the sweep),
   SBS over the best baseline, for a few SLOs;
4. all policies at 10–90 % of the baseline's capacity: SBS's TTFT mean/p90, throughput and goodput
   against the best baseline at that load (the one with the lowest TTFT mean).

    python -m sbs.bench.paper_result [--traces azure,mooncake] [--jobs 2] [--out out/bench]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sbs.settings import scheduling
from sbs.sim import report
from sbs.sim.cluster import ClusterConfig, load_cluster
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.runner import RunSpec, run_many
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, tiled

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"


class Case:
    """One trace: its file, sweep grid (fractions of nominal), span of arrivals, SLOs (s)."""

    def __init__(
        self, path: Path, grid: list[float], duration_s: float, slos: list[float], per_request_slo: float
    ):
        self.path = path
        self.grid = grid
        self.duration_s = duration_s
        self.slos = slos
        self.per_request_slo = per_request_slo


CASES = {
    "azure": Case(
        SHARED / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv",
        [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0],
        120.0,
        [2.0, 3.0, 4.0, 5.0],
        3.0,
    ),
    "mooncake": Case(
        SHARED / "mooncake_fast25_synthetic" / "synthetic_trace.jsonl",
        [0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.2],
        900.0,
        [10.0, 15.0, 20.0, 30.0],
        15.0,
    ),
}
POLICIES = ("sbs", "round_robin", "random", "least_load", "power_of_two", "sglang")
BASELINES = POLICIES[1:]
FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
KNEE = 2.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default="azure,mooncake")
    ap.add_argument("--cluster", default="ds3-h800")
    ap.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO (s) for per-request goodput.")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster(args.cluster)
    doc: dict[str, Any] = {"cluster": cluster.name, "knee": KNEE}
    t0 = time.monotonic()
    for name in [t.strip() for t in args.traces.split(",") if t.strip()]:
        doc[name] = run_case(name, CASES[name], cluster, args, out_dir)
    (out_dir / "paper_result.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"\nwrote {out_dir / 'paper_result.json'} and plots in {out_dir}/ ({time.monotonic() - t0:.0f} s)")


def run_case(name: str, case: Case, cluster: ClusterConfig, args: argparse.Namespace, out_dir: Path) -> dict:
    base = load_trace(case.path)
    nominal = nominal_prefill_tok_s(cluster, CostModel(), base)
    pols = {p: scheduling.policy_settings(p) for p in POLICIES}
    slo = {"slo_ttft_s": case.per_request_slo, "slo_tpot_s": args.slo_tpot}

    def at(load: float) -> Trace:
        return tiled(load_scaled(base, load * nominal), case.duration_s)

    def run(loads: list[float], policies: tuple[str, ...], label: str) -> list[dict[str, Any]]:
        specs = [RunSpec(at(lv), cluster, pols[p], load=lv) for lv in loads for p in policies]
        return run_many(specs, jobs=args.jobs, label=label, **slo)

    print(
        f"\n=== {name}: {case.path.name}, nominal prefill capacity {nominal / 1e3:.0f}k tok/s ===", flush=True
    )
    sweep = run(case.grid, POLICIES, f"{name} sweep")
    print(report.sweep_table(sweep, case.grid, case.slos[-1], report.max_load_meeting(sweep, case.slos[-1])))

    # The baseline's capacity: the knee of the best baseline's TTFT-p90 curve, refined by bisection.
    floor = min(
        r["summary"]["ttft_p90_s"] for r in sweep if r["policy"] != "sbs" and r["load"] == case.grid[0]
    )
    limit = KNEE * floor

    def within(summary: dict[str, float]) -> bool:
        return summary["dropped"] == 0 and summary["ttft_p90_s"] <= limit

    def knee(policy: str) -> tuple[float, float]:
        runs = [r for r in sweep if r["policy"] == policy]
        lo = max((r["load"] for r in runs if within(r["summary"])), default=0.0)
        hi = min((r["load"] for r in runs if not within(r["summary"]) and r["load"] > lo), default=lo)
        return lo, hi

    best = max(BASELINES, key=lambda p: knee(p)[0])
    lo, hi = knee(best)
    for _ in range(3):
        if hi <= lo:
            break
        mid = (lo + hi) / 2
        (res,) = run([mid], (best,), f"{name} capacity")
        sweep.append(res)
        lo, hi = (mid, hi) if within(res["summary"]) else (lo, mid)
    capacity = lo
    print(
        f"baseline capacity: {best} keeps TTFT p90 ≤ {KNEE:g} × {floor:.2f} s up to {capacity:.3f} "
        f"of nominal ({capacity * nominal / 1e3:.0f}k prompt tok/s); sbs up to {knee('sbs')[0]:.3f} "
        "on the grid"
    )

    goodput = []
    for s in case.slos:
        best_load = report.max_load_meeting(sweep, s)
        base_best = max(BASELINES, key=lambda p: best_load[p])
        gain = best_load["sbs"] / best_load[base_best] - 1.0 if best_load[base_best] else float("inf")
        goodput.append(
            {
                "slo_ttft_p90_s": s,
                "sbs": best_load["sbs"],
                "baseline": base_best,
                "baseline_load": best_load[base_best],
                "gain": gain,
            }
        )
        print(
            f"goodput at TTFT p90 ≤ {s:g} s: sbs {best_load['sbs']:.3f}, best baseline {base_best} "
            f"{best_load[base_best]:.3f} of nominal → {gain:+.0%}"
        )

    loads = [f * capacity for f in FRACTIONS]
    compare = run(loads, POLICIES, f"{name} compare")
    rows = []
    print(f"\n{name}: SBS vs the best baseline at each load (fraction of {best}'s capacity {capacity:.3f})")
    print(
        f"{'load':>5} {'baseline':>12} {'TTFT mean s':>18} {'TTFT p90 s':>18} "
        f"{'Δmean':>6} {'Δp90':>6} {'Δthr':>6} {'Δgoodput':>8}"
    )
    for frac, lv in zip(FRACTIONS, loads, strict=True):
        at_load = [r for r in compare if r["load"] == lv]
        ratio = report.ratios_vs_best_baseline(at_load)
        assert ratio is not None
        by = {r["policy"]: r["summary"] for r in at_load}
        s, b = by["sbs"], by[ratio["base"]]
        print(
            f"{frac:5.0%} {ratio['base']:>12} {s['ttft_mean_s']:8.3f} vs {b['ttft_mean_s']:7.3f} "
            f"{s['ttft_p90_s']:8.3f} vs {b['ttft_p90_s']:7.3f} "
            f"{ratio['ttft_mean']:+6.0%} {ratio['ttft_p90']:+6.0%} "
            f"{ratio['throughput']:+6.1%} {ratio['goodput']:+8.0%}"
        )
        rows.append({"fraction_of_baseline_capacity": frac, "load_of_nominal": lv, **ratio, "policies": by})
    report.plot_sweep(sweep, case.slos[-1], out_dir / f"{name}_sweep.png")
    return {
        "trace": case.path.name,
        "duration_s": case.duration_s,
        "nominal_prefill_tok_s": nominal,
        "best_baseline": best,
        "baseline_capacity_of_nominal": capacity,
        "capacity_ttft_p90_limit_s": limit,
        "goodput_at_ttft_p90_slo": goodput,
        "sweep": [{"policy": r["policy"], "load": r["load"], **r["summary"]} for r in sweep],
        "compare": rows,
    }


if __name__ == "__main__":
    main()
