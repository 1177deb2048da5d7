"""SBS against the field with fixed per-step costs as fitted and at the ends the profiles allow (issue 11).

For each workload and each `--cost-override` preset: `sbs-sim capacity` measures the immediate
candidates' capacity under that cost model (it moves with the fixed cost), then `sbs-sim sweep
--load-basis capacity` runs the field at 0.5/0.7/0.9 of the best one. The table gives SBS's TTFT mean
and p90 against the best immediate policy (mean: the policy with the lowest mean; p90: the lowest p90
of any), and `sbs-fcfs` against the best one in arrival order (no `+prio`), as bench/field_table.py.

    python -m sbs.bench.fixed_cost_table [--workloads azure,servegen] [--settings fitted,profile-max,...]
                                         [--out out/fixed_cost] [--jobs 1] [--tables-only]

About 20 minutes per setting for azure and 5-15 for servegen, one core of a busy machine. An existing
capacity JSON is reused (delete it to re-measure). Needs `../shared/traces`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sbs.bench.field_table import WORKLOADS, best_immediate, versus
from sbs.sim import cost_override

CAPACITY_POLICIES = "eft,sglang+prio,eft+prio"
FIELD = "sbs,sbs-fcfs,eft,eft+prio,sglang,sglang+prio,least_load+prio,sglang+delayer"
LOADS = "0.5,0.7,0.9"
DECODE_EP = 144
"""Decode EP of the default cluster (ds3-h800)."""


def run(workload: str, setting: str, out: Path, jobs: int) -> None:
    """Measure the capacities under `setting`, then sweep the field at loads relative to the best."""
    sim = [str(Path(sys.executable).parent / "sbs-sim")]
    args = [*WORKLOADS[workload], "--cost-override", setting, "--jobs", str(jobs)]
    cap_json = out / f"{workload}-{setting}-capacity.json"
    cap = ["--policies", CAPACITY_POLICIES, "--no-knee", "--json", str(cap_json)]
    if not cap_json.exists():  # resumable: a capacity measured before is kept (delete it to re-measure)
        subprocess.run([*sim, "capacity", *args, *cap], check=True)
    best = best_immediate(json.loads(cap_json.read_text())["policies"])[1]
    sweep = [
        "--policies",
        FIELD,
        "--loads",
        LOADS,
        "--load-basis",
        "capacity",
        "--capacity-tok-s",
        f"{best:.1f}",
    ]
    subprocess.run(
        [*sim, "sweep", *args, *sweep, "--json", str(out / f"{workload}-{setting}-sweep.json")], check=True
    )


def margins(runs: list[dict[str, Any]], load: float) -> dict[str, tuple[str, float, float]]:
    """At `load`: for sbs and sbs-fcfs, (best rival by mean, mean ratio − 1, p90 ratio − 1), as the
    field table counts them (`field_table.versus`)."""
    return {me: (best, *ratios) for me, (_, best, _, ratios) in versus(runs, load).items()}


def review() -> list[str]:
    """Markdown lines: each preset's field values, fixed costs per step and the anchor steps."""
    lines = [
        "| setting | overrides | prefill fixed EP32 | prefill per token | prefill anchor | decode fixed "
        f"EP128 / EP{DECODE_EP} | decode B=128 4k EP128 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in cost_override.PRESETS:
        o = cost_override.parse(name)
        m = cost_override.cost_model(o)
        fixed, per_tok, _ = m.prefill_coefficients(ep_size=32)
        pre = m.prefill_step_s([16_384], [4 * 4096.0**2], ep_size=32)
        dec = m.decode_step_s(np.array([128]), np.array([128 * 4096]), ep_size=128)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in o.items()) or "-"
        lines.append(
            f"| {name} | {shown} | {fixed * 1e3:.1f} ms | {per_tok * 1e6:.1f} µs | {pre:.3f} s | "
            f"{m.decode_fixed_s(ep_size=128) * 1e3:.1f} / {m.decode_fixed_s(ep_size=DECODE_EP) * 1e3:.1f} ms "
            f"| {dec * 1e3:.1f} ms |"
        )
    return lines


def table(workloads: list[str], settings: list[str], out: Path) -> list[str]:
    """Markdown lines: workload × setting × load → SBS and sbs-fcfs against the best baselines."""
    lines = [
        "| workload | setting | best immediate capacity | load | sbs mean/p90 | sbs vs best immediate: "
        "mean, p90 | sbs-fcfs vs best FCFS: mean, p90 |",
        "|---|---|---|---:|---|---|---|",
    ]
    for w in workloads:
        for s in settings:
            sweep = out / f"{w}-{s}-sweep.json"
            if not sweep.exists():
                continue
            name, best = best_immediate(json.loads((out / f"{w}-{s}-capacity.json").read_text())["policies"])
            runs = json.loads(sweep.read_text())["runs"]
            for load in sorted({r["load"] for r in runs}):
                mg = margins(runs, load)
                sbs = next(r for r in runs if r["load"] == load and r["policy"] == "sbs")
                lines.append(
                    f"| {w} | {s} | {name} {best / 1e3:.0f}k tok/s | {load:g} | "
                    f"{sbs['ttft_mean_s']:.2f}/{sbs['ttft_p90_s']:.2f} s | "
                    f"{mg['sbs'][1]:+.0%}, {mg['sbs'][2]:+.0%} ({mg['sbs'][0]}) | "
                    f"{mg['sbs-fcfs'][1]:+.0%}, {mg['sbs-fcfs'][2]:+.0%} ({mg['sbs-fcfs'][0]}) |"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="azure,servegen", help="Of: " + ", ".join(WORKLOADS))
    ap.add_argument("--settings", default=",".join(cost_override.PRESETS), help="--cost-override presets")
    ap.add_argument("--out", type=Path, default=Path("out/fixed_cost"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--tables-only", action="store_true", help="Print the tables from earlier JSON files.")
    a = ap.parse_args(argv)
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    presets = cost_override.PRESETS
    for bad, valid in ((set(names) - set(WORKLOADS), WORKLOADS), (set(settings) - set(presets), presets)):
        if bad:
            ap.error(f"unknown {sorted(bad)[0]!r}; valid: {', '.join(valid)}")
    a.out.mkdir(parents=True, exist_ok=True)
    print("\n".join(review()), flush=True)
    if not a.tables_only:
        for w in names:
            for s in settings:
                print(f"fixed_cost_table: {w} {s}", file=sys.stderr, flush=True)
                run(w, s, a.out, a.jobs)
                print("\n".join(table([w], [s], a.out)), flush=True)
    print("\n" + "\n".join(table(names, settings, a.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
