"""A scheduler replica killed mid-run (`sbs-bench failover`): what its clients see, what the
survivors keep, how soon its prefill instances are owned again.

The trace slice is replayed through `replicas` processes of our scheduler (leases in a folder) in
front of fresh emulated engines, the client spreading requests over them in turn. At `kill_at` of
the slice one replica gets SIGKILL and the client stops sending to it, as a Kubernetes Service drops
a dead endpoint. Reported:
- the victim's requests in flight at the kill: all must fail, and how long after the kill each error
  reached its client (target: within 1 s);
- the survivors' requests: every one must complete (none lost), and each survivor's own count of
  accepted against completed + errored;
- the handover: seconds from the kill until the survivors own every prefill instance (`/engines`),
  target 5 s.
"""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import aiohttp
import numpy as np
from sbs.bench import systems
from sbs.bench.client import Measurements, replay
from sbs.bench.h2h import RunOptions, start_stack
from sbs.bench.procs import ProcGroup
from sbs.sim.trace import Trace


async def _owners(http: aiohttp.ClientSession, urls: list[str]) -> dict[str, list[str]]:
    """Per live replica URL, the prefill instances its pools decide for."""
    out = {}
    for url in urls:
        async with http.get(f"{url}/engines") as resp:
            doc = await resp.json()
        out[url] = sorted(k for p in doc["pools"] for k in p["prefill"])
    return out


async def scrape_counters(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Totals of a scheduler's own request counters (accepted, completed, errored) from its `/metrics`."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out = {"accepted": 0.0, "completed": 0.0, "errored": 0.0}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"sbs_requests_{key}_total"):
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


async def run_failover(
    trace: Trace, opts: RunOptions, *, replicas: int = 2, kill_at: float = 0.5, policy: str = "sbs"
) -> dict[str, Any]:
    """One run; returns the JSON document (`summary` in engine time, the failover figures in wall time)."""
    spec = systems.SystemSpec(f"{policy}@{replicas}", "sbs-scheduler", policy, replicas=replicas)
    victim = replicas - 1
    log_dir = opts.log_dir / f"failover-{policy}-{replicas}"
    with ProcGroup() as group:
        eng, running = await start_stack(group, spec, opts, log_dir)
        all_prefill = sorted(f"prefill-{i}" for i in range(len(eng.prefill)))
        survivors = [u for i, u in enumerate(running.urls) if i != victim]
        down: set[int] = set()
        loop = asyncio.get_running_loop()
        marks: dict[str, Any] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            marks["owners_before"] = await _owners(http, running.urls)

            async def kill() -> None:
                await asyncio.sleep(0.2 + trace.duration_s * opts.time_factor * kill_at)
                marks["kill"] = loop.time()
                running.procs[victim].popen.kill()  # SIGKILL: no lease given up, no drain
                down.add(victim)
                print(f"[failover] killed {running.urls[victim]} (SIGKILL)", file=sys.stderr, flush=True)
                while True:
                    owners = await _owners(http, survivors)
                    if sorted(k for keys in owners.values() for k in keys) == all_prefill:
                        marks["handover"], marks["owners_after"] = loop.time(), owners
                        return
                    await asyncio.sleep(0.05)

            killer = asyncio.create_task(kill())
            m = await replay(
                [f"{u}/generate" for u in running.urls],
                trace,
                opts.time_factor,
                label=spec.name,
                drain_timeout_s=opts.drain_timeout_s,
                down=down,
            )
            await asyncio.wait_for(killer, 60)
            counters = {u: await scrape_counters(http, u) for u in survivors}
    summary = m.summary(trace, opts.time_factor, slo_ttft_s=opts.slo_ttft_s, slo_tpot_s=opts.slo_tpot_s)
    return {
        "system": spec.name,
        "requests": len(trace),
        "kill_at_wall_s": marks["kill"] - m.t0,
        **_verdict(m, victim, marks["kill"] - m.t0),
        "handover_s": marks["handover"] - marks["kill"],
        "owners_before": marks["owners_before"],
        "owners_after": marks["owners_after"],
        "survivor_counters": counters,
        "summary": summary,
        "errors_by_kind": dict(m.errors.most_common(10)),
    }


def _verdict(m: Measurements, victim: int, kill_s: float) -> dict[str, Any]:
    """The victim's in-flight requests at the kill and the survivors' outcome, from the client's side."""
    on_victim = m.target == victim
    before_kill = m.sent < kill_s
    done_before = ~np.isnan(m.end) & (m.end < kill_s)
    in_flight = on_victim & before_kill & ~done_before & ~(m.failed < kill_s)
    fail_after = m.failed[in_flight] - kill_s
    survivors = ~on_victim
    return {
        "victim_in_flight": int(in_flight.sum()),
        "victim_in_flight_failed": int((~m.ok[in_flight]).sum()),
        "victim_in_flight_completed": int(m.ok[in_flight].sum()),
        "victim_fail_after_kill_max_s": float(np.nanmax(fail_after)) if fail_after.size else math.nan,
        "victim_fail_after_kill_p50_s": float(np.nanmedian(fail_after)) if fail_after.size else math.nan,
        "sent_to_victim_after_kill": int((on_victim & ~before_kill).sum()),
        "survivor_requests": int(survivors.sum()),
        "survivor_lost": int((survivors & ~m.ok).sum()),
    }


def report_lines(doc: dict[str, Any]) -> list[str]:
    """The human summary, with verdicts against the issue's targets."""
    s = doc["summary"]
    late = doc["victim_fail_after_kill_max_s"]
    return [
        f"{doc['system']}: {doc['requests']} requests; replica killed {doc['kill_at_wall_s']:.1f} s in",
        f"  victim's in-flight requests: {doc['victim_in_flight']}, failed {doc['victim_in_flight_failed']} "
        f"(errors reached their clients {doc['victim_fail_after_kill_p50_s']:.3f} s p50, "
        f"{late:.3f} s max after the kill: {'NOT met' if late > 1.0 else 'met'} <= 1 s); "
        f"completed anyway: {doc['victim_in_flight_completed']}",
        f"  survivors: {doc['survivor_requests']} requests, {doc['survivor_lost']} lost "
        f"({'met' if doc['survivor_lost'] == 0 else 'NOT met'}: 0); own counters {doc['survivor_counters']}",
        f"  handover: all prefill instances owned again {doc['handover_s']:.2f} s after the kill "
        f"({'met' if doc['handover_s'] <= 5.0 else 'NOT met'} <= 5 s)",
        f"  TTFT mean {s['ttft_mean_s']:.3f} s, p90 {s['ttft_p90_s']:.3f} s (engine time; all requests)",
    ]
