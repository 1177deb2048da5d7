"""The chaos load: a trace replay through the scheduler's Service, every request classified.

Each request is `sbs.bench.client`'s streamed `/generate` (same prompts, `max_new_tokens` with
`ignore_eos`), sent at `arrival × time_factor` wall seconds to a ready scheduler endpoint (chosen at
send time, as a Service would route). Its outcome:

- `completed`: 200, `[DONE]`, exactly the tokens asked for;
- `retryable`: the scheduler ended it with an explicit retryable error after accepting it (a
  `retryable: true` error body or SSE `error` event, a 503/504 with `Retry-After`), or its
  connection was cut while the scheduler process serving it had just been killed (in flight on
  the failed component);
- `rejected`: refused before admission (429/503 `buffer_full`, `too_many_outstanding`,
  `not_ready`, `too_many_connections`, or no endpoint / connection refused): never accepted;
- `lost`: accepted, then anything else (a non-retryable error, a stream cut without an error, a
  wrong token count);
- `hung`: still open at the drain deadline (a minute past its `X-Request-Timeout` deadline).

`accepted` = completed + retryable + lost + hung, so nothing is lost exactly when lost = hung = 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import multiprocessing
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import aiohttp
import numpy as np
from sbs.bench.client import error_kind, generate_body
from sbs.sim.trace import Trace

_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')
REQUEST_TIMEOUT_S = 240.0
"""Each request's deadline (`X-Request-Timeout`): a 1,000-token answer at 4× slowed decode takes ~90 s."""
REJECT_CODES = frozenset({"buffer_full", "too_many_outstanding", "not_ready", "too_many_connections"})
_HEADERS = {"Content-Type": "application/json", "X-Request-Timeout": f"{REQUEST_TIMEOUT_S:g}"}
KINDS = ("completed", "retryable", "rejected", "lost", "hung")


@dataclasses.dataclass
class Outcome:
    """One request: wall times (monotonic), its class and why."""

    sent: float
    kind: str = "hung"
    detail: str = ""
    first: float = math.nan
    end: float = math.nan
    url: str = ""


@dataclasses.dataclass
class Deaths:
    """Scheduler endpoints killed by the scenario, with when: a cut there is a retryable error."""

    at: dict[str, float] = dataclasses.field(default_factory=dict)
    counted: dict[str, int] = dataclasses.field(default_factory=dict)
    """The endpoint's own in-flight count (`outstanding`), read just before the kill."""
    closed: dict[str, float] = dataclasses.field(default_factory=dict)
    """When the endpoint was first seen refusing connections after its kill: until its listening
    socket closes, the kernel still accepts connections for the dying process."""
    window_s: float = 5.0

    def explains(self, url: str, when: float) -> bool:
        t = self.at.get(url)
        return t is not None and t - 1.0 <= when <= t + self.window_s

    def in_flight(self, outcomes: Sequence[Outcome]) -> int:
        """Requests on the killed endpoints at their kills: per endpoint, the larger of its own count
        and the client's (sent before its socket closed, not ended before the kill). The endpoint's
        count misses requests still on the wire or sent after it was read; the client's is exact for
        the client."""
        return sum(max(self.counted.get(url, 0),
                       sum(1 for o in outcomes
                           if o.url == url and o.sent <= self.closed.get(url, t) and not o.end < t))
                   for url, t in self.at.items())  # fmt: skip

    def attribute(self, outcomes: Sequence[Outcome]) -> None:
        """Cut connections: retryable where the scheduler serving them had just been killed, else lost."""
        for o in outcomes:
            if o.kind == "cut":
                killed = self.explains(o.url, o.end)
                o.kind = "retryable" if killed else "lost"
                o.detail = "cut (scheduler killed)" if killed else o.detail


def _classify_error(status: int, text: str) -> tuple[str, str]:
    try:
        err = json.loads(text).get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    code = err.get("code") if isinstance(err, dict) else None
    if code in REJECT_CODES or (status == 503 and "too many connections" in text):
        return "rejected", f"HTTP {status} {code or text[:40]}"
    if isinstance(err, dict) and err.get("retryable"):
        return "retryable", f"HTTP {status} {code}"
    return "lost", f"HTTP {status}: {error_kind(text)}"


async def _one(http: aiohttp.ClientSession, url: str, body: bytes, expect: int, out: Outcome) -> None:
    n_tokens = 0
    out.url = url
    try:
        async with http.post(f"{url}/generate", data=body, headers=_HEADERS) as r:
            if r.status != 200:
                out.kind, out.detail = _classify_error(r.status, await r.text())
                out.end = time.monotonic()
                return
            async for line in r.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                if payload.startswith(b'{"error"'):
                    kind, detail = _classify_error(200, payload.decode(errors="replace"))
                    out.kind = "lost" if kind == "rejected" else kind  # accepted already
                    out.detail = detail.replace("HTTP 200", "SSE error", 1)
                    out.end = time.monotonic()
                    return
                found = _COMPLETION_TOKENS.search(payload)
                n_tokens = int(found.group(1)) if found else n_tokens + 1
                if math.isnan(out.first):
                    out.first = time.monotonic()
            else:
                raise aiohttp.ServerDisconnectedError("stream ended without [DONE]")
    except aiohttp.ClientConnectorError as exc:
        out.kind, out.detail, out.end = "rejected", f"connect: {type(exc).__name__}", time.monotonic()
        return
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        out.kind, out.detail, out.end = "cut", f"cut ({type(exc).__name__})", time.monotonic()
        return
    except Exception as exc:  # the client's own failure (e.g. a line over aiohttp's limit): say which
        detail = f"client error {type(exc).__name__}: {exc}"[:120]
        out.kind, out.detail, out.end = "lost", detail, time.monotonic()
        return
    out.end = time.monotonic()
    if n_tokens != expect:
        out.kind, out.detail = "lost", f"wrong token count ({n_tokens} of {expect})"
    else:
        out.kind, out.detail = "completed", ""


async def replay(
    trace: Trace,
    time_factor: float,
    endpoints: Callable[[], Sequence[str]],
    *,
    drain_s: float,
    seed: int = 0,
) -> list[Outcome]:
    """Send every request of `trace` at its arrival × `time_factor` (wall), to an endpoint that
    `endpoints()` (cheap: a cached list) gives at send time; wait at most `drain_s` after the last send."""
    rng = random.Random(seed)
    outcomes = [Outcome(math.nan) for _ in trace.requests]
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as http:
        t0 = time.monotonic() + 0.2
        for i, r in enumerate(trace.requests):
            delay = t0 + r.arrival_s * time_factor - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out = outcomes[i]
            out.sent = time.monotonic()
            urls = list(endpoints())
            if not urls:
                out.kind, out.detail, out.end = "rejected", "no ready scheduler endpoint", out.sent
                continue
            body = json.dumps(generate_body(r.rid, r.prompt_tokens, r.output_tokens)).encode()
            tasks.append(asyncio.create_task(_one(http, rng.choice(urls), body, r.output_tokens, out)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    for out in outcomes:
        if out.kind == "hung":
            out.detail = out.detail or f"open {drain_s:g} s after the last send"
    return outcomes


class Refreshing:
    """A list kept fresh by a thread calling `fetch()` every `period_s` (a Service's endpoints); on
    an error (the API down) the last list stays."""

    def __init__(self, fetch: Callable[[], list[str]], period_s: float = 0.5) -> None:
        self.fetch, self.period_s = fetch, period_s
        self.urls: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-endpoints", daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.urls = self.fetch()
            if self._stop.wait(self.period_s):
                return

    def __call__(self) -> list[str]:
        return self.urls

    def __enter__(self) -> Refreshing:
        with contextlib.suppress(Exception):
            self.urls = self.fetch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _child(trace: Trace, time_factor: float, kubeconfig: str, namespace: str, selector: str, port: int,
           drain_s: float) -> list[Outcome]:  # fmt: skip
    from sbs.bench.chaos.cluster import ready_urls
    from sbs.kube.blocking import Kube

    kube = Kube.from_kubeconfig(kubeconfig)
    with Refreshing(lambda: ready_urls(kube, namespace, selector, port)) as endpoints:
        return asyncio.run(replay(trace, time_factor, endpoints, drain_s=drain_s))


def replay_in_child(trace: Trace, time_factor: float, *, kubeconfig: str, namespace: str, selector: str,
                    port: int, drain_s: float) -> list[Outcome]:  # fmt: skip
    """`replay` in a process of its own (the harness's threads run the node agent and its probes: a
    client sharing their interpreter would delay both), routing to the ready pods of `selector`."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_child, trace, time_factor, kubeconfig, namespace, selector, port, drain_s)
        return future.result()


@dataclasses.dataclass(frozen=True)
class Tally:
    accepted: int
    completed: int
    retryable: int
    rejected: int
    lost: int
    hung: int
    details: dict[str, int]

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Tally:
        kinds = Counter(o.kind for o in outcomes)
        details = Counter(f"{o.kind}: {o.detail}" for o in outcomes if o.kind != "completed")
        accepted = kinds["completed"] + kinds["retryable"] + kinds["lost"] + kinds["hung"]
        return cls(accepted, *(kinds[k] for k in KINDS), details=dict(details.most_common(8)))


def ttft_p90(outcomes: Sequence[Outcome], start: float, end: float, time_factor: float) -> float:
    """TTFT p90 (engine seconds: wall ÷ time factor) of the completed requests sent in [start, end)."""
    ttfts = [o.first - o.sent for o in outcomes if o.kind == "completed" and start <= o.sent < end]
    return float(np.percentile(ttfts, 90)) / time_factor if ttfts else math.nan
