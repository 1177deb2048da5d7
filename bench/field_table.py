"""SBS against the whole field on six workloads, at loads relative to measured capacity (issue 11).

For each workload: `sbs-sim capacity` measures every policy's saturation throughput; then
`sbs-sim sweep --load-basis capacity` runs the field at 0.1–0.9 of the best immediate baseline's
capacity. The tables give SBS against the best immediate policy at each load (TTFT mean against the
policy with the lowest mean, p90 against the lowest p90 of any), and `sbs-fcfs` against the best one
in arrival order (no `+prio`), losses included.

    python -m sbs.bench.field_table [--workloads azure,sharegpt,...] [--out out/field] [--jobs 2]
    python -m sbs.bench.field_table --tables-only --out out/field   # re-print from the JSON files

About 25 minutes on 2 cores for the first five, 20 for mooncake and azure-long33 (validation of the
lane costs, designed on mooncake). Needs `../shared/traces`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sbs.sim.report import REFERENCES

TRACES = "../shared/traces"
AZURE = f"{TRACES}/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
FIELD = "sbs,sbs-fcfs,eft,eft+prio,sglang,sglang+prio,sglang+delayer,least_load,least_load+prio"
LOADS = "0.1,0.3,0.5,0.7,0.9"
WORKLOADS: dict[str, list[str]] = {
    "azure": ["--trace", AZURE, "--duration", "120"],
    "sharegpt": [
        "--trace", f"{TRACES}/sharegpt_lengths_sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        "--format", "lengths", "--arrivals", "gamma:2", "--duration", "120",
    ],
    "servegen": [
        "--trace", f"{TRACES}/servegen_deepseek_r1/data", "--format", "servegen", "--duration", "120",
    ],
    "longmix": [
        "--trace", AZURE, "--long-prompts", "1%:64000-128000", "--duration", "300",
    ],
    "mooncake": [
        "--trace", f"{TRACES}/mooncake_fast25_synthetic/synthetic_trace.jsonl", "--format", "mooncake",
        "--duration", "600",  # its first tokens take 10-30 s: shorter runs overstate capacity
    ],
    # Validation of the cost-based lanes (designed on mooncake): a third of the requests 16-64k tokens,
    # on another trace's arrivals and short prompts, without prefix reuse.
    "azure-long33": [
        "--trace", AZURE, "--long-prompts", "33%:16000-64000", "--duration", "600",
    ],
}  # fmt: skip


def run(workload: str, out: Path, jobs: int) -> None:
    """Measure the capacities, then sweep at loads relative to the best immediate one."""
    args = WORKLOADS[workload]
    sim = [str(Path(sys.executable).parent / "sbs-sim")]
    cap_json = out / f"{workload}-capacity.json"
    common = ["--policies", FIELD, "--jobs", str(jobs)]
    subprocess.run([*sim, "capacity", *args, *common, "--no-knee", "--json", str(cap_json)], check=True)
    best = best_immediate(json.loads(cap_json.read_text())["policies"])[1]
    sweep = ["--loads", LOADS, "--load-basis", "capacity", "--capacity-tok-s", f"{best:.1f}"]
    subprocess.run(
        [*sim, "sweep", *args, *common, *sweep, "--json", str(out / f"{workload}-sweep.json")], check=True
    )


def best_immediate(capacities: dict[str, Any]) -> tuple[str, float]:
    """The immediate policy with the highest measured capacity, and that capacity (prompt tok/s)."""
    imm = {k: v["capacity_tok_s"] for k, v in capacities.items() if k not in REFERENCES}
    name = max(imm, key=imm.__getitem__)
    return name, imm[name]


def tables(workload: str, out: Path) -> list[str]:
    """Markdown lines: the capacities, then SBS and sbs-fcfs against the best baselines per load."""
    caps = json.loads((out / f"{workload}-capacity.json").read_text())["policies"]
    runs = json.loads((out / f"{workload}-sweep.json").read_text())["runs"]
    name, best = best_immediate(caps)
    lines = [
        f"### {workload}",
        "",
        "Capacity, k prompt tok/s (fraction of nominal; + only a lower bound):",
        "",
    ]
    lines.append(", ".join(
        f"{k} {v['capacity_tok_s'] / 1e3:.0f}{'+' if v['status'] == 'above max load' else ''} "
        f"({v['capacity_of_nominal']:.3f})" for k, v in caps.items()
    ))  # fmt: skip
    for s in ("sbs", "sbs-fcfs"):
        lines.append(
            f"- {s} capacity vs best immediate ({name}): {caps[s]['capacity_tok_s'] / best - 1:+.1%}"
        )
    lines += ["", "| load | sbs mean/p90 | best immediate | sbs vs it: mean, p90 | sbs-fcfs mean/p90 "
              "| best FCFS | sbs-fcfs vs it: mean, p90 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for load in sorted({r["load"] for r in runs}):
        at = {r["policy"]: r for r in runs if r["load"] == load}
        imm = {k: v for k, v in at.items() if k not in REFERENCES}
        row = [f"{load:g}"]
        for me, pool in (("sbs", imm), ("sbs-fcfs", {k: v for k, v in imm.items() if "+prio" not in k})):
            b = min(pool, key=lambda k: pool[k]["ttft_mean_s"])
            p90 = min(v["ttft_p90_s"] for v in pool.values())
            m = at[me]
            row += [
                f"{m['ttft_mean_s']:.2f}/{m['ttft_p90_s']:.2f}",
                f"{b} {pool[b]['ttft_mean_s']:.2f}/{pool[b]['ttft_p90_s']:.2f}",
                f"{m['ttft_mean_s'] / pool[b]['ttft_mean_s'] - 1:+.0%}, {m['ttft_p90_s'] / p90 - 1:+.0%}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="Comma-separated: " + ", ".join(WORKLOADS)
    )
    ap.add_argument("--out", type=Path, default=Path("out/field"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tables-only", action="store_true", help="Print the tables from earlier JSON files.")
    a = ap.parse_args(argv)
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        ap.error(f"--workloads: unknown {unknown[0]!r}; valid: {', '.join(WORKLOADS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    for w in names:
        if not a.tables_only:
            print(f"field_table: {w}", file=sys.stderr, flush=True)
            run(w, a.out, a.jobs)
        if (a.out / f"{w}-sweep.json").exists():
            print("\n".join(tables(w, a.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
