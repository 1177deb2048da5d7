"""The load generator: replay a trace against one endpoint, streaming, at the trace's timestamps.

Each request is a streamed SGLang `/generate` (every system under test speaks it: our scheduler, both
routers, and the engines themselves) with the trace's prompt length and output length:

- the prompt is text of exactly `prompt_tokens` emulated tokens (4 characters each); its first token
  is unique to the request, so no two prompts share a cached prefix (the traces we replay carry no
  prefix information, and the simulator then assumes no reuse either);
- `max_new_tokens` = the trace's output length with `ignore_eos`, so every request generates exactly
  that many tokens.

Times are taken on the client's monotonic clock: send (just before the POST), the first event with
content (TTFT), every event (ITL), and the end of the stream. A request counts as an error when the
answer is not 200, a stream carries an error event or ends early, the token count differs from the
one asked for, or the request is still open at the drain deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import numpy as np
from sbs.sim.recorder import SUMMARY_KEYS, Recorder, weighted_percentile
from sbs.sim.trace import Trace

CHARS_PER_TOKEN = 4
"""The emulator's tokenizer rule (`sbs.sim.emulator.tokens`): one token per 4 characters."""
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
_FILL = " lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')
_HEX_ID = re.compile(r"[0-9a-f]{16,}")
_BIG_NUMBER = re.compile(r"\d{5,}")
_RANK = re.compile(r"(rank=)\d+")

UNMEASURED_KEYS = (
    "prefill_chunk_utilization",
    "dp_imbalance",
    "prefill_time_balance",
    "decode_dp_imbalance",
    "queue_wait_mean_s",
    "queue_wait_p90_s",
    "prefill_step_mean_s",
    "cache_hit_rate",
)
"""`sbs-sim compare` keys that need the inside of the engines or the scheduler; a client cannot see
them, so they are written as null."""


def prompt_text(index: int, tokens: int) -> str:
    """Exactly `tokens` emulated tokens. The first three encode `index` (< 64⁴) three different ways:
    token ids are CRC-32s modulo the vocabulary, so one token may collide with another request's,
    but three together do not, and no two prompts share a cached prefix block."""
    code = "".join(
        _ALPHABET[((index * mult + add) >> (6 * k)) & 63]
        for mult, add in ((1, 0), (7919, 13), (104729, 101))
        for k in range(4)
    )
    code = code[: CHARS_PER_TOKEN * tokens]
    body_chars = CHARS_PER_TOKEN * tokens - len(code)
    reps = body_chars // len(_FILL) + 1
    return code + (_FILL * reps)[:body_chars]


def generate_body(index: int, prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "text": prompt_text(index, prompt_tokens),
        "sampling_params": {"max_new_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0},
        "stream": True,
    }


@dataclass
class Measurements:
    """Per-request wall times (client clock, seconds after `t0`), NaN where it never happened."""

    n: int
    t0: float = 0.0
    sent: np.ndarray = field(init=False)
    first: np.ndarray = field(init=False)
    end: np.ndarray = field(init=False)
    lateness: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)
    failed: np.ndarray = field(init=False)
    """When the request's error reached the client."""
    target: np.ndarray = field(init=False)
    """Index of the URL it was sent to (several scheduler replicas)."""
    itl_gaps: list[float] = field(default_factory=list)
    itl_weights: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.sent = np.full(self.n, np.nan)
        self.first = np.full(self.n, np.nan)
        self.end = np.full(self.n, np.nan)
        self.lateness = np.full(self.n, np.nan)
        self.ok = np.zeros(self.n, dtype=bool)
        self.failed = np.full(self.n, np.nan)
        self.target = np.zeros(self.n, dtype=int)

    @property
    def error_count(self) -> int:
        return int(self.n - self.ok.sum())

    def summary(
        self, trace: Trace, time_factor: float, *, slo_ttft_s: float, slo_tpot_s: float
    ) -> dict[str, Any]:
        """`sbs-sim compare`'s keys (its own `Recorder.summary`) in engine time (wall ÷ time factor),
        plus `errors`; keys a client cannot measure are None."""
        scale = 1.0 / time_factor if time_factor > 0 else 1.0
        rec = Recorder(self.n)
        done = self.ok
        rec.arrival = self.sent * scale
        rec.first_token = np.where(done, self.first * scale, np.nan)
        rec.finished = np.where(done, self.end * scale, np.nan)
        rec.prompt = np.array([r.prompt_tokens for r in trace.requests], dtype=float)
        rec.output = np.array([r.output_tokens for r in trace.requests], dtype=float)
        out: dict[str, Any] = dict(rec.summary(slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s))
        out["itl_p99_s"] = weighted_percentile(self.itl_gaps, self.itl_weights, 99) * scale
        for key in UNMEASURED_KEYS:
            out[key] = None
        out["errors"] = self.error_count
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
        assert set(SUMMARY_KEYS) <= set(out)
        return out

    def client_health(self) -> dict[str, float]:
        """How late the client sent (ms of wall time): large values mean the client, not the system
        under test, was the bottleneck."""
        late = self.lateness[~np.isnan(self.lateness)] * 1e3
        if not len(late):
            return {"send_lateness_p99_ms": 0.0, "send_lateness_max_ms": 0.0}
        return {
            "send_lateness_p99_ms": float(np.percentile(late, 99)),
            "send_lateness_max_ms": float(late.max()),
        }


def error_kind(message: str) -> str:
    """An error message with its request ids, rooms and ranks blanked, so equal failures count
    together (`rank=<n> rid='<id>' room=<n> ... timed out after 60.0s in KVPoll.WaitingForInput`)."""
    text = _HEX_ID.sub("<id>", message.replace("\n", " "))
    text = _BIG_NUMBER.sub("<n>", text)
    text = _RANK.sub(r"\1<n>", text)
    return text[:300]


async def _one(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    expect_tokens: int,
    i: int,
    m: Measurements,
    loop: asyncio.AbstractEventLoop,
) -> None:
    t0 = m.t0
    m.sent[i] = loop.time() - t0
    last_t, last_n = math.nan, 0
    n_tokens = 0
    try:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                m.errors[f"HTTP {resp.status}: {error_kind(await resp.text())}"] += 1
                return
            finished = False
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = loop.time() - t0
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    finished = True
                    break
                if payload.startswith(b'{"error"'):
                    msg = json.loads(payload)["error"].get("message", "")
                    m.errors[f"stream error: {error_kind(str(msg))}"] += 1
                    return
                found = _COMPLETION_TOKENS.search(payload)
                n = int(found.group(1)) if found else n_tokens + 1
                if n <= n_tokens:
                    continue
                if math.isnan(m.first[i]):
                    m.first[i] = now
                else:
                    m.itl_gaps.append((now - last_t) / (n - last_n))
                    m.itl_weights.append(n - last_n)
                last_t, last_n, n_tokens = now, n, n
            if not finished:
                m.errors["stream ended without [DONE]"] += 1
                return
            m.end[i] = loop.time() - t0
    except asyncio.CancelledError:
        m.errors["still open at the drain deadline"] += 1
        raise
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        m.errors[f"{type(exc).__name__}: {error_kind(str(exc))}"] += 1
        return
    if n_tokens != expect_tokens:
        m.errors[f"wrong token count (expected {expect_tokens}, got {n_tokens})"] += 1
        return
    m.ok[i] = True


def _note_failure(m: Measurements, i: int, loop: asyncio.AbstractEventLoop, _: asyncio.Task[None]) -> None:
    """When a request that did not complete ended (its error reached the client)."""
    if not m.ok[i]:
        m.failed[i] = loop.time() - m.t0


async def replay(
    url: str | Sequence[str],
    trace: Trace,
    time_factor: float,
    *,
    label: str,
    drain_timeout_s: float,
    progress_every_s: float = 10.0,
    down: set[int] | None = None,
) -> Measurements:
    """Send every request of `trace` to `url` (a `/generate` URL) at `arrival_s × time_factor` wall
    seconds after the start, and wait for all of them (at most `drain_timeout_s` after the last send).
    Several URLs (scheduler replicas) take the requests in turn, as a Kubernetes Service spreads
    them, skipping the indices in `down` (a replica the Service no longer routes to)."""
    urls = [url] if isinstance(url, str) else list(url)
    down = set() if down is None else down
    turn = 0
    loop = asyncio.get_running_loop()
    m = Measurements(len(trace))
    bodies = [
        json.dumps(generate_body(r.rid, r.prompt_tokens, r.output_tokens)).encode() for r in trace.requests
    ]
    conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()

    def report(final: bool = False) -> None:
        done = int((~np.isnan(m.end)).sum())
        errs = sum(m.errors.values())
        sent = len(tasks)
        print(
            f"[{label}] {time.monotonic() - started:5.0f} s: {sent}/{m.n} sent, {done} done, "
            f"{errs} errors, {sent - done - errs} in flight" + (" (final)" if final else ""),
            file=sys.stderr,
            flush=True,
        )

    async def ticker() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            report()

    tick = asyncio.create_task(ticker())
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        m.t0 = loop.time() + 0.2
        for i, r in enumerate(trace.requests):
            due = m.t0 + r.arrival_s * time_factor
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            m.lateness[i] = max(0.0, loop.time() - due)
            live = [k for k in range(len(urls)) if k not in down] or list(range(len(urls)))
            m.target[i] = live[turn % len(live)]
            turn += 1
            task = asyncio.create_task(_one(http, urls[m.target[i]], bodies[i], r.output_tokens, i, m, loop))
            task.add_done_callback(partial(_note_failure, m, i, loop))
            tasks.append(task)
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
    tick.cancel()
    report(final=True)
    return m
