"""Emulated engines on loopback (free ports, a small time factor) and an HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from sbs.sim.emulator import EngineSettings, RunningEngine, start_engine

Start = Callable[..., Awaitable[RunningEngine]]


def make_settings(**overrides: Any) -> EngineSettings:
    """Two DP ranks costed as ranks of an EP32 group, steps at 1/50 of real time."""
    base: dict[str, Any] = {"port": 0, "bootstrap_port": 0, "dp_size": 2, "ep_size": 32, "time_factor": 0.02}
    return EngineSettings(**{**base, **overrides})


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """`await start(mode="prefill", ...)` starts an engine that is closed after the test."""
    engines: list[RunningEngine] = []

    async def _start(**overrides: Any) -> RunningEngine:
        engine = await start_engine(make_settings(**overrides))
        engines.append(engine)
        return engine

    yield _start
    for engine in reversed(engines):
        await engine.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    """The events of a server-sent-event stream, `[DONE]` kept as the string."""
    events: list[Any] = []
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                payload = text[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
