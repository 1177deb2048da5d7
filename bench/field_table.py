"""SBS against the whole field on six workloads, at loads relative to measured capacity (issue 11).

For each workload: `sbs-sim capacity` measures every policy's saturation throughput; then
`sbs-sim sweep --load-basis capacity` runs the field at 0.1–0.9 of the best immediate baseline's
capacity. The tables give SBS against the best immediate policy at each load (TTFT mean against the
policy with the lowest mean, p90 against the lowest p90 of any), and `sbs-fcfs` against the best one
in arrival order (no `+prio`), losses included.

    python -m sbs.bench.field_table [--workloads azure,sharegpt,...] [--out out/field] [--jobs 2]
        [--seeds 0,1,2] [--loads 0.1,0.3,...] [--bases azure=1036365,...]
    python -m sbs.bench.field_table --tables-only --out out/field   # re-print from the JSON files

`--seeds` repeats the sweep with each `sbs-sim --seed` (synthetic arrivals and lengths, the engines'
step-time jitter and handshakes) at the same basis, measured at the first seed, and adds a table of
SBS's margins per seed and the worst of them. `--bases NAME=TOK_S` gives a workload's basis and skips
its capacity search.

About 25 minutes on 2 cores for the first five, 20 for mooncake and azure-long33 (validation of the
lane costs, designed on mooncake). Needs `../shared/traces`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence
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


def run(
    workload: str,
    out: Path,
    jobs: int,
    *,
    seeds: Sequence[int] = (0,),
    loads: str = LOADS,
    basis: float | None = None,
) -> None:
    """Measure the capacities (at the first seed; not with a given `basis`), then sweep at loads
    relative to the best immediate one, once per seed."""
    args = WORKLOADS[workload]
    sim = [str(Path(sys.executable).parent / "sbs-sim")]
    common = ["--policies", FIELD, "--jobs", str(jobs)]
    if basis is None:
        cap_json = out / f"{workload}-capacity.json"
        seed = ["--seed", str(seeds[0])]
        subprocess.run(
            [*sim, "capacity", *args, *common, *seed, "--no-knee", "--json", str(cap_json)], check=True
        )
        basis = best_immediate(json.loads(cap_json.read_text())["policies"])[1]
    sweep = ["--loads", loads, "--load-basis", "capacity", "--capacity-tok-s", f"{basis:.1f}"]
    for s in seeds:
        seed = ["--seed", str(s), "--json", str(sweep_path(out, workload, s))]
        subprocess.run([*sim, "sweep", *args, *common, *sweep, *seed], check=True)


def sweep_path(out: Path, workload: str, seed: int) -> Path:
    """Where the sweep of `workload` at `seed` is written (seed 0: the name it always had)."""
    return out / (f"{workload}-sweep.json" if seed == 0 else f"{workload}-sweep-seed{seed}.json")


def best_immediate(capacities: dict[str, Any]) -> tuple[str, float]:
    """The immediate policy with the highest measured capacity, and that capacity (prompt tok/s)."""
    imm = {k: v["capacity_tok_s"] for k, v in capacities.items() if k not in REFERENCES}
    name = max(imm, key=imm.__getitem__)
    return name, imm[name]


def tables(workload: str, out: Path) -> list[str]:
    """Markdown lines: the capacities, then SBS and sbs-fcfs against the best baselines per load (the
    first seed's sweep), then, with several seeds' sweeps, their margins per seed and the worst."""
    lines = [f"### {workload}", ""]
    cap_json = out / f"{workload}-capacity.json"
    if cap_json.exists():
        caps = json.loads(cap_json.read_text())["policies"]
        name, best = best_immediate(caps)
        lines += ["Capacity, k prompt tok/s (fraction of nominal; + only a lower bound):", ""]
        lines.append(", ".join(
            f"{k} {v['capacity_tok_s'] / 1e3:.0f}{'+' if v['status'] == 'above max load' else ''} "
            f"({v['capacity_of_nominal']:.3f})" for k, v in caps.items()
        ))  # fmt: skip
        for s in ("sbs", "sbs-fcfs"):
            lines.append(
                f"- {s} capacity vs best immediate ({name}): {caps[s]['capacity_tok_s'] / best - 1:+.1%}"
            )
    sweeps = {s: json.loads(p.read_text()) for s, p in sweep_files(out, workload)}
    first = sweeps[min(sweeps)]
    if not cap_json.exists() and "capacity_tok_s" in first:
        lines.append(f"Basis (given): {first['capacity_tok_s'] / 1e3:.1f}k prompt tok/s")
    lines += ["", "| load | sbs mean/p90 | best immediate | sbs vs it: mean, p90 | sbs-fcfs mean/p90 "
              "| best FCFS | sbs-fcfs vs it: mean, p90 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for load in sorted({r["load"] for r in first["runs"]}):
        row = [f"{load:g}"]
        for m, b, pool, ratios in versus(first["runs"], load).values():
            row += [
                f"{m['ttft_mean_s']:.2f}/{m['ttft_p90_s']:.2f}",
                f"{b} {pool[b]['ttft_mean_s']:.2f}/{pool[b]['ttft_p90_s']:.2f}",
                f"{ratios[0]:+.0%}, {ratios[1]:+.0%}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    if len(sweeps) > 1:
        lines += _seed_table(sweeps)
    return [*lines, ""]


def sweep_files(out: Path, workload: str) -> list[tuple[int, Path]]:
    """(seed, path) of the workload's sweeps in `out`, seed 0's first."""
    found = [(0, out / f"{workload}-sweep.json")] if (out / f"{workload}-sweep.json").exists() else []
    for p in out.glob(f"{workload}-sweep-seed*.json"):
        with contextlib.suppress(ValueError):
            found.append((int(p.stem.rsplit("-seed", 1)[1]), p))
    return sorted(found)


def versus(runs: list[dict[str, Any]], load: float) -> dict[str, tuple[dict, str, dict, tuple[float, float]]]:
    """At `load`, per reference (`sbs` against every immediate policy, `sbs-fcfs` against those in
    arrival order): its run, the policy of lowest TTFT mean, the pool, and (mean, p90) ratios − 1, the
    p90 against the lowest p90 of any in the pool."""
    at = {r["policy"]: r for r in runs if r["load"] == load}
    imm = {k: v for k, v in at.items() if k not in REFERENCES}
    out = {}
    for me, pool in (("sbs", imm), ("sbs-fcfs", {k: v for k, v in imm.items() if "+prio" not in k})):
        b = min(pool, key=lambda k: pool[k]["ttft_mean_s"])
        p90 = min(v["ttft_p90_s"] for v in pool.values())
        m = at[me]
        out[me] = m, b, pool, (m["ttft_mean_s"] / pool[b]["ttft_mean_s"] - 1, m["ttft_p90_s"] / p90 - 1)
    return out


def _seed_table(sweeps: dict[int, dict[str, Any]]) -> list[str]:
    """Per load, SBS's and sbs-fcfs's margins (mean, p90) at each seed and the worst over the seeds."""
    seeds = sorted(sweeps)
    names = "/".join(map(str, seeds))
    lines = ["", f"Per seed ({names}), against the best at that seed; worst: the least favourable", "",
             "| load | sbs mean | sbs p90 | worst | sbs-fcfs mean | sbs-fcfs p90 | worst |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    loads = sorted(set.intersection(*({r["load"] for r in sweeps[s]["runs"]} for s in seeds)))
    for load in loads:
        row = [f"{load:g}"]
        per = [versus(sweeps[s]["runs"], load) for s in seeds]
        for me in ("sbs", "sbs-fcfs"):
            means = [v[me][3][0] for v in per]
            p90s = [v[me][3][1] for v in per]
            row += [
                " / ".join(f"{x:+.0%}" for x in means),
                " / ".join(f"{x:+.0%}" for x in p90s),
                f"{max(means):+.0%}, {max(p90s):+.0%}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="Comma-separated: " + ", ".join(WORKLOADS)
    )
    ap.add_argument("--out", type=Path, default=Path("out/field"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tables-only", action="store_true", help="Print the tables from earlier JSON files.")
    ap.add_argument("--seeds", default="0", help="Comma-separated `sbs-sim --seed` values, one sweep each")
    ap.add_argument("--loads", default=LOADS, help="Loads, fractions of the basis (default %(default)s)")
    ap.add_argument(
        "--bases", default="", help="NAME=TOK_S,...: a workload's basis (prompt tok/s); no capacity search"
    )
    a = ap.parse_args(argv)
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        ap.error(f"--workloads: unknown {unknown[0]!r}; valid: {', '.join(WORKLOADS)}")
    try:
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        bases = {k.strip(): float(v) for k, v in (kv.split("=") for kv in a.bases.split(",") if kv.strip())}
        loads = ",".join(f"{float(x):g}" for x in a.loads.split(","))
    except ValueError:
        ap.error(f"--seeds N,N,..., --loads X,X,... and --bases NAME=TOK_S,...: got {a.seeds!r}, "
                 f"{a.loads!r} and {a.bases!r}")  # fmt: skip
    bad = [k for k, v in bases.items() if k not in WORKLOADS or v <= 0]
    if not seeds or bad:
        ap.error(f"--bases: {bad[0]!r} is no workload or not positive" if bad else "--seeds: none given")
    a.out.mkdir(parents=True, exist_ok=True)
    for w in names:
        if not a.tables_only:
            print(f"field_table: {w}", file=sys.stderr, flush=True)
            run(w, a.out, a.jobs, seeds=seeds, loads=loads, basis=bases.get(w))
        if sweep_files(a.out, w):
            print("\n".join(tables(w, a.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
