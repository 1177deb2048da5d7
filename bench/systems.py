"""The systems under test, how each is launched in front of the emulated engines, and the engines.

A system is named on the command line as ``NAME[:POLICY]``:

- ``sbs``, ``least_load``, ``round_robin``, ``random``, ``power_of_two``, ``sglang``: our scheduler
  service (`sbs-scheduler run --policy NAME`), SBS or one of its immediate-dispatch baselines;
- ``sglang-router[:POLICY]``: sglang-router 0.3.2 in PD mode (`python -m sglang_router.launch_router
  --pd-disaggregation ...`). Without `--dp-aware`: 0.3.2's DP-aware PD mode posts to rank-suffixed URLs
  (``http://host:port@1/generate``) and every request fails (docs/bench.md). The engines' own balancer
  (`total_tokens`) picks the DP ranks;
- ``smg[:POLICY]``: SMG 1.13.0 in PD mode with `--dp-aware` (it pins prefill and decode ranks with
  `routed_dp_rank` / `disagg_prefill_dp_rank`) and the fastest load poll it allows (1 s);
- ``smg-nodp[:POLICY]``: the same without `--dp-aware` (the engines' balancer picks the ranks);
- ``direct``: no system; the client plays the router itself (overhead runs only);
- ``sbs@N`` (any of our policies): N replicas of our scheduler sharing leases in a folder; the client
  spreads requests over them in turn, as a Kubernetes Service does (docs/scaling.md);
- any of these with ``+delayer`` after its name (``sglang-router+delayer``, ``smg+delayer:least_load``):
  the same system in front of prefill engines started with SGLang's `--enable-prefill-delayer`
  (the DP ranks of an instance wait for each other before they prefill; docs/emulator.md).

Defaults are each router's strongest PD policy on this workload, chosen by the pilot runs recorded
in docs/bench.md; the exact command line of every run is written to the JSON output.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sbs.bench import procs, routers
from sbs.bench.client import generate_body
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.procs import BenchError, ProcGroup
from sbs.settings import scheduling
from sbs.settings.service import CapacitySettings, EnginesSettings

_SMG_POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "least_load", "prefix_hash")
ROUTER_POLICIES = {
    "sglang-router": ("random", "round_robin", "cache_aware", "power_of_two"),
    "smg": _SMG_POLICIES,
    "smg-nodp": _SMG_POLICIES,
}
DEFAULT_ROUTER_POLICY = {"sglang-router": "cache_aware", "smg": "least_load", "smg-nodp": "least_load"}
"""Picked by the pilot runs in docs/bench.md (best TTFT p90 at load 0.85 among each router's PD
policies on this cluster)."""


@dataclass(frozen=True)
class SystemSpec:
    name: str
    """As given on the command line (the key of the results)."""
    kind: str
    """`sbs-scheduler`, `sglang-router`, `smg` or `direct`."""
    policy: str
    dp_aware: bool = False
    """SMG `--dp-aware`: the router pins DP ranks (else the engines' balancer picks them)."""
    prefill_flags: tuple[str, ...] = ()
    """Extra SGLang flags of the prefill engines this system runs in front of."""
    replicas: int = 1
    """Processes of our scheduler (`NAME@N`)."""


ENGINE_VARIANTS = {"delayer": ("--enable-prefill-delayer",)}
"""`NAME+VARIANT` → the prefill engines' extra flags."""


def parse_systems(text: str, *, option: str = "--systems", allow_direct: bool = False) -> list[SystemSpec]:
    """`sbs,least_load,sglang-router,smg:power_of_two` → specs; a bad name raises BenchError naming
    the option and listing the valid names."""
    out: list[SystemSpec] = []
    valid = [*scheduling.POLICY_NAMES, *(f"{r}[:POLICY]" for r in ROUTER_POLICIES)] + (
        ["direct"] if allow_direct else []
    )
    for raw in [s.strip() for s in text.split(",") if s.strip()]:
        named, at, count = raw.partition("@")
        replicas = int(count) if count.isdigit() and 1 <= int(count) <= 16 else 0
        if at and (not replicas or named not in scheduling.POLICY_NAMES):
            raise BenchError(
                f"{option}: {raw!r}: replicas are for our scheduler only, as POLICY@N with N 1..16"
            )
        if at:
            out.append(SystemSpec(raw, "sbs-scheduler", named, replicas=replicas))
            continue
        base, _, policy = raw.partition(":")
        base, plus, variant = base.partition("+")
        if plus and variant not in ENGINE_VARIANTS:
            raise BenchError(f"{option}: {raw!r}: unknown engine variant {variant!r}; valid: "
                             f"{', '.join('+' + v for v in ENGINE_VARIANTS)}")  # fmt: skip
        flags = ENGINE_VARIANTS.get(variant, ())
        if base in scheduling.POLICY_NAMES and not policy:
            out.append(SystemSpec(raw, "sbs-scheduler", base, prefill_flags=flags))
        elif base in ROUTER_POLICIES:
            policy = policy or DEFAULT_ROUTER_POLICY[base]
            if policy not in ROUTER_POLICIES[base]:
                raise BenchError(
                    f"{option}: {base} has no PD policy {policy!r}; valid: {', '.join(ROUTER_POLICIES[base])}"
                )
            kind = "smg" if base.startswith("smg") else base
            out.append(SystemSpec(raw, kind, policy, dp_aware=base == "smg", prefill_flags=flags))
        elif raw == "direct" and allow_direct and not plus:
            out.append(SystemSpec(raw, "direct", ""))
        else:
            raise BenchError(f"{option}: unknown system {raw!r}; valid: {', '.join(valid)}")
    if not out:
        raise BenchError(f"{option}: give at least one system")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise BenchError(f"{option}: a system is named twice in {text!r}")
    return out


@dataclass
class Engines:
    prefill: list[tuple[str, int]] = field(default_factory=list)
    """(URL, bootstrap port) of each prefill engine."""
    decode: list[str] = field(default_factory=list)
    argv: list[list[str]] = field(default_factory=list)


async def start_engines(
    group: ProcGroup,
    cluster: BenchCluster,
    *,
    time_factor: float,
    stream_interval: int,
    log_dir: Path,
    prefill_flags: Sequence[str] = (),
) -> Engines:
    """One `sbs-engine` process per instance, each answering `/health` before this returns;
    `prefill_flags` are added to the prefill engines' command lines."""
    eng = Engines()
    started = []
    for role, count in (("prefill", cluster.prefill_instances), ("decode", cluster.decode_instances)):
        for i in range(count):
            port = procs.free_port()
            boot = procs.free_port() if role == "prefill" else None
            argv = cluster.engine_argv(
                role,
                i,
                port=port,
                bootstrap_port=boot,
                time_factor=time_factor,
                stream_interval=stream_interval,
            )
            if role == "prefill":
                argv += prefill_flags
            url = f"http://127.0.0.1:{port}"
            started.append((group.start(f"{role}-{i}", argv, log_dir / f"{role}-{i}.log"), url))
            eng.argv.append(argv)
            if role == "prefill":
                assert boot is not None
                eng.prefill.append((url, boot))
            else:
                eng.decode.append(url)
    for proc, url in started:
        await proc.wait_http(f"{url}/health", timeout_s=60)
    return eng


def _sbs_config(policy: str, time_factor: float) -> dict[str, Any]:
    """Our scheduler's settings for a run at `time_factor`: durations that describe the engines'
    hardware (the prefill capacity model, the batcher's interval clamps, hold bound and lead cap) are
    scaled by the time factor, as the emulated hardware is that much faster or slower; network durations
    (release lead, transit, poll period, timeouts) are wall time and stay. At time factor 1 this is
    the service's defaults."""
    cap = CapacitySettings()
    tf = time_factor if time_factor > 0 else 1.0
    doc: dict[str, Any] = {
        "log_level": "warning",
        # prefill answers of one step spread over the KV transfers (hardware time)
        "engines": {"step_merge_s": EnginesSettings().step_merge_s * tf},
        "capacity": {
            "fixed_s": cap.fixed_s * tf,
            "per_token_s": cap.per_token_s * tf,
            "per_pair_s": cap.per_pair_s * tf,
        },
    }
    if policy == "sbs" and tf != 1.0:
        b = scheduling.BatchingSettings()
        doc["scheduler"] = {
            "policy": {
                "type": "sbs",
                "batching": {
                    "max_hold_s": b.max_hold_s * tf,
                    "min_interval_s": b.min_interval_s * tf,
                    "max_interval_s": b.max_interval_s * tf,
                    "size_priority_max_s": b.size_priority_max_s * tf,
                    "admission_lead_max_s": b.admission_lead_max_s * tf,
                },
            }
        }
    return doc


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, mappings recursively."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class RunningSystem:
    spec: SystemSpec
    url: str
    """Base URL clients call (the first replica's with several)."""
    argv: list[str]
    config: dict[str, Any] | None = None
    urls: list[str] = field(default_factory=list)
    """Every replica's base URL."""
    procs: list[procs.Proc] = field(default_factory=list)


def _router_argv(spec: SystemSpec, eng: Engines, port: int) -> list[str]:
    env = routers.ensure_routers()
    base = env.sglang_router_cmd() if spec.kind == "sglang-router" else env.smg_cmd()
    argv = [
        *base,
        *routers.pd_args(
            prefill=eng.prefill,
            decode=eng.decode,
            host="127.0.0.1",
            port=port,
            prometheus_port=procs.free_port(),
        ),
        "--policy",
        spec.policy,
        "--shutdown-grace-period-secs",
        "1",
    ]
    if spec.kind == "smg":
        argv += ["--load-monitor-interval", "1"]
    if spec.dp_aware:
        argv += ["--dp-aware"]
    return argv


def _expected_workers(spec: SystemSpec, cluster: BenchCluster) -> int:
    if spec.dp_aware:  # one logical worker per (engine, DP rank)
        return cluster.prefill_instances * cluster.prefill_dp + cluster.decode_instances * cluster.decode_dp
    return cluster.prefill_instances + cluster.decode_instances


async def start_system(
    group: ProcGroup,
    spec: SystemSpec,
    eng: Engines,
    cluster: BenchCluster,
    *,
    time_factor: float,
    log_dir: Path,
    scheduler_overrides: dict[str, Any] | None = None,
) -> RunningSystem:
    """Start the system under test in front of `eng`; returns once it routes a request end to end.
    `scheduler_overrides` is merged into our scheduler's settings (A/B and diagnostic runs)."""
    if spec.kind == "direct":
        return RunningSystem(spec, "", [])
    if spec.kind == "sbs-scheduler":
        running = await _start_schedulers(group, spec, eng, time_factor, log_dir, scheduler_overrides or {})
    else:
        port = procs.free_port()
        url = f"http://127.0.0.1:{port}"
        argv = _router_argv(spec, eng, port)
        log = log_dir / f"{spec.name.replace(':', '-')}.log"
        proc = group.start(spec.name, argv, log, env={"HF_HUB_OFFLINE": "1"})
        want = _expected_workers(spec, cluster)
        await proc.wait_http(
            f"{url}/readiness", timeout_s=90, check=lambda b: b.get("healthy_workers", want) >= want
        )
        running = RunningSystem(spec, url, argv, urls=[url], procs=[proc])
    for proc, replica_url in zip(running.procs, running.urls, strict=True):
        await warm_up(replica_url, proc)
    return running


async def _start_schedulers(
    group: ProcGroup,
    spec: SystemSpec,
    eng: Engines,
    time_factor: float,
    log_dir: Path,
    overrides: dict[str, Any],
) -> RunningSystem:
    """`spec.replicas` processes of our scheduler, ready; with several, leases in a fresh folder."""
    base = merged(_sbs_config(spec.policy, time_factor), overrides)
    stem = spec.name.replace("@", "-r")
    ports = [procs.free_port() for _ in range(spec.replicas)]
    leases = log_dir / f"{stem}-leases"
    if leases.exists():
        for old in leases.glob("*.lease"):
            old.unlink()
    running = RunningSystem(spec, f"http://127.0.0.1:{ports[0]}", [], base)
    for i, port in enumerate(ports):
        url = f"http://127.0.0.1:{port}"
        cfg = base
        if spec.replicas > 1:
            replica = {
                "backend": "directory",
                "directory": str(leases.resolve()),
                "id": f"r{i}",
                "advertise_url": url,
            }
            cfg = merged(base, {"replicas": replica})
        cfg_path = (
            log_dir / f"{stem}-{i}-config.json" if spec.replicas > 1 else log_dir / f"{spec.name}-config.json"
        )
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        argv = [
            *procs.console_script("sbs-scheduler", "sbs.scheduler.service.cli"),
            "run",
            "--config",
            str(cfg_path.resolve()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--policy",
            spec.policy,
            *[a for p_url, boot in eng.prefill for a in ("--prefill", f"{p_url},bootstrap_port={boot}")],
            *[a for d_url in eng.decode for a in ("--decode", d_url)],
        ]
        name = spec.name if spec.replicas == 1 else f"{stem}-{i}"
        log = log_dir / f"{name.replace(':', '-')}.log"
        running.procs.append(group.start(name, argv, log))
        running.urls.append(url)
        running.argv = running.argv or argv
        if spec.replicas > 1:
            running.config = {**cfg, "replicas": {**cfg["replicas"], "id": "r<i>", "advertise_url": "<url>"}}
    for proc, url in zip(running.procs, running.urls, strict=True):
        await proc.wait_http(f"{url}/readyz", timeout_s=60)
        if spec.replicas > 1:  # every replica sees them all: the prefill is split before the trace
            await proc.wait_http(
                f"{url}/engines", timeout_s=30, check=lambda b: len(b["peers"]) == spec.replicas
            )
    return running


async def warm_up(url: str, proc: procs.Proc, *, requests: int = 4, timeout_s: float = 60.0) -> None:
    """A few tiny streamed requests until they succeed: the whole PD path works before the trace."""

    deadline = time.monotonic() + timeout_s
    ok = 0
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while ok < requests:
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(
                    f"{proc.name}: warm-up requests fail ({last}); log {proc.log_path}:\n{proc.log_tail()}"
                )
            try:
                async with http.post(f"{url}/generate", json=generate_body(ok, 8, 2)) as resp:
                    text = await resp.text()
                    if resp.status == 200 and "[DONE]" in text and '{"error"' not in text:
                        ok += 1
                        continue
                    last = f"HTTP {resp.status}: {text[:200]}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(argv)
