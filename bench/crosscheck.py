"""Cross-check: the same policy, trace slice and cluster through the emulated engines and through the
simulator (`sbs.sim`), TTFT mean and p90 compared.

The live run is `h2h.run_system` (our scheduler service in front of fresh `sbs-engine` processes);
the simulated run is `sbs.sim.simulator.Simulation` on `BenchCluster.sim_cluster()` with the same EP
size (`PinnedEpCost`) and the same trace (engine-time arrivals). The simulator's PD handshake
(`ClusterConfig.bootstrap_s`) is the emulated prefills' own mean bootstrap wait in this run (SGLang's
`sglang:per_stage_req_latency_seconds{stage="prefill_bootstrap"}`), in engine time, spread
exponentially per request as the emulator's is.

Known offset (docs/emulator.md): in PD mode the emulator streams the first token when the request
joins the decode batch; the simulator records it at the end of that first decode step. The emulated
TTFT is therefore about one decode step shorter. We report the raw emulated TTFT mean and p90 and the
corrected ones (raw + the emulator's own mean decode step, read from its `decode_moments`), and the
relative difference of each to the simulator's (target ±10 %).
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import TypeAdapter
from sbs.bench import h2h, systems
from sbs.settings import scheduling
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace

TARGET = 0.10


def simulated_policy(policy: str, overrides: dict[str, Any]) -> scheduling.AnyPolicy:
    """`policy`'s settings as the live run has them: the defaults, with `--scheduler-config`'s
    `scheduler.policy` merged in (the live service's time scaling aside: the simulator runs in engine
    time)."""
    base = scheduling.policy_settings(policy)
    extra = overrides.get("scheduler", {}).get("policy")
    if not extra:
        return base
    if extra.get("type", base.type) != base.type:  # another policy: its defaults, not this one's fields
        base = scheduling.policy_settings(extra["type"])
    return TypeAdapter(scheduling.PolicySettings).validate_python(systems.merged(base.model_dump(), extra))


def simulate(
    trace: Trace, opts: h2h.RunOptions, policy: str, *, bootstrap_s: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """The simulator on the slice and cluster, the PD handshake taking `bootstrap_s` on average (engine
    time); `seed` k draws the cluster's jitter and handshakes with its seed + k."""
    started = time.process_time()
    base = opts.cluster.sim_cluster()
    cluster = base.model_copy(
        update={"bootstrap_s": bootstrap_s, "bootstrap_spread": "exponential", "seed": base.seed + seed}
    )
    settings = simulated_policy(policy, opts.scheduler_overrides)
    result = Simulation(trace, cluster, settings, cost=opts.cluster.cost()).run()
    summary = result.recorder.summary(slo_ttft_s=opts.slo_ttft_s, slo_tpot_s=opts.slo_tpot_s)
    summary["sim_cpu_s"] = time.process_time() - started
    durations = result.recorder.decode_durations
    summary["decode_step_mean_s"] = sum(durations) / len(durations) if durations else math.nan
    return summary


async def crosscheck(trace: Trace, opts: h2h.RunOptions, policy: str, *, seeds: int = 1) -> dict[str, Any]:
    """One emulated run of `policy` against the simulator's: the first seed's, and with `seeds` > 1 the
    mean over that many (the emulated run is one draw of the jitter; the seeds show its spread)."""
    spec = systems.SystemSpec(policy, "sbs-scheduler", policy)
    run = await h2h.run_system(spec, trace, opts)
    live = run.summary
    waits = [v["bootstrap_mean_s"] for v in run.engine_lag.values() if not math.isnan(v["bootstrap_mean_s"])]
    bootstrap_s = sum(waits) / len(waits) / opts.time_factor if waits else 0.0
    sims = [simulate(trace, opts, policy, bootstrap_s=bootstrap_s, seed=k) for k in range(seeds)]
    sim = sims[0]
    spread = {
        stat: {"values": [x[stat] for x in sims], "mean": sum(x[stat] for x in sims) / len(sims)}
        for stat in ("ttft_mean_s", "ttft_p90_s")
    }
    decode_urls = [u for u, v in run.engine_lag.items() if not math.isnan(v["decode_step_mean_s"])]
    step_wall = max((run.engine_lag[u]["decode_step_mean_s"] for u in decode_urls), default=math.nan)
    step = step_wall / opts.time_factor
    figures: dict[str, dict[str, float | None]] = {}
    differences: dict[str, dict[str, float | None]] = {}
    for stat in ("ttft_mean_s", "ttft_p90_s"):
        raw, simulated = live[stat], sim[stat]
        corrected = raw + step if raw is not None else None
        figures[stat] = {"emulated_raw": raw, "emulated_corrected": corrected, "simulated": simulated}
        differences[stat] = {"raw": _rel(raw, simulated), "corrected": _rel(corrected, simulated)}
    return {
        "policy": policy,
        "emulated": live,
        "simulated": sim,
        "emulated_decode_step_mean_s": step,
        "simulated_bootstrap_s": bootstrap_s,
        "simulated_seeds": spread,
        **figures,
        "relative_difference": differences["ttft_mean_s"],
        "relative_difference_p90": differences["ttft_p90_s"],
        "target": TARGET,
        "run": h2h.run_details(run, opts.time_factor),
    }


def _rel(v: float | None, reference: float | None) -> float | None:
    return None if v is None or not reference else v / reference - 1.0


def describe(doc: dict[str, Any]) -> str:
    e, s = doc["emulated"], doc["simulated"]

    def verdict(x: float | None) -> str:
        return "-" if x is None else ("within" if abs(x) <= TARGET else "OUTSIDE")

    step_ms = doc["emulated_decode_step_mean_s"] * 1e3
    lines = [
        f"policy {doc['policy']}: TTFT (s); simulated TPOT {s['tpot_mean_s']:.4f}, emulated TPOT "
        f"{e['tpot_mean_s']:.4f}, emulated errors {e['errors']}; simulated PD handshake "
        f"{doc['simulated_bootstrap_s'] * 1e3:.1f} ms (the emulated prefills' mean)"
    ]
    for stat, label, diff in (
        ("ttft_mean_s", "mean", doc["relative_difference"]),
        ("ttft_p90_s", "p90", doc["relative_difference_p90"]),
    ):
        t = doc[stat]
        lines += [
            f"  {label:<4} simulated                 {t['simulated']:.3f}",
            f"  {label:<4} emulated, raw             {t['emulated_raw']:.3f}"
            f"  {diff['raw']:+.1%}: {verdict(diff['raw'])} ±{TARGET:.0%}",
            f"  {label:<4} emulated + 1 decode step  {t['emulated_corrected']:.3f}  (step {step_ms:.1f} ms)"
            f"  {diff['corrected']:+.1%}: {verdict(diff['corrected'])} ±{TARGET:.0%}",
        ]
        seeds = doc.get("simulated_seeds", {}).get(stat, {"values": []})
        if len(seeds["values"]) > 1:
            lo, hi = min(seeds["values"]), max(seeds["values"])
            inside = "inside" if lo <= t["emulated_raw"] <= hi else "outside"
            lines.append(
                f"  {label:<4} simulated, {len(seeds['values'])} seeds       {seeds['mean']:.3f}"
                f"  (range {lo:.3f}-{hi:.3f}; the emulated raw figure is {inside} it)"
            )
    return "\n".join(lines)
