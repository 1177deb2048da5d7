"""SBS's TTFT gain at cluster scale, in the simulator: by prefill instance count, and by scheduler replicas.

Two tables (issue 14), on one trace at one load fraction:
- **Instances.** 4, 16 and 64 prefill instances of the `ds3-h800` shape (DP32, 16,384 tokens per rank),
  decode instances (DP144) scaled with them (`--decode-per-prefill`, default 1/4 as in `ds3-h800`).
  Each cluster gets the trace scaled to `--load` × its own nominal prefill capacity and repeated to
  `--duration` seconds. Every policy runs, and SBS is compared with the best immediate baseline of
  the row (lowest TTFT mean).
- **Replicas.** The 16-instance row with SBS run by 1, 2 and 4 scheduler replicas
  (`sim/replicas.py`). Each replica is its own `Scheduler` core over the prefill instances
  `ownership.assign` gives it. Arrivals are spread over the replicas like a Kubernetes Service, and
  decode is shared through load reports. The baseline is the 16-instance row's best baseline run
  as one router: immediate dispatch needs no partition.

The columns that explain the trend are from the SBS run: per-instance arrival rate, arrivals per
instance per prefill step (`arr/step`), requests per release, the share of releases that went to an
idle instance at once (`bypass`), the prefill chunk use, and the time held in the scheduler.

Run: `sbs-bench scale-table [--instances 4,16,64] [--replicas 1,2,4] [--load 0.7] [--duration 120]
[--jobs N] [--json OUT]`. Progress goes to stderr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from sbs.scheduler.core.types import Role
from sbs.settings.scheduling import PolicySettings, policy_settings
from sbs.sim import replicas as replicas_mod
from sbs.sim.cluster import PRESETS, ClusterConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.runner import RunSpec, run_many
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, tiled, truncated

TRACE = "../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
BASELINES = ("least_load", "power_of_two", "round_robin", "random", "sglang")
"""The immediate-dispatch baselines; each row is compared with its best (lowest TTFT mean)."""
SLO_TTFT_S = 2.0
SLO_TPOT_S = 0.1


def scaled_cluster(
    prefill: int,
    decode_per_prefill: float,
    *,
    replicas: int = 1,
    spread: str = "round_robin",
    base: str = "ds3-h800",
) -> ClusterConfig:
    """`base`'s shapes with `prefill` prefill instances, decode scaled with them (at least one)."""
    c = PRESETS[base]
    decode = max(1, round(prefill * decode_per_prefill))
    name = f"{base} {prefill}p{decode}d" + (f" x{replicas} replicas" if replicas > 1 else "")
    return c.model_copy(
        update={
            "name": name,
            "prefill": c.prefill.model_copy(update={"instances": prefill}),
            "decode": c.decode.model_copy(update={"instances": decode}),
            "scheduler_replicas": replicas,
            "replica_spread": spread,
        }
    )


def workload(base: Trace, cluster: ClusterConfig, load: float, duration_s: float) -> Trace:
    """`base` at `load` × the cluster's nominal prefill capacity, repeated (or cut) to `duration_s`."""
    scaled = load_scaled(base, load * nominal_prefill_tok_s(cluster, CostModel(), base))
    return tiled(scaled, duration_s) if duration_s > scaled.duration_s else truncated(scaled, duration_s)


def gain(sbs: float, baseline: float) -> float:
    """SBS's relative change against the baseline (negative: SBS is faster)."""
    return sbs / baseline - 1.0 if baseline > 0 else math.nan


def _sbs_facts(run: dict[str, Any], trace: Trace, prefill: int) -> dict[str, float]:
    """The figures that explain SBS's gain: arrivals per instance, release sizes, bypass share."""
    s, st = run["summary"], run["scheduler"]
    rate = trace.mean_rate_rps / prefill
    releases = max(st.get("releases", 0), 1)
    return {
        "rate_per_instance_rps": rate,
        "arrivals_per_step": rate * s["prefill_step_mean_s"],
        "requests_per_release": st.get("released_requests", 0) / releases,
        "bypass_share": st.get("bypass_releases", 0) / releases,
        "forced_share": st.get("forced_releases", 0) / releases,
        "chunk_utilization": s["prefill_chunk_utilization"],
        "prefill_step_mean_s": s["prefill_step_mean_s"],
        "queue_wait_mean_s": s["queue_wait_mean_s"],
    }


def _row(runs: dict[str, dict[str, Any]], trace: Trace, cluster: ClusterConfig) -> dict[str, Any]:
    base = {p: r for p, r in runs.items() if p in BASELINES}
    best = min(base, key=lambda p: base[p]["summary"]["ttft_mean_s"])
    sbs, ref = runs["sbs"]["summary"], base[best]["summary"]
    return {
        "prefill": cluster.prefill.instances,
        "decode": cluster.decode.instances,
        "ranks": cluster.prefill.instances * cluster.prefill.dp_size
        + cluster.decode.instances * cluster.decode.dp_size,
        "requests": len(trace),
        "rate_rps": trace.mean_rate_rps,
        "best_baseline": best,
        "ttft_mean_gain": gain(sbs["ttft_mean_s"], ref["ttft_mean_s"]),
        "ttft_p90_gain": gain(sbs["ttft_p90_s"], ref["ttft_p90_s"]),
        "sbs": _sbs_facts(runs["sbs"], trace, cluster.prefill.instances),
        "baseline_chunk_utilization": ref["prefill_chunk_utilization"],
        "baseline_prefill_step_mean_s": ref["prefill_step_mean_s"],
        "policies": {p: {"summary": r["summary"], "scheduler": r["scheduler"]} for p, r in runs.items()},
    }


def run_tables(
    *,
    trace_path: str = TRACE,
    instances: Sequence[int] = (4, 16, 64),
    replicas: Sequence[int] = (1, 2, 4),
    replica_instances: int = 16,
    load: float = 0.7,
    duration_s: float = 120.0,
    decode_per_prefill: float = 0.25,
    spread: str = "round_robin",
    jobs: int = 1,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every simulation of both tables and return their document (see `format_tables`)."""
    base = load_trace(trace_path)
    counts = sorted(set(instances) | ({replica_instances} if replicas else set()))
    clusters = {p: scaled_cluster(p, decode_per_prefill) for p in counts}
    traces = {p: workload(base, clusters[p], load, duration_s) for p in counts}
    specs: list[tuple[tuple[int, int, str], RunSpec]] = [
        ((p, 1, name), RunSpec(traces[p], clusters[p], _policy(name), load))
        for p in counts
        for name in ("sbs", *BASELINES)
    ]
    for r in replicas:
        if r > 1:
            cluster = scaled_cluster(replica_instances, decode_per_prefill, replicas=r, spread=spread)
            specs.append(
                ((replica_instances, r, "sbs"), RunSpec(traces[replica_instances], cluster, _policy("sbs")))
            )
    specs.sort(key=lambda ks: -len(ks[1].trace))  # the longest runs first, so parallel workers end together
    for p in counts:
        t = traces[p]
        echo(
            f"scale-table: {clusters[p].name}: {len(t)} requests over {t.duration_s:.0f} s "
            f"({t.mean_rate_rps:.0f} req/s, {load:g} of nominal)"
        )
    echo(f"scale-table: {len(specs)} simulations, {jobs} at a time")
    results = run_many(
        [s for _, s in specs], jobs=jobs, slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S, label="scale-table"
    )
    by_key = {key: res for (key, _), res in zip(specs, results, strict=True)}
    doc: dict[str, Any] = {
        "trace": base.name,
        "load_of_nominal": load,
        "duration_s": duration_s,
        "decode_per_prefill": decode_per_prefill,
        "replica_spread": spread,
        "instances": [],
        "replicas": [],
    }
    rows = {}
    for p in counts:
        runs = {name: res for (pp, r, name), res in by_key.items() if pp == p and r == 1}
        rows[p] = _row(runs, traces[p], clusters[p])
        if p in instances:
            doc["instances"].append(rows[p])
    if replicas:
        ref = rows[replica_instances]
        best = ref["policies"][ref["best_baseline"]]["summary"]
        for r in replicas:
            run = by_key[(replica_instances, r, "sbs")]
            s = run["summary"]
            cluster = scaled_cluster(replica_instances, decode_per_prefill, replicas=r, spread=spread)
            g = gain(s["ttft_mean_s"], best["ttft_mean_s"])
            doc["replicas"].append(
                {
                    "replicas": r,
                    "instances_per_replica": _partition_sizes(cluster),
                    "ttft_mean_s": s["ttft_mean_s"],
                    "ttft_p90_s": s["ttft_p90_s"],
                    "best_baseline": ref["best_baseline"],
                    "ttft_mean_gain": g,
                    "ttft_p90_gain": gain(s["ttft_p90_s"], best["ttft_p90_s"]),
                    "gain_kept": g / ref["ttft_mean_gain"] if ref["ttft_mean_gain"] else math.nan,
                    "sbs": _sbs_facts(run, traces[replica_instances], replica_instances / r),
                    "summary": s,
                    "scheduler": run["scheduler"],
                }
            )
    return doc


def _policy(name: str) -> PolicySettings:
    return policy_settings(name)  # type: ignore[arg-type]


def _partition_sizes(cluster: ClusterConfig) -> list[int]:
    """Prefill instances per replica, in replica order."""
    specs = cluster.specs(Role.PREFILL, 1)
    if cluster.scheduler_replicas == 1:
        return [len(specs)]
    return [len(ids) for ids in replicas_mod.partition(specs, cluster.scheduler_replicas)]


def format_tables(doc: dict[str, Any]) -> str:
    """Both tables as aligned text, with a line per table on what changed."""
    pct = _pct
    lines = [
        f"SBS vs the best immediate baseline per row: {doc['trace']}, {doc['load_of_nominal']:g} of nominal, "
        f"{doc['duration_s']:g} s of arrivals, decode instances = {doc['decode_per_prefill']:g} x prefill",
        "",
        f"{'prefill':>7} {'decode':>6} {'ranks':>5} {'req/s':>6} {'best':>12} {'base TTFT':>9} {'p90':>6} "
        f"{'SBS TTFT':>8} {'p90':>6} {'gain':>5} {'p90':>5} | {'req/s/inst':>10} {'arr/step':>8} "
        f"{'req/rel':>7} {'bypass':>6} {'chunk':>5} {'base chunk':>10} {'held':>6}",
    ]
    for row in doc["instances"]:
        ref = row["policies"][row["best_baseline"]]["summary"]
        sbs = row["policies"]["sbs"]["summary"]
        f = row["sbs"]
        lines.append(
            f"{row['prefill']:7d} {row['decode']:6d} {row['ranks']:5d} {row['rate_rps']:6.0f} "
            f"{row['best_baseline']:>12} {ref['ttft_mean_s']:9.3f} {ref['ttft_p90_s']:6.3f} "
            f"{sbs['ttft_mean_s']:8.3f} {sbs['ttft_p90_s']:6.3f} {pct(row['ttft_mean_gain']):>5} "
            f"{pct(row['ttft_p90_gain']):>5} | {f['rate_per_instance_rps']:10.1f} "
            f"{f['arrivals_per_step']:8.1f} "
            f"{f['requests_per_release']:7.1f} {f['bypass_share']:6.0%} {f['chunk_utilization']:5.2f} "
            f"{row['baseline_chunk_utilization']:10.2f} {f['queue_wait_mean_s']:6.3f}"
        )
    if doc["replicas"]:
        first = doc["replicas"][0]
        lines += [
            "",
            f"scheduler replicas at {sum(first['instances_per_replica'])} prefill instances "
            f"(arrivals spread {doc['replica_spread']}; baseline: {first['best_baseline']}, one router)",
            "",
            f"{'replicas':>8} {'instances':>11} {'SBS TTFT':>8} {'p90':>6} {'gain':>5} {'p90':>5} "
            f"{'kept':>5} | "
            f"{'req/rel':>7} {'bypass':>6} {'chunk':>5} {'held':>6}",
        ]
        for row in doc["replicas"]:
            f = row["sbs"]
            lines.append(
                f"{row['replicas']:8d} {'/'.join(map(str, row['instances_per_replica'])):>11} "
                f"{row['ttft_mean_s']:8.3f} {row['ttft_p90_s']:6.3f} {pct(row['ttft_mean_gain']):>5} "
                f"{pct(row['ttft_p90_gain']):>5} {row['gain_kept']:5.0%} | {f['requests_per_release']:7.1f} "
                f"{f['bypass_share']:6.0%} {f['chunk_utilization']:5.2f} {f['queue_wait_mean_s']:6.3f}"
            )
    lines += [
        "",
        "(TTFT in s; gain = SBS / baseline - 1; kept = share of the one-replica TTFT mean gain; arr/step = "
        "arrivals per instance during one SBS prefill step; req/rel = requests per release; bypass = "
        "releases to an idle instance; chunk = prefill chunk use; held = mean time held by the scheduler)",
    ]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.0%}"
