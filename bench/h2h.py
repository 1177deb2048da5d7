"""Head to head: the same trace slice through each system in front of fresh emulated engines.

For each system in turn: start the engines (one `sbs-engine` process per instance), start the system
under test, check that it routes, replay the trace with the streaming client at `arrival × time
factor`, read the engines' lag, stop everything. Measured wall times are divided by the time factor,
so the figures are in engine (hardware) time, comparable with `sbs-sim compare`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sbs.bench import procs, systems
from sbs.bench.client import Measurements, replay
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.procs import BenchError
from sbs.sim.errors import SimInputError
from sbs.sim.loaders import load_trace
from sbs.sim.long_prompts import parse_long_prompts
from sbs.sim.recorder import SUMMARY_KEYS
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, tiled, truncated


@dataclass(frozen=True)
class RunOptions:
    """What one live run needs besides the systems."""

    cluster: BenchCluster = field(default_factory=BenchCluster)
    time_factor: float = 1.0
    stream_interval: int = 8
    slo_ttft_s: float = 2.0
    slo_tpot_s: float = 0.1
    drain_timeout_s: float = 300.0
    """Wall seconds the client waits for open requests after the last send; the rest are errors."""
    log_dir: Path = Path("out/bench-live")
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    """Merged into our scheduler's settings (`--scheduler-config`); empty = the service's defaults."""
    quiet: bool = False


@dataclass
class SystemRun:
    """One system's run: what was started, what was measured."""

    spec: systems.SystemSpec
    measurements: Measurements
    command: str
    engines: list[str]
    config: dict[str, Any] | None
    engine_lag: dict[str, dict[str, float]]
    wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)


def shape_trace(
    path: str,
    fmt: str | None,
    *,
    load: float | None,
    duration_s: float | None,
    cluster: BenchCluster,
    long_prompts: str | None = None,
) -> tuple[Trace, float]:
    """The trace slice every system gets, and the cluster's nominal prefill capacity (tokens/s).

    With `load`, the slice is the trace's first requests re-timed (`sbs.sim.workload.load_scaled`)
    so that *the slice's own* mean offered prompt load is `load` × nominal and its arrivals span
    `duration_s`. (`sbs-sim compare` scales the whole trace and then cuts it, so a slice from a quiet
    stretch of the trace is offered less than `load`; a head-to-head wants the load it asks for.)
    A trace shorter than `duration_s` is repeated (`tiled`). `long_prompts` (`--long-prompts`) adds
    long prompts to the whole trace first, as `sbs-sim` does, so that `load` counts them."""
    try:
        long = parse_long_prompts(long_prompts)
    except SimInputError as exc:
        raise BenchError(str(exc)) from None
    if long is not None and long.percent is None:
        raise BenchError(f"--long-prompts {long_prompts}: give a share of the trace (like 33%:16000-64000)")
    try:
        base = load_trace(path, fmt)
    except SimInputError as exc:
        raise BenchError(f"--trace: {exc}") from None
    if long is not None:
        base = long.add_to(base)
    if len(base) == 0:
        raise BenchError(f"--trace {path}: the trace has no requests")
    nominal = cluster.nominal_prefill_tok_s(base)
    try:
        trace = _slice(base, None if load is None else load * nominal, duration_s)
    except ValueError as exc:
        raise BenchError(f"--trace {path}: {exc}") from None
    if len(trace) == 0:
        raise BenchError("the workload is empty after --load and --duration")
    return trace, nominal


def _slice(base: Trace, tok_s: float | None, duration_s: float | None) -> Trace:
    if tok_s is None:
        if duration_s is None:
            return base
        return tiled(base, duration_s) if duration_s > base.duration_s else truncated(base, duration_s)
    if duration_s is None:
        return load_scaled(base, tok_s)
    # The first requests holding `tok_s × duration_s` prompt tokens, re-timed to offer `tok_s`, span
    # `duration_s` (load_scaled divides their total by their span).
    want = tok_s * duration_s
    total = 0
    for r in base.requests:
        total += r.prompt_tokens
        if total >= want and r.arrival_s > 0:
            return load_scaled(truncated(base, r.arrival_s + 1e-9), tok_s)
    return tiled(load_scaled(base, tok_s), duration_s)


async def engine_lag(urls: list[str]) -> dict[str, dict[str, float]]:
    """Per engine: `emulator.lag_s` and `lagged_steps` from `/server_info` (0 = it kept real time),
    the mean decode step in wall seconds from `/v1/loads` (`decode_moments`; NaN on a prefill), and
    the mean PD bootstrap wait in wall seconds from SGLang's `sglang:per_stage_req_latency_seconds`
    (stage `prefill_bootstrap`; NaN on a decode or before any)."""
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for url in urls:
            row = {
                "lag_s": math.nan,
                "lagged_steps": math.nan,
                "decode_step_mean_s": math.nan,
                "bootstrap_mean_s": math.nan,
            }
            try:
                async with http.get(f"{url}/server_info") as resp:
                    emu = (await resp.json())["emulator"]
                row.update(lag_s=float(emu["lag_s"]), lagged_steps=float(emu["lagged_steps"]))
                async with http.get(f"{url}/v1/loads") as resp:
                    moments = [entry["decode_moments"] for entry in (await resp.json())["loads"]]
                steps = max(moments, key=lambda m: m[0])
                if steps[0] > 0:
                    row["decode_step_mean_s"] = steps[2] / steps[0] / 1e6
                async with http.get(f"{url}/metrics") as resp:
                    row["bootstrap_mean_s"] = _stage_mean(await resp.text(), "prefill_bootstrap")
            except (TimeoutError, aiohttp.ClientError, KeyError, ValueError, TypeError):
                pass
            out[url] = row
    return out


def _stage_mean(text: str, stage: str) -> float:
    """Mean of one stage of `sglang:per_stage_req_latency_seconds` over its labels (NaN: none)."""
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "sglang:per_stage_req_latency_seconds":
            continue
        for s in family.samples:
            if s.labels.get("stage") == stage:
                if s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
    return total / count if count else math.nan


async def start_stack(
    group: procs.ProcGroup, spec: systems.SystemSpec, opts: RunOptions, log_dir: Path
) -> tuple[systems.Engines, systems.RunningSystem]:
    """Fresh engines for `spec` and the system in front of them, routing."""
    eng = await systems.start_engines(
        group,
        opts.cluster,
        time_factor=opts.time_factor,
        stream_interval=opts.stream_interval,
        log_dir=log_dir,
        prefill_flags=spec.prefill_flags,
    )
    running = await systems.start_system(
        group,
        spec,
        eng,
        opts.cluster,
        time_factor=opts.time_factor,
        log_dir=log_dir,
        scheduler_overrides=opts.scheduler_overrides,
    )
    return eng, running


async def run_system(spec: systems.SystemSpec, trace: Trace, opts: RunOptions) -> SystemRun:
    """Fresh engines, the system, the replay, the engines' lag; everything stopped on the way out."""
    log_dir = opts.log_dir / spec.name.replace(":", "-")
    started = time.monotonic()
    with procs.ProcGroup() as group:
        eng, running = await start_stack(group, spec, opts, log_dir)
        _say(opts, f"[{spec.name}] {systems.command_line(running.argv)}")
        m = await replay(
            [f"{u}/generate" for u in running.urls] or f"{running.url}/generate",
            trace,
            opts.time_factor,
            label=spec.name,
            drain_timeout_s=opts.drain_timeout_s,
        )
        lag = await engine_lag([u for u, _ in eng.prefill] + eng.decode)
    run = SystemRun(
        spec,
        m,
        systems.command_line(running.argv),
        [systems.command_line(a) for a in eng.argv],
        running.config,
        lag,
        time.monotonic() - started,
    )
    run.summary = m.summary(trace, opts.time_factor, slo_ttft_s=opts.slo_ttft_s, slo_tpot_s=opts.slo_tpot_s)
    worst = max((v["lag_s"] for v in lag.values() if not math.isnan(v["lag_s"])), default=0.0)
    if worst > 0.01 * run.wall_s:
        _say(
            opts,
            f"[{spec.name}] warning: an engine fell {worst:.1f} s behind real time "
            "(raise --time-factor or --stream-interval)",
        )
    if m.errors:
        top = "; ".join(f"{n}× {msg}" for msg, n in m.errors.most_common(3))
        _say(opts, f"[{spec.name}] {m.error_count} errors: {top}")
    return run


def failed_run(spec: systems.SystemSpec, trace: Trace, message: str) -> SystemRun:
    """A system that could not be started or measured: every request counts as an error."""
    m = Measurements(len(trace))
    m.errors[f"system failed: {message.splitlines()[0][:300]}"] = len(trace)
    run = SystemRun(spec, m, "", [], None, {}, 0.0)
    run.summary = {**dict.fromkeys(SUMMARY_KEYS), "completed": 0, "dropped": len(trace), "errors": len(trace)}
    run.summary["failed"] = message
    return run


def run_details(run: SystemRun, time_factor: float) -> dict[str, Any]:
    return {
        "kind": run.spec.kind,
        "policy": run.spec.policy,
        "command": run.command,
        "engines": run.engines,
        "config": run.config,
        "engine_lag": run.engine_lag,
        "client": run.measurements.client_health(),
        "errors_by_kind": dict(run.measurements.errors.most_common(20)),
        "wall_s": run.wall_s,
    }


def _say(opts: RunOptions, line: str) -> None:
    if not opts.quiet:
        print(line, file=sys.stderr, flush=True)
