"""Cross-check: the same policy, trace slice and cluster through the emulated engines and through the
simulator (`sbs.sim`), TTFT mean compared.

The live run is `h2h.run_system` (our scheduler service in front of fresh `sbs-engine` processes);
the simulated run is `sbs.sim.simulator.Simulation` on `BenchCluster.sim_cluster()` with the same EP
size (`PinnedEpCost`) and the same trace (engine-time arrivals).

Known offset (docs/emulator.md): in PD mode the emulator streams the first token when the request
joins the decode batch; the simulator records it at the end of that first decode step. The emulated
TTFT is therefore about one decode step shorter. We report the raw emulated TTFT and the corrected
one (raw + the emulator's own mean decode step, read from its `decode_moments`), and the relative
difference of each to the simulator's.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sbs.bench import h2h, systems
from sbs.settings import scheduling
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace

TARGET = 0.15


def simulate(trace: Trace, opts: h2h.RunOptions, policy: str) -> dict[str, Any]:
    started = time.process_time()
    result = Simulation(
        trace, opts.cluster.sim_cluster(), scheduling.policy_settings(policy), cost=opts.cluster.cost()
    ).run()
    summary = result.recorder.summary(slo_ttft_s=opts.slo_ttft_s, slo_tpot_s=opts.slo_tpot_s)
    summary["sim_cpu_s"] = time.process_time() - started
    durations = result.recorder.decode_durations
    summary["decode_step_mean_s"] = sum(durations) / len(durations) if durations else math.nan
    return summary


async def crosscheck(trace: Trace, opts: h2h.RunOptions, policy: str) -> dict[str, Any]:
    spec = systems.SystemSpec(policy, "sbs-scheduler", policy)
    run = await h2h.run_system(spec, trace, opts)
    live = run.summary
    sim = simulate(trace, opts, policy)
    decode_urls = [u for u, v in run.engine_lag.items() if not math.isnan(v["decode_step_mean_s"])]
    step_wall = max((run.engine_lag[u]["decode_step_mean_s"] for u in decode_urls), default=math.nan)
    step = step_wall / opts.time_factor
    raw = live["ttft_mean_s"]
    corrected = raw + step if raw is not None else None
    s_ttft = sim["ttft_mean_s"]

    def rel(v: float | None) -> float | None:
        return None if v is None or not s_ttft else v / s_ttft - 1.0

    return {
        "policy": policy,
        "emulated": live,
        "simulated": sim,
        "emulated_decode_step_mean_s": step,
        "ttft_mean_s": {"emulated_raw": raw, "emulated_corrected": corrected, "simulated": s_ttft},
        "relative_difference": {"raw": rel(raw), "corrected": rel(corrected)},
        "target": TARGET,
        "run": h2h.run_details(run, opts.time_factor),
    }


def describe(doc: dict[str, Any]) -> str:
    t, d = doc["ttft_mean_s"], doc["relative_difference"]
    e, s = doc["emulated"], doc["simulated"]

    def verdict(x: float | None) -> str:
        return "-" if x is None else ("within" if abs(x) <= TARGET else "OUTSIDE")

    sim_line = f"(p90 {s['ttft_p90_s']:.3f}, TPOT {s['tpot_mean_s']:.4f})"
    live_line = f"(p90 {e['ttft_p90_s']:.3f}, TPOT {e['tpot_mean_s']:.4f}, errors {e['errors']})"
    step_ms = doc["emulated_decode_step_mean_s"] * 1e3
    lines = [
        f"policy {doc['policy']}: TTFT mean (s)",
        f"  simulated                 {t['simulated']:.3f}  {sim_line}",
        f"  emulated, raw             {t['emulated_raw']:.3f}  {live_line}"
        f"  {d['raw']:+.1%}: {verdict(d['raw'])} ±{TARGET:.0%}",
        f"  emulated + 1 decode step  {t['emulated_corrected']:.3f}  (step {step_ms:.1f} ms)"
        f"  {d['corrected']:+.1%}: {verdict(d['corrected'])} ±{TARGET:.0%}",
    ]
    return "\n".join(lines)
