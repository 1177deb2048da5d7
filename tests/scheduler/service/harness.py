"""In-process emulated SGLang engines and the scheduler service in front of them, on loopback.

`start_cluster(...)` starts prefill and decode engines (`sbs.sim.emulator`) with a small time factor;
`start_service(cluster, ...)` starts the service over them and waits until it is ready. `Service`
offers the client calls and reads the service's own metrics registry (no scrape parsing needed).
The engines keep the shared cost model's DeepSeek-V3 EP32 step times, scaled by the time factor, and
the service's capacity model gets the same scale, so SBS predicts what the engines do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from sbs.scheduler.service import upstream
from sbs.scheduler.service.app import DISPATCHER, make_app
from sbs.scheduler.service.config_file import build_settings
from sbs.scheduler.service.connections import GuardedSite, make_runner
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.sim.emulator import EngineSettings, RunningEngine, start_engine

TIME_FACTOR = 0.02
EP = 32
"""Engines run the step times of EP32 instances whatever their (small) DP size."""


@dataclass
class Cluster:
    prefill: list[RunningEngine]
    decode: list[RunningEngine]
    revisions: list[str] = field(default_factory=list)

    async def close(self) -> None:
        for e in (*self.prefill, *self.decode):
            await e.close()


async def start_cluster(
    *,
    prefill: int = 2,
    prefill_dp: int = 4,
    decode: int = 1,
    decode_dp: int = 8,
    time_factor: float = TIME_FACTOR,
    prefill_time_factors: list[float] | None = None,
    **engine_settings: Any,
) -> Cluster:
    """Emulated engines; `engine_settings` are further `EngineSettings` fields for all of them."""
    engines: list[RunningEngine] = []
    try:
        for i in range(prefill):
            tf = prefill_time_factors[i] if prefill_time_factors else time_factor
            s = EngineSettings(
                mode="prefill",
                dp_size=prefill_dp,
                ep_size=EP,
                port=0,
                bootstrap_port=0,
                time_factor=tf,
                **engine_settings,
            )
            engines.append(await start_engine(s))
        for _ in range(decode):
            s = EngineSettings(
                mode="decode",
                dp_size=decode_dp,
                ep_size=EP,
                port=0,
                time_factor=time_factor,
                **engine_settings,
            )
            engines.append(await start_engine(s))
    except BaseException:
        for e in engines:
            await e.close()
        raise
    return Cluster(engines[:prefill], engines[prefill:])


def engine_entries(cluster: Cluster, revisions: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Static config entries; DP sizes are left to `/server_info`."""

    def rev(i: int) -> dict[str, str]:
        return {"revision": revisions[i]} if revisions else {}

    return {
        "prefill": [
            {"url": e.url, "bootstrap_port": e.bootstrap_port, **rev(i)}
            for i, e in enumerate(cluster.prefill)
        ],
        "decode": [{"url": e.url, **rev(i)} for i, e in enumerate(cluster.decode)],
    }


@dataclass
class Service:
    url: str
    dispatcher: Dispatcher
    runner: web.AppRunner
    client: aiohttp.ClientSession

    async def close(self) -> None:
        await self.client.close()
        await self.runner.cleanup()

    async def post(
        self, path: str, body: Any, *, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        """POST and read the whole answer: (status, JSON or text, headers)."""
        async with self.client.post(self.url + path, json=body, headers=headers) as r:
            text = await r.text()
            try:
                data: Any = await r.json(content_type=None) if r.content_type == "application/json" else text
            except ValueError:
                data = text
            return r.status, data, r.headers

    def metric(self, name: str, **labels: str) -> float:
        return self.dispatcher.metrics.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str) -> float:
        """Sum of all samples of `name` over every label set."""
        return self.total_where(name)

    def total_where(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        out = 0.0
        for family in self.dispatcher.metrics.registry.collect():
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    out += s.value
        return out

    async def settled(self, timeout_s: float = 5.0) -> None:
        """Wait until no request is outstanding."""
        async with asyncio.timeout(timeout_s):
            while self.dispatcher.jobs:
                await asyncio.sleep(0.005)

    async def assert_accounted(self) -> None:
        """No accepted request is lost: accepted == completed + errored once nothing is outstanding."""
        await self.settled()
        accepted = self.total("sbs_requests_accepted_total")
        done = self.total("sbs_requests_completed_total") + self.total("sbs_requests_errored_total")
        assert accepted == done, f"accepted {accepted} != completed + errored {done}"


async def start_service(
    cluster: Cluster,
    *,
    policy: str = "sbs",
    revisions: list[str] | None = None,
    time_factor: float = TIME_FACTOR,
    ready_timeout_s: float = 5.0,
    port: int = 0,
    **overrides: Any,
) -> Service:
    """The service over `cluster`, ready (a prefill and a decode of one revision usable)."""
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "scheduler": {"policy": {"type": policy}},
        "engines": {**engine_entries(cluster, revisions), "loads_period_s": 0.05, "resolve_retry_s": 0.05},
        "capacity": {
            "fixed_s": 0.0146 * time_factor,
            "per_token_s": 1.08e-4 * time_factor,
            "per_pair_s": 4.57e-9 * time_factor,
        },
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    app = make_app(build_settings(data))
    runner = make_runner(app)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", port)
    await site.start()
    port = runner.addresses[0][1]
    svc = Service(f"http://127.0.0.1:{port}", app[DISPATCHER], runner, aiohttp.ClientSession())
    try:
        async with asyncio.timeout(ready_timeout_s):
            while not svc.dispatcher.ready():
                await asyncio.sleep(0.01)
    except BaseException:
        await svc.close()
        raise
    return svc


async def raw_http(url: str, request: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes to the service at `url` and read until it closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            return await reader.read()
    finally:
        writer.close()


class Recorder:
    """Records the PD pair the service sends (wraps `upstream.pd_payloads` and the two calls).
    URLs are keyed by the client's request id (`<id>-<n>` for the n-th re-dispatch); `engine_rids`
    maps the engines' rids back to it."""

    def __init__(self, monkeypatch: Any) -> None:
        self.bodies: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.prefill_urls: dict[str, str] = {}
        self.decode_urls: dict[str, str] = {}
        self.engine_rids: dict[str, str] = {}
        real_payloads, real_prefill, real_decode = (
            upstream.pd_payloads,
            upstream.call_prefill,
            upstream.open_decode,
        )
        real_accept = Dispatcher.accept

        def accept(dispatcher: Dispatcher, *args: Any, **kwargs: Any) -> Any:
            job = real_accept(dispatcher, *args, **kwargs)
            self.engine_rids[job.engine_rid] = job.request_id
            return job

        def pd_payloads(*args: Any, **kwargs: Any) -> Any:
            pair = real_payloads(*args, **kwargs)
            self.bodies.append((json.loads(pair[0]), json.loads(pair[1])))
            return pair

        def client_key(body: bytes) -> str:
            rid, _, attempt = json.loads(body)["rid"].partition("-")
            return self.engine_rids.get(rid, rid) + (f"-{attempt}" if attempt else "")

        async def call_prefill(session: Any, url: str, body: bytes, engine: str) -> Any:
            self.prefill_urls[client_key(body)] = url
            return await real_prefill(session, url, body, engine)

        async def open_decode(session: Any, url: str, body: bytes, engine: str) -> Any:
            self.decode_urls[client_key(body)] = url
            return await real_decode(session, url, body, engine)

        monkeypatch.setattr(Dispatcher, "accept", accept)
        monkeypatch.setattr(upstream, "pd_payloads", pd_payloads)
        monkeypatch.setattr(upstream, "call_prefill", call_prefill)
        monkeypatch.setattr(upstream, "open_decode", open_decode)
