"""The PD handshake in the simulator: TTFT with and without it, and SBS's measured lead (issue 12).

SGLang schedules a PD prefill only once its bootstrap handshake with the decode is done (and its
decode pre-allocates KV once per decode step). The simulator models that with `ClusterConfig`'s
`bootstrap_s` and `prealloc_per_decode_step`; SBS answers it with a per-instance lead measured from
the admission lags (`sbs_timing.lead_s`). This runs the cross-check's slice and cluster (Azure
conversation, 4 × DP8 prefill + 2 × DP16 decode, EP32 costs, as `sbs-bench crosscheck`) under each
handshake model, for least_load, sglang, sbs, sbs with the measured lead off
(`batching.admission_lead_max_s` = 0) and sbs told of every step (`step_reports` every: the
idealisation; SGLang's answers tell only of steps that finished requests), and prints TTFT mean / p90
in engine seconds.

    python -m sbs.bench.admission_table [--trace PATH] [--load 0.67] [--duration 30] [--json OUT]

About a minute on one core. Needs `../shared/traces` (or `--trace`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sbs.bench import h2h
from sbs.bench.emulated_cluster import BenchCluster
from sbs.settings import scheduling
from sbs.sim.simulator import Simulation

TRACE = "../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
MODELS: dict[str, dict[str, Any]] = {
    "none": {},
    "bootstrap 20 ms": {"bootstrap_s": 0.02},
    "bootstrap 20 ms, exponential": {"bootstrap_s": 0.02, "bootstrap_spread": "exponential"},
    "decode pre-allocation + 5 ms": {"bootstrap_s": 0.005, "prealloc_per_decode_step": True},
    "bootstrap 60 ms": {"bootstrap_s": 0.06},
}
"""Handshake models: none (the simulator's default), constant waits bracketing the emulator's
(about 27 ms at p50 in engine time on this 2-core machine), one spread per request as the emulator's
is, and SGLang's per-decode-step cadence."""
SYSTEMS = ("least_load", "sglang", "sbs", "sbs, lead not measured", "sbs, every step reported")


def _policy(system: str) -> scheduling.PolicySettings:
    if system != "sbs, lead not measured":
        return scheduling.policy_settings(system.split(",")[0])
    p = scheduling.policy_settings("sbs")
    return p.model_copy(update={"batching": p.batching.model_copy(update={"admission_lead_max_s": 0.0})})  # type: ignore[attr-defined]


def table(trace_path: str, load: float, duration_s: float) -> dict[str, Any]:
    cluster = BenchCluster(prefill_instances=4, prefill_dp=8, decode_instances=2, decode_dp=16)
    trace, _ = h2h.shape_trace(trace_path, None, load=load, duration_s=duration_s, cluster=cluster)
    base = cluster.sim_cluster()
    rows: dict[str, dict[str, Any]] = {}
    for name, knobs in MODELS.items():
        rows[name] = {}
        for system in SYSTEMS:
            every = {"step_reports": "every"} if system == "sbs, every step reported" else {}
            sim_cluster = base.model_copy(update={**knobs, **every})
            run = Simulation(trace, sim_cluster, _policy(system), cost=cluster.cost()).run()
            s = run.recorder.summary(slo_ttft_s=5.0, slo_tpot_s=0.1)
            rows[name][system] = {"ttft_mean_s": s["ttft_mean_s"], "ttft_p90_s": s["ttft_p90_s"]}
            print(f"{name:<30} {system:<24} {s['ttft_mean_s']:.3f} / {s['ttft_p90_s']:.3f}", flush=True)
    return {"trace": trace.name, "requests": len(trace), "load_of_nominal": load, "rows": rows}


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"TTFT mean / p90 (s, engine time), {doc['trace']}, {doc['requests']} requests at "
        f"{doc['load_of_nominal']:g} of nominal",
        "| handshake | " + " | ".join(SYSTEMS) + " |",
        "|---" * (len(SYSTEMS) + 1) + "|",
    ]
    for name, row in doc["rows"].items():
        cells = [f"{row[s]['ttft_mean_s']:.3f} / {row[s]['ttft_p90_s']:.3f}" for s in SYSTEMS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--load", type=float, default=0.67)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    doc = table(args.trace, args.load, args.duration)
    print(render(doc))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
