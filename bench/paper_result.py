"""Reproduce the paper's comparison on the shared traces and print SBS's ratios to the best baseline.

For each trace (DeepSeek-V3 on the default H800 cluster, `ds3-h800`):
1. sweep every policy over loads (fractions of the nominal prefill capacity, see sbs.sim.capacity),
   the trace repeated to `--duration` seconds of arrivals;
2. the baseline's capacity = the highest load at which the best immediate-dispatch baseline keeps TTFT
   p90 within `--capacity-slo` (interpolated on the grid); SBS's is found the same way, and the ratio of
   the two is the goodput gain at that TTFT-p90 SLO;
3. compare all policies at 10–90 % of the baseline's capacity and print, per load, SBS's TTFT mean/p90,
   throughput and goodput against the best baseline at that load (the one with the lowest TTFT mean).

    python -m sbs.bench.paper_result [--traces azure,mooncake] [--duration 120] [--jobs 2] [--out out/]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sbs.scheduler.core import config
from sbs.sim import report
from sbs.sim.capacity import nominal_prefill_tok_s
from sbs.sim.cluster import load_cluster
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.runner import RunSpec, run_many
from sbs.sim.workload import load_scaled, tiled

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
TRACES = {
    # name: (file, sweep grid as fractions of nominal, seconds of arrivals per run)
    "azure": (
        SHARED / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv",
        [0.3, 0.5, 0.7, 0.8, 0.9, 1.0],
        120,
    ),
    "mooncake": (
        SHARED / "mooncake_fast25_synthetic" / "synthetic_trace.jsonl",
        [0.02, 0.04, 0.06, 0.08, 0.12],
        900,
    ),
}
POLICIES = ("sbs", "round_robin", "random", "least_load", "power_of_two", "sglang")
FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default="azure,mooncake")
    ap.add_argument("--cluster", default="ds3-h800")
    ap.add_argument(
        "--duration", type=float, default=None, help="Seconds of arrivals per run (default per trace)."
    )
    ap.add_argument("--capacity-slo", type=float, default=5.0, help="TTFT p90 (s) defining capacity.")
    ap.add_argument("--slo-ttft", type=float, default=3.0, help="TTFT SLO (s) for per-request goodput.")
    ap.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO (s) for per-request goodput.")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster(args.cluster)
    cost = CostModel()
    doc: dict = {
        "cluster": cluster.name,
        "duration_s": args.duration,
        "capacity_slo_ttft_p90_s": args.capacity_slo,
    }
    t0 = time.monotonic()
    for name in [t.strip() for t in args.traces.split(",") if t.strip()]:
        path, grid, default_duration = TRACES[name]
        duration = args.duration or default_duration
        base = load_trace(path)
        nominal = nominal_prefill_tok_s(cluster, cost, base)

        def at(load: float, base=base, nominal=nominal, duration=duration):
            return tiled(load_scaled(base, load * nominal), duration)

        pols = [config.policy_settings(p) for p in POLICIES]
        print(
            f"\n=== {name}: {path.name}, nominal prefill capacity {nominal / 1e3:.0f}k tok/s ===", flush=True
        )
        sweep = run_many(
            [RunSpec(at(lv), cluster, p, load=lv) for lv in grid for p in pols],
            jobs=args.jobs,
            slo_ttft_s=args.slo_ttft,
            slo_tpot_s=args.slo_tpot,
            label=f"{name} sweep",
        )
        cap = report.max_load_meeting(sweep, args.capacity_slo)
        print(report.sweep_table(sweep, grid, args.capacity_slo, cap))
        best_base = max((p for p in cap if p != "sbs"), key=lambda p: cap[p])
        base_cap = cap[best_base]
        gain = cap["sbs"] / base_cap - 1.0 if base_cap else float("nan")
        print(
            f"capacity at TTFT p90 ≤ {args.capacity_slo:g} s: best baseline {best_base} {base_cap:.3f}, "
            f"sbs {cap['sbs']:.3f} of nominal → goodput at that SLO {gain:+.0%}"
        )
        loads = [f * base_cap for f in FRACTIONS]
        compare = run_many(
            [RunSpec(at(lv), cluster, p, load=lv) for lv in loads for p in pols],
            jobs=args.jobs,
            slo_ttft_s=args.slo_ttft,
            slo_tpot_s=args.slo_tpot,
            label=f"{name} compare",
        )
        rows = []
        print(f"\n{name}: SBS vs the best baseline at each load (fraction of the baseline's capacity)")
        print(
            f"{'load':>5} {'base':>12} {'TTFT mean s':>18} {'TTFT p90 s':>18} "
            f"{'Δmean':>6} {'Δp90':>6} {'Δthr':>6} {'Δgoodput':>8}"
        )
        for frac, lv in zip(FRACTIONS, loads, strict=True):
            at_load = [r for r in compare if r["load"] == lv]
            ratio = report.ratios_vs_best_baseline(at_load)
            by = {r["policy"]: r["summary"] for r in at_load}
            s, b = by["sbs"], by[ratio["base"]]
            print(
                f"{frac:5.0%} {ratio['base']:>12} {s['ttft_mean_s']:8.3f} vs {b['ttft_mean_s']:7.3f} "
                f"{s['ttft_p90_s']:8.3f} vs {b['ttft_p90_s']:7.3f} "
                f"{ratio['ttft_mean']:+6.0%} {ratio['ttft_p90']:+6.0%} "
                f"{ratio['throughput']:+6.1%} {ratio['goodput']:+8.0%}"
            )
            rows.append(
                {"fraction_of_baseline_capacity": frac, "load_of_nominal": lv, **ratio, "policies": by}
            )
        doc[name] = {
            "trace": str(path.name),
            "nominal_prefill_tok_s": nominal,
            "capacity_of_nominal": cap,
            "best_baseline": best_base,
            "goodput_gain_at_capacity_slo": gain,
            "sweep": [{"policy": r["policy"], "load": r["load"], **r["summary"]} for r in sweep],
            "compare": rows,
        }
        report.plot_sweep(sweep, args.capacity_slo, out_dir / f"paper_{name}_sweep.png")
    (out_dir / "paper_result.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"\nwrote {out_dir / 'paper_result.json'} and plots in {out_dir}/ ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
