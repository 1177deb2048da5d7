"""Overhead: what a system in front of the engines adds, with engines that answer at once.

Engines run at time factor 0 (every modelled step takes no time), the cluster is the benchmark's
shape. In one run, on the same engines, each system gets the same streamed `/generate` bodies:

- `direct`: the client is its own router: it posts the body to a prefill and the decode at once
  (round robin over prefills and DP ranks, `bootstrap_room` ≡ the prefill rank, `routed_dp_rank`
  and `disagg_prefill_dp_rank` as our scheduler and SMG send them) and reads the decode's stream;
- every other system: one post to the system.

1. **Latency**: `requests` streamed requests one after another (after a warm-up), then as many
   non-streamed ones; per system the p50 and p99 of end-to-end latency (send → `[DONE]`, or the
   whole answer) and of TTFT, and the added latency = the system's percentile − `direct`'s.
2. **Throughput**: a closed loop of `concurrency` clients for `duration_s`; requests/s completed
   and the CPU seconds the system's process used, i.e. requests/s per fully used core. Client,
   engines and system share the machine's cores, so the closed-loop rate is a lower bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from sbs.bench import procs, systems
from sbs.bench.client import generate_body
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.procs import BenchError
from sbs.sim.summary_table import align, cell

PROMPT_TOKENS = 64
OUTPUT_TOKENS = 4


@dataclass
class Sample:
    ttft_s: float
    e2e_s: float


class RequestFailed(Exception):
    pass


async def _stream(http: aiohttp.ClientSession, url: str, body: bytes, t0: float) -> tuple[float, float]:
    """(first content event, end) after `t0`; raises RequestFailed. A non-streamed body's answer
    counts as both."""
    loop = asyncio.get_running_loop()
    first = None
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RequestFailed(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        if not resp.content_type.startswith("text/event-stream"):
            answer = await resp.read()
            if b'"error"' in answer[:20]:
                raise RequestFailed(answer[:200].decode(errors="replace"))
            end = loop.time() - t0
            return end, end
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                if first is None:
                    raise RequestFailed("stream without content")
                return first - t0, loop.time() - t0
            if payload.startswith(b'{"error"'):
                raise RequestFailed(payload[:200].decode(errors="replace"))
            if first is None:
                first = loop.time()
    raise RequestFailed("stream ended without [DONE]")


class Target:
    """How one request is sent: through a system, or PD-direct to the engines."""

    def __init__(self, name: str, url: str | None, eng: systems.Engines, cluster: BenchCluster) -> None:
        self.name = name
        self.url = url
        self.eng = eng
        self.cluster = cluster
        self._n = 0
        self._rng = random.Random(0)

    def _body(self, stream: bool) -> dict[str, Any]:
        self._n += 1
        return {**generate_body(self._n, PROMPT_TOKENS, OUTPUT_TOKENS), "stream": stream}

    async def send(self, http: aiohttp.ClientSession, *, stream: bool = True) -> Sample:
        loop = asyncio.get_running_loop()
        body = self._body(stream)
        if self.url is not None:
            t0 = loop.time()
            first, end = await _stream(http, f"{self.url}/generate", json.dumps(body).encode(), t0)
            return Sample(first, end)
        c, n = self.cluster, self._n
        p = n % len(self.eng.prefill)
        p_url, boot = self.eng.prefill[p]
        p_rank = (n // len(self.eng.prefill)) % c.prefill_dp
        d_rank = n % c.decode_dp
        room = self._rng.getrandbits(62) // c.prefill_dp * c.prefill_dp + p_rank
        pd = {"bootstrap_host": "127.0.0.1", "bootstrap_port": boot, "bootstrap_room": room}
        pre = json.dumps({**body, **pd, "routed_dp_rank": p_rank, "disagg_prefill_dp_rank": p_rank}).encode()
        dec = json.dumps({**body, **pd, "routed_dp_rank": d_rank, "disagg_prefill_dp_rank": p_rank}).encode()
        t0 = loop.time()
        prefill = asyncio.create_task(_stream(http, f"{p_url}/generate", pre, t0))
        try:
            first, end = await _stream(http, f"{self.eng.decode[0]}/generate", dec, t0)
        finally:
            await asyncio.wait([prefill])
        prefill.result()
        return Sample(first, end)


async def latency(
    target: Target, n: int, *, stream: bool = True, warmup: int = 20
) -> tuple[list[Sample], int]:
    samples, errors = [], 0
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10)) as http:
        for k in range(warmup + n):
            try:
                s = await target.send(http, stream=stream)
            except (TimeoutError, RequestFailed, aiohttp.ClientError) as exc:
                errors += k >= warmup
                last = str(exc)
                if k >= warmup and errors <= 3:
                    print(f"[{target.name}] request failed: {last[:200]}", file=sys.stderr)
                continue
            if k >= warmup:
                samples.append(s)
    return samples, errors


async def throughput(target: Target, concurrency: int, duration_s: float) -> tuple[int, int, float]:
    """(completed, errors, seconds) of a closed loop of `concurrency` clients."""
    done = errors = 0
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
        start = time.monotonic()
        stop_at = start + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop_at:
                try:
                    await target.send(http)
                    done += 1
                except (TimeoutError, RequestFailed, aiohttp.ClientError):
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, errors, time.monotonic() - start


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and every process under it (a router that forks
    workers is counted whole; children already reaped are in its cutime/cstime), from Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(f) for f in fields[11:15])
    total = ticks / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        below = cpu_seconds(child)
        total += below if below == below else 0.0
    return total


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run_overhead(
    specs: list[systems.SystemSpec],
    *,
    cluster: BenchCluster,
    requests: int,
    concurrency: int,
    duration_s: float,
    log_dir: Path,
    scheduler_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every system on one set of instant engines; returns the JSON document."""
    results: dict[str, Any] = {}
    with procs.ProcGroup() as engines_group:
        eng = await systems.start_engines(
            engines_group, cluster, time_factor=0.0, stream_interval=1, log_dir=log_dir / "engines"
        )
        for spec in specs:
            with procs.ProcGroup() as group:
                try:
                    running = await systems.start_system(
                        group,
                        spec,
                        eng,
                        cluster,
                        time_factor=0.0,
                        log_dir=log_dir / spec.name.replace(":", "-"),
                        scheduler_overrides=scheduler_overrides,
                    )
                except BenchError as exc:  # the others' results are kept
                    print(f"[{spec.name}] failed: {exc}", file=sys.stderr, flush=True)
                    results[spec.name] = {"failed": str(exc).splitlines()[0][:300]}
                    continue
                target = Target(spec.name, running.url or None, eng, cluster)
                say = f"[{spec.name}] latency: {requests} sequential requests, streamed and not"
                print(say, file=sys.stderr, flush=True)
                samples, lat_errors = await latency(target, requests)
                plain, plain_errors = await latency(target, requests, stream=False)
                lat_errors += plain_errors
                pid = group.procs[-1].pid if group.procs else None
                cpu0 = cpu_seconds(pid) if pid else float("nan")
                print(
                    f"[{spec.name}] throughput: {concurrency} clients for {duration_s:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                done, tp_errors, secs = await throughput(target, concurrency, duration_s)
                cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
            e2e = [s.e2e_s * 1e3 for s in samples]
            ttft = [s.ttft_s * 1e3 for s in samples]
            plain_ms = [s.e2e_s * 1e3 for s in plain]
            results[spec.name] = {
                "nonstream_latency_p50_ms": _pct(plain_ms, 50),
                "nonstream_latency_p99_ms": _pct(plain_ms, 99),
                "command": systems.command_line(running.argv) if running.argv else "(client → engines)",
                "latency_p50_ms": _pct(e2e, 50),
                "latency_p99_ms": _pct(e2e, 99),
                "ttft_p50_ms": _pct(ttft, 50),
                "ttft_p99_ms": _pct(ttft, 99),
                "latency_errors": lat_errors,
                "throughput_rps": done / secs,
                "throughput_errors": tp_errors,
                "process_cpu_s": cpu,
                "rps_per_cpu_core": done / cpu if cpu and cpu == cpu and cpu > 0 else None,
                "cpu_us_per_request": cpu / done * 1e6 if done and cpu == cpu else None,
            }
    base = results.get("direct")
    for r in results.values():
        if base is not None and "failed" not in base and "failed" not in r:
            r["overhead_p50_ms"] = r["latency_p50_ms"] - base["latency_p50_ms"]
            r["overhead_p99_ms"] = r["latency_p99_ms"] - base["latency_p99_ms"]
            r["overhead_nonstream_p50_ms"] = r["nonstream_latency_p50_ms"] - base["nonstream_latency_p50_ms"]
            r["overhead_nonstream_p99_ms"] = r["nonstream_latency_p99_ms"] - base["nonstream_latency_p99_ms"]
    return {
        "cluster": cluster.describe(),
        "requests": requests,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "body": {"prompt_tokens": PROMPT_TOKENS, "max_new_tokens": OUTPUT_TOKENS, "stream": True},
        "systems": results,
    }


def table(doc: dict[str, Any]) -> str:
    cols = (
        ("system", "{}", None),
        ("e2e p50 ms", "{:.2f}", "latency_p50_ms"),
        ("e2e p99 ms", "{:.2f}", "latency_p99_ms"),
        ("added p50 ms", "{:+.2f}", "overhead_p50_ms"),
        ("added p99 ms", "{:+.2f}", "overhead_p99_ms"),
        ("non-stream p50", "{:.2f}", "nonstream_latency_p50_ms"),
        ("added", "{:+.2f}", "overhead_nonstream_p50_ms"),
        ("non-stream p99", "{:.2f}", "nonstream_latency_p99_ms"),
        ("added", "{:+.2f}", "overhead_nonstream_p99_ms"),
        ("closed-loop req/s", "{:.0f}", "throughput_rps"),
        ("cpu s", "{:.1f}", "process_cpu_s"),
        ("req/s per core", "{:.0f}", "rps_per_cpu_core"),
        ("CPU µs/req", "{:.0f}", "cpu_us_per_request"),
        ("errors", "{:.0f}", None),
    )
    rows = [[c[0] for c in cols]]
    for name, r in doc["systems"].items():
        row = [name]
        if "failed" in r:
            rows.append([name] + ["-"] * (len(cols) - 2) + ["failed"])
            continue
        for _, fmt, key in cols[1:]:
            if key is None:
                row.append(str(r["latency_errors"] + r["throughput_errors"]))
                continue
            row.append(cell(fmt, r.get(key)))
        rows.append(row)
    lines = align(rows)
    s = doc["systems"]
    if "sbs" in s and "overhead_p50_ms" in s["sbs"] and "overhead_p50_ms" in s.get("sglang-router", {}):
        ours, theirs = s["sbs"], s["sglang-router"]
        p50_ok = ours["overhead_p50_ms"] <= 1.0
        p99_ok = ours["overhead_p99_ms"] <= 2 * max(theirs["overhead_p99_ms"], 0.0)
        p50_verdict = "met" if p50_ok else "NOT met"
        p99_verdict = "met" if p99_ok else "NOT met"
        lines.append(
            f"sbs, streamed: added p50 {ours['overhead_p50_ms']:+.2f} ms (target ≤ 1 ms: {p50_verdict}); "
            f"added p99 {ours['overhead_p99_ms']:+.2f} ms vs sglang-router's "
            f"{theirs['overhead_p99_ms']:+.2f} ms (target ≤ 2×: {p99_verdict})"
        )
        np50, np99 = ours["overhead_nonstream_p50_ms"], ours["overhead_nonstream_p99_ms"]
        tp99 = theirs["overhead_nonstream_p99_ms"]
        lines.append(
            f"sbs, not streamed: added p50 {np50:+.2f} ms (≤ 1 ms: {'met' if np50 <= 1.0 else 'NOT met'}); "
            f"added p99 {np99:+.2f} ms vs sglang-router's {tp99:+.2f} ms "
            f"(≤ 2×: {'met' if np99 <= 2 * max(tp99, 0.0) else 'NOT met'})"
        )
    lines += _cpu_verdict(s)
    return "\n".join(lines)


CPU_TARGET_US = 250.0
"""Issue 14's target for the scheduler's own CPU time per request."""


def _cpu_verdict(systems: dict[str, Any]) -> list[str]:
    ours = (systems.get("sbs") or {}).get("cpu_us_per_request")
    if not ours:
        return []
    line = f"sbs CPU per request: {ours:.0f} µs (target ≤ {CPU_TARGET_US:.0f} µs: "
    line += "met)" if ours <= CPU_TARGET_US else "NOT met)"
    others = [
        f"{ours / r['cpu_us_per_request']:.2f}× {name}'s {r['cpu_us_per_request']:.0f} µs"
        for name, r in systems.items()
        if name.startswith(("smg", "sglang-router")) and r.get("cpu_us_per_request")
    ]
    return [line + ("; " + ", ".join(others) if others else "")]
