"""A prefill group drained and re-added under steady load (`sbs-bench membership`, issue 12).

One `sbs-scheduler` in front of fresh emulated engines learns its engines from a watched engines file
(`sbs-scheduler run --engines-file`, `sbs.scheduler.service.file_discovery`), the way a deployment
outside Kubernetes changes membership; it mirrors the SBSDeployment operator's drain (docs/operator.md):
the group's entry is marked `draining: true` (no new requests; it finishes what it holds), deleted
`drain_s` later (it leaves the membership: the pool's core is rebuilt, `Scheduler.rebuilt`), and
added back `out_s` after the drain began (the engine is resolved again and the core rebuilt again).
The trace slice is replayed at a steady load throughout. Reported per phase, by send time in engine
seconds: steady state (after the warm-up, before the drain), the `window_s` after the drain, the
`window_s` after the re-add: TTFT mean/p50/p90/p99, count, completed, errors, and the p90's ratio to
steady state against the issue's target (within 20 %). Every request must complete or fail
explicitly: accepted = completed + errors, client side and in the scheduler's own counters.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from sbs.bench import procs, systems
from sbs.bench.client import Measurements, replay
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.failover import scrape_counters
from sbs.bench.h2h import RunOptions, engine_lag, shape_trace
from sbs.bench.procs import BenchError, ProcGroup
from sbs.sim.trace import Trace
from sbs.sim.workload import synthetic

TARGET_RATIO = 1.2
"""Issue 12: TTFT p90 over the window after each change within 20 % of steady state."""
PHASES = ("steady", "after_drain", "after_readd")
"""Judged phases; `out_settled` (the second half of the time the group is out) is reported beside them."""
BIN_S = 5.0
"""The whole run is also reported in bins of this many engine seconds (by send time)."""


@dataclass(frozen=True)
class Timeline:
    """When the membership changes, in engine seconds after the first arrival."""

    warmup_s: float = 15.0
    """Arrivals before steady state is measured (queues and the pool's averages settle)."""
    steady_s: float = 30.0
    drain_s: float = 10.0
    """From `draining` to the entry's removal (the operator's `drainSeconds`, scaled down)."""
    out_s: float = 30.0
    """From the drain to the re-add."""
    after_s: float = 30.0
    """Arrivals after the re-add."""
    window_s: float = 30.0
    """The window measured after each change."""

    @property
    def drain_at_s(self) -> float:
        return self.warmup_s + self.steady_s

    @property
    def readd_at_s(self) -> float:
        return self.drain_at_s + self.out_s

    @property
    def total_s(self) -> float:
        return self.readd_at_s + self.after_s

    def check(self) -> None:
        """Raise `BenchError` naming the option whose value cannot work."""
        for name, v in asdict(self).items():
            if not (math.isfinite(v) and v >= 0):
                raise BenchError(f"--{name[:-2].replace('_', '-')} must be >= 0, got {v:g}")
        if self.steady_s <= 0 or self.window_s <= 0:
            raise BenchError("--steady and --window must be > 0")
        if self.drain_s > self.out_s:
            raise BenchError(f"--drain ({self.drain_s:g}) must be <= --out ({self.out_s:g})")
        if self.window_s > min(self.out_s, self.after_s):
            raise BenchError(f"--window ({self.window_s:g}) must be <= --out and --after")


def make_trace(
    path: str,
    fmt: str | None,
    *,
    load: float,
    timeline: Timeline,
    cluster: BenchCluster,
    arrivals: str,
    seed: int,
) -> tuple[Trace, float, float]:
    """The workload, the nominal prefill capacity (tokens/s, of the trace's length mix) of the cluster
    without one prefill group, which `load` is a fraction of, and that of the whole cluster.

    `poisson` (a steady load): Poisson arrivals at the constant rate that offers `load`, each request's
    (prompt, output) drawn from the trace's pairs; `trace`: the trace's own first requests re-timed to
    offer `load` on average (`h2h.shape_trace`; its rate drifts as the trace's does, so the phases see
    different loads)."""
    smaller = reduced(cluster)
    base, nominal = shape_trace(path, fmt, load=None, duration_s=None, cluster=smaller)
    full = cluster.nominal_prefill_tok_s(base)
    if arrivals == "trace":
        trace, _ = shape_trace(path, fmt, load=load, duration_s=timeline.total_s, cluster=smaller)
        return trace, nominal, full
    rate = load * nominal / (base.total_prompt_tokens / len(base))
    try:
        trace = synthetic(rate_rps=rate, duration_s=timeline.total_s, seed=seed, lengths=base)
    except ValueError as exc:
        raise BenchError(f"--trace {path}: {exc}") from None
    return Trace(f"{base.name}: Poisson arrivals, lengths drawn (seed {seed})", trace.requests), nominal, full


def reduced(cluster: BenchCluster) -> BenchCluster:
    """The cluster with one prefill group out: the yardstick of `--load`."""
    if cluster.prefill_instances < 2:
        raise BenchError("--prefill: at least 2 prefill instances (one is drained)")
    return BenchCluster(**{**asdict(cluster), "prefill_instances": cluster.prefill_instances - 1})


def engines_doc(eng: systems.Engines, *, draining: int | None = None, without: int | None = None) -> dict:
    """The engines file's mapping: every engine, prefill `draining` marked, prefill `without` left out."""
    prefill = []
    for i, (url, boot) in enumerate(eng.prefill):
        if i != without:
            prefill.append(
                {"url": url, "bootstrap_port": boot, **({"draining": True} if i == draining else {})}
            )
    return {"prefill": prefill, "decode": [{"url": u} for u in eng.decode]}


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` by a rename, so the scheduler never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


async def start_scheduler(
    group: ProcGroup, eng: systems.Engines, opts: RunOptions, policy: str, log_dir: Path, engines_file: Path
) -> tuple[str, list[str], dict[str, Any]]:
    """Our scheduler with its engines from `engines_file`, routing; (URL, argv, config)."""
    cfg = systems.merged(systems._sbs_config(policy, opts.time_factor), opts.scheduler_overrides)
    cfg_path = log_dir / f"{policy}-config.json"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    write_atomic(engines_file, engines_doc(eng))
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        *procs.console_script("sbs-scheduler", "sbs.scheduler.service.cli"),
        "run", "--config", str(cfg_path.resolve()), "--host", "127.0.0.1", "--port", str(port),
        "--policy", policy, "--engines-file", str(engines_file.resolve()),
    ]  # fmt: skip
    proc = group.start(policy, argv, log_dir / f"{policy}.log")
    await proc.wait_http(f"{url}/readyz", timeout_s=60)
    await systems.warm_up(url, proc)
    return url, argv, cfg


async def _state(http: aiohttp.ClientSession, url: str, key: str) -> str:
    """The engine's state in the scheduler's `/engines` (`absent` when it is not a member)."""
    async with http.get(f"{url}/engines") as resp:
        doc = await resp.json()
    states = {e["key"]: e["state"] for e in doc["engines"]}
    in_pool = any(key in p["prefill"] for p in doc["pools"])
    if key not in states:
        return "absent"
    return states[key] if in_pool or states[key] == "draining" else "resolving"


async def _until(
    http: aiohttp.ClientSession, url: str, key: str, want: str, timeout_s: float = 60.0
) -> float:
    """Poll `/engines` until `key` is in state `want`; the loop time it was seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (state := await _state(http, url, key)) != want:
        if loop.time() > deadline:
            raise BenchError(
                f"the scheduler did not see {key} {want} within {timeout_s:g} s (it says {state})"
            )
        await asyncio.sleep(0.05)
    return loop.time()


async def run_membership(
    trace: Trace, opts: RunOptions, timeline: Timeline, *, policy: str = "sbs", group_index: int = -1
) -> dict[str, Any]:
    """One run; returns the JSON document (phases in engine time, change latencies in wall time)."""
    tf = opts.time_factor
    log_dir = opts.log_dir / f"membership-{policy}"
    log_dir.mkdir(parents=True, exist_ok=True)
    engines_file = log_dir / "engines.json"
    started = time.monotonic()
    with ProcGroup() as group:
        eng = await systems.start_engines(
            group, opts.cluster, time_factor=tf, stream_interval=opts.stream_interval, log_dir=log_dir
        )
        victim = group_index % len(eng.prefill)
        key = f"prefill@{eng.prefill[victim][0]}"
        url, argv, cfg = await start_scheduler(group, eng, opts, policy, log_dir, engines_file)
        _say(opts, f"[membership] {systems.command_line(argv)}")
        loop = asyncio.get_running_loop()
        marks: dict[str, float] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def at(engine_s: float) -> None:
                await asyncio.sleep(max(0.0, start + 0.2 + engine_s * tf - loop.time()))

            async def change() -> None:
                await at(timeline.drain_at_s)
                marks["drain"] = loop.time()
                write_atomic(engines_file, engines_doc(eng, draining=victim))
                marks["drain_seen"] = await _until(http, url, key, "draining")
                _say(opts, f"[membership] {key} draining (seen {marks['drain_seen'] - marks['drain']:.2f} s)")
                await at(timeline.drain_at_s + timeline.drain_s)
                marks["remove"] = loop.time()
                write_atomic(engines_file, engines_doc(eng, without=victim))
                marks["remove_seen"] = await _until(http, url, key, "absent")
                _say(
                    opts, f"[membership] {key} removed (seen {marks['remove_seen'] - marks['remove']:.2f} s)"
                )
                await at(timeline.readd_at_s)
                marks["readd"] = loop.time()
                write_atomic(engines_file, engines_doc(eng))
                marks["readd_seen"] = await _until(http, url, key, "usable")
                _say(
                    opts, f"[membership] {key} re-added (usable {marks['readd_seen'] - marks['readd']:.2f} s)"
                )

            before = await scrape_counters(http, url)  # the warm-up's requests
            start = loop.time()
            changer = asyncio.create_task(change())
            m = await replay(
                f"{url}/generate",
                trace,
                tf,
                label=f"membership-{policy}",
                drain_timeout_s=opts.drain_timeout_s,
            )
            await asyncio.wait_for(changer, 120)
            counters = {k: v - before[k] for k, v in (await scrape_counters(http, url)).items()}
        lag = await engine_lag([u for u, _ in eng.prefill] + eng.decode)
    wall_s = time.monotonic() - started
    at_s = {k: (v - m.t0) / tf for k, v in marks.items()}  # engine seconds after the first arrival's slot
    windows = {
        "steady": (timeline.warmup_s, at_s["drain"]),
        "after_drain": (at_s["drain"], at_s["drain"] + timeline.window_s),
        "after_readd": (at_s["readd"], at_s["readd"] + timeline.window_s),
        # informative: the second half of the time the group is out, long after the rebuild
        "out_settled": ((at_s["remove"] + at_s["readd"]) / 2, at_s["readd"]),
    }
    phases = {name: phase_stats(m, trace, tf, lo, hi) for name, (lo, hi) in windows.items()}
    bins = [phase_stats(m, trace, tf, lo, lo + BIN_S) for lo in np.arange(0.0, timeline.total_s, BIN_S)]
    worst_lag = max((v["lag_s"] for v in lag.values() if not math.isnan(v["lag_s"])), default=0.0)
    return {
        "policy": policy,
        "requests": len(trace),
        "drained": key,
        "timeline": asdict(timeline),
        "changes_at_engine_s": at_s,
        "seen_after_wall_s": {k: marks[f"{k}_seen"] - marks[k] for k in ("drain", "remove", "readd")},
        "phases": phases,
        "verdict": verdict(phases),
        "bins": [{k: b[k] for k in ("from_s", "count", "errors", "ttft_mean_s", "ttft_p90_s")} for b in bins],
        "accounting": accounting(m),
        "scheduler_counters": counters,
        "summary": m.summary(trace, tf, slo_ttft_s=opts.slo_ttft_s, slo_tpot_s=opts.slo_tpot_s),
        "errors_by_kind": dict(m.errors.most_common(10)),
        "engine_lag": lag,
        "engine_lag_worst_s": worst_lag,
        "client": m.client_health(),
        "command": systems.command_line(argv),
        "engines": [systems.command_line(a) for a in eng.argv],
        "config": cfg,
        "wall_s": wall_s,
    }


def phase_stats(
    m: Measurements, trace: Trace, time_factor: float, lo_s: float, hi_s: float
) -> dict[str, Any]:
    """Requests sent in [lo_s, hi_s) engine seconds: count, completed, errors, offered prompt tokens
    per engine second, TTFT of the completed."""
    sent = m.sent / time_factor
    mask = (sent >= lo_s) & (sent < hi_s)
    ok = mask & m.ok
    ttft = (m.first[ok] - m.sent[ok]) / time_factor
    prompts = np.array([r.prompt_tokens for r in trace.requests], dtype=float)
    row: dict[str, Any] = {
        "from_s": lo_s,
        "to_s": hi_s,
        "prompt_tok_s": float(prompts[mask].sum() / (hi_s - lo_s)) if hi_s > lo_s else None,
        "count": int(mask.sum()),
        "completed": int(ok.sum()),
        "errors": int((mask & ~m.ok).sum()),
    }
    for name, value in (
        ("ttft_mean_s", ttft.mean() if ttft.size else math.nan),
        ("ttft_p50_s", np.percentile(ttft, 50) if ttft.size else math.nan),
        ("ttft_p90_s", np.percentile(ttft, 90) if ttft.size else math.nan),
        ("ttft_p99_s", np.percentile(ttft, 99) if ttft.size else math.nan),
    ):
        row[name] = None if math.isnan(value) else float(value)
    return row


def verdict(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each change window's TTFT p90 over steady state's, against `TARGET_RATIO`."""
    base = phases["steady"]["ttft_p90_s"]
    out: dict[str, Any] = {"target_ratio": TARGET_RATIO}
    for name in PHASES[1:]:
        p90 = phases[name]["ttft_p90_s"]
        ratio = p90 / base if p90 is not None and base else None
        out[name] = {"ratio": ratio, "pass": ratio is not None and ratio <= TARGET_RATIO}
    return out


def accounting(m: Measurements) -> dict[str, int]:
    """Client side: every request sent completed or ended with an explicit error (`lost` must be 0)."""
    sent = int((~np.isnan(m.sent)).sum())
    completed, errors = int(m.ok.sum()), int(sum(m.errors.values()))
    return {"accepted": sent, "completed": completed, "errors": errors, "lost": m.n - completed - errors}


def report_lines(doc: dict[str, Any]) -> list[str]:
    """The table and the verdicts."""
    t, v = doc["timeline"], doc["verdict"]
    base = doc["phases"]["steady"]["ttft_p90_s"]
    at = doc["changes_at_engine_s"]
    lines = [
        f"{doc['policy']}: {doc['requests']} requests; {doc['drained']} draining at {at['drain']:.1f} s, "
        f"removed at {at['remove']:.1f} s, re-added at {at['readd']:.1f} s (engine time)",
        "",
        "| phase (window by send time, engine s) | prompt tok/s | requests | completed | errors | "
        f"TTFT mean | p90 | p90 / steady (target <= {TARGET_RATIO:g}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (*PHASES, "out_settled"):
        p = doc["phases"][name]
        mean = "-" if p["ttft_mean_s"] is None else f"{p['ttft_mean_s']:.3f}"
        p90 = "-" if p["ttft_p90_s"] is None else f"{p['ttft_p90_s']:.3f}"
        if name == "steady":
            ratio = "1"
        elif name not in v:
            r = p["ttft_p90_s"] / base if p["ttft_p90_s"] is not None and base else None
            ratio = f"{'-' if r is None else f'{r:.2f}'} (informative)"
        else:
            r = v[name]["ratio"]
            ratio = f"{'-' if r is None else f'{r:.2f}'} {'PASS' if v[name]['pass'] else 'FAIL'}"
        lines.append(
            f"| {name} [{p['from_s']:.1f}, {p['to_s']:.1f}) | {p['prompt_tok_s'] / 1e3:.1f}k | "
            f"{p['count']} | {p['completed']} | {p['errors']} | {mean} | {p90} | {ratio} |"
        )
    acc, sc = doc["accounting"], doc["scheduler_counters"]
    p90s = " ".join("-" if b["ttft_p90_s"] is None else f"{b['ttft_p90_s']:.2f}" for b in doc["bins"])
    lines += [
        "",
        f"TTFT p90 per {BIN_S:g} s of send time from 0: {p90s}",
        f"accounting (client): accepted {acc['accepted']} = completed {acc['completed']} + errors "
        f"{acc['errors']}; lost {acc['lost']}",
        f"scheduler counters: accepted {sc['accepted']:.0f}, completed {sc['completed']:.0f}, "
        f"errored {sc['errored']:.0f}",
        f"membership seen by the scheduler after (wall s): {doc['seen_after_wall_s']}",
        f"engine lag worst {doc['engine_lag_worst_s']:.2f} s over {doc['wall_s']:.0f} s wall; "
        f"client send lateness p99 {doc['client']['send_lateness_p99_ms']:.1f} ms; timeline {t}",
    ]
    return lines


def _say(opts: RunOptions, line: str) -> None:
    if not opts.quiet:
        print(line, file=sys.stderr, flush=True)
