"""Hung and broken engines (issue 13, "Already found" 2 and 4): a SIGSTOP-like engine ends the requests
in flight on it within a bounded time, and a malformed load reply never kills an engine's watcher."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sbs.scheduler.service.engine_watch import EngineWatcher

from tests.scheduler.service.faults import FakeEngine, FreezableProxy
from tests.scheduler.service.harness import Cluster, Recorder, Service, start_cluster, start_service

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}}
LONG = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 3000}}
FAST = {
    "loads_period_s": 0.05,
    "poll_timeout_s": 0.2,
    "fail_threshold": 2,
    "stale_after_s": 0.4,
    "hung_after_s": 0.8,
    "resolve_retry_s": 0.05,
}
"""Hung after 0.8 s without a good poll (10 s by default)."""
BOUND_S = 8.0
"""How long a test waits for a hung engine's requests to end (the deadline is 600 s)."""


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=2, prefill_dp=2, decode=1, decode_dp=2)
    yield c
    await c.close()


def prefill_entries(cluster: Cluster, urls: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"url": urls[i] if urls else e.url, "bootstrap_port": e.bootstrap_port}
        for i, e in enumerate(cluster.prefill)
    ]


async def behind_proxy(cluster: Cluster, **engines: Any) -> tuple[Service, FreezableProxy]:
    """The service with the decode engine reached through a freezable proxy."""
    proxy = await FreezableProxy(cluster.decode[0].url).start()
    svc = await start_service(
        cluster,
        engines={**FAST, "decode": [{"url": proxy.url}], "prefill": prefill_entries(cluster), **engines},
    )
    return svc, proxy


async def test_a_hung_decode_ends_its_stream_with_a_retryable_error(cluster: Cluster) -> None:
    svc, proxy = await behind_proxy(cluster)
    try:
        async with aiohttp.ClientSession() as client:
            resp = await client.post(svc.url + "/generate", json={**LONG, "stream": True})
            assert resp.status == 200
            first = await resp.content.readany()
            proxy.freeze()  # SIGSTOP: the stream goes silent, the polls time out
            async with asyncio.timeout(BOUND_S):
                rest = (first + await resp.read()).decode()
        events = sse_events(rest)
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["retryable"] is True and "hung" in err["message"]
        await svc.assert_accounted()
        assert (
            svc.metric(
                "sbs_requests_errored_total", endpoint="/generate", reason="engine_failed_after_prefill"
            )
            == 1
        )
    finally:
        await svc.close()
        await proxy.close()


async def test_a_hung_decode_ends_a_non_stream_request_with_503(cluster: Cluster) -> None:
    svc, proxy = await behind_proxy(cluster)
    try:
        pending = asyncio.ensure_future(svc.post("/generate", LONG))
        async with asyncio.timeout(BOUND_S):
            while not any(j.prefilled for j in svc.dispatcher.jobs.values()):
                await asyncio.sleep(0.005)
        proxy.freeze()
        async with asyncio.timeout(BOUND_S):
            status, body, headers = await pending
        assert status == 503 and body["error"]["retryable"] and "Retry-After" in headers
        assert not svc.dispatcher.ready()  # and new requests are refused at once, not queued
        status, body, _ = await svc.post("/generate", GEN)
        assert status == 503 and body["error"]["code"] == "not_ready"
        proxy.thaw()  # SIGCONT: it serves again
        async with asyncio.timeout(BOUND_S):
            while not svc.dispatcher.ready():
                await asyncio.sleep(0.01)
        assert (await svc.post("/generate", GEN))[0] == 200
        await svc.assert_accounted()
    finally:
        await svc.close()
        await proxy.close()


async def test_a_hung_prefill_before_the_prefill_completed_is_redispatched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slow prefills (time factor 1: this prompt takes seconds), so the first one hangs mid-prefill.
    cluster = await start_cluster(
        prefill=2, prefill_dp=2, decode=1, decode_dp=2, prefill_time_factors=[1.0, 1.0]
    )
    proxies = [await FreezableProxy(e.url).start() for e in cluster.prefill]
    rec = Recorder(monkeypatch)
    svc = await start_service(
        cluster,
        engines={**FAST, "hung_after_s": 0.5, "prefill": prefill_entries(cluster, [p.url for p in proxies])},
    )
    try:
        body = {"text": "q" * 60_000, "sampling_params": {"max_new_tokens": 4}, "stream": True}
        pending = asyncio.ensure_future(svc.post("/generate", body, headers={"X-Request-Id": "r1"}))
        async with asyncio.timeout(BOUND_S):
            while "r1" not in rec.prefill_urls:
                await asyncio.sleep(0.002)
        frozen = next(p for p in proxies if rec.prefill_urls["r1"].startswith(p.url))
        frozen.freeze()
        async with asyncio.timeout(3 * BOUND_S):
            status, text, _ = await pending
        assert status == 200 and sse_events(text)[-1] == "[DONE]"
        assert not rec.prefill_urls["r1-1"].startswith(frozen.url)  # sent again, elsewhere
        assert svc.metric("sbs_requests_redispatched_total", role="prefill") == 1
        await svc.assert_accounted()
        assert svc.total("sbs_requests_errored_total") == 0
    finally:
        await svc.close()
        for p in proxies:
            await p.close()
        await cluster.close()


async def test_a_silent_stream_ends_after_the_idle_timeout(cluster: Cluster) -> None:
    # Hang detection off (100 s): only the stream's own idle timeout can end it.
    svc, proxy = await behind_proxy(cluster, hung_after_s=100.0, stream_idle_timeout_s=0.5)
    try:
        async with aiohttp.ClientSession() as client:
            resp = await client.post(svc.url + "/generate", json={**LONG, "stream": True})
            first = await resp.content.readany()
            proxy.freeze()
            async with asyncio.timeout(BOUND_S):
                rest = (first + await resp.read()).decode()
        err = json.loads(sse_events(rest)[-2])["error"]
        assert err["retryable"] and "sent nothing for 0.5 s" in err["message"]
        await svc.assert_accounted()
    finally:
        await svc.close()
        await proxy.close()


async def test_models_does_not_wait_on_a_hung_decode(cluster: Cluster) -> None:
    svc, proxy = await behind_proxy(cluster, hung_after_s=100.0, stale_after_s=100.0, fail_threshold=100)
    try:
        proxy.freeze()  # still "usable" (the thresholds are far): /v1/models must time out on its own
        async with asyncio.timeout(BOUND_S):
            async with svc.client.get(svc.url + "/v1/models") as r:
                assert r.status == 503 and "Retry-After" in r.headers
    finally:
        await svc.close()
        await proxy.close()


MALFORMED: list[Any] = [
    b"not json",
    b'{"loads": [' * 5000,
    {"loads": "many"},
    {"loads": [{"dp_rank": 0, "num_running_reqs": [1]}]},
    {"loads": [{"dp_rank": 0, "num_used_tokens": "lots"}]},
    {"loads": [{"dp_rank": 0, "num_used_tokens": -5}]},
    {"loads": [{"dp_rank": True}]},
    {"loads": [{"dp_rank": 0, "num_waiting_reqs": 1e300}]},
    b'{"loads": [{"dp_rank": 0, "num_running_reqs": 1e400}]}',
]


async def test_malformed_load_replies_are_failed_polls_and_never_kill_the_watcher(cluster: Cluster) -> None:
    good = {"loads": [{"dp_rank": r, "num_running_reqs": 0} for r in range(2)]}
    reply: list[Any] = [good]
    fake = await FakeEngine(
        {"/v1/loads": lambda: reply[0], "/server_info": lambda: {"context_length": 4096}}
    ).start()
    svc = await start_service(
        cluster, engines={**FAST, "hung_after_s": 100.0, "decode": [{"url": fake.url, "dp_size": 2}]}
    )
    try:
        engine = svc.dispatcher.registry.engines["decode-0"]
        for bad in MALFORMED:
            reply[0] = bad
            before = svc.metric("sbs_engine_poll_failures_total", engine="decode-0")
            async with asyncio.timeout(BOUND_S):
                while svc.metric("sbs_engine_poll_failures_total", engine="decode-0") < before + 2:
                    await asyncio.sleep(0.01)
            assert not engine.usable, bad  # suspect: polls keep failing
            reply[0] = good
            async with asyncio.timeout(BOUND_S):
                while not engine.usable:
                    await asyncio.sleep(0.01)
        assert engine.poller is not None and not engine.poller.done()
        assert svc.metric("sbs_engine_watcher_restarts_total") == 0
    finally:
        await svc.close()
        await fake.close()


async def test_a_watcher_that_dies_is_logged_and_started_again(
    service_cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = EngineWatcher._check_silence
    broken = {"decode-0"}

    def check_silence(self: EngineWatcher, engine: Any) -> None:
        if engine.key in broken:
            broken.discard(engine.key)
            raise RuntimeError("a bug")
        real(self, engine)

    svc = await start_service(service_cluster, engines={**FAST, "hung_after_s": 100.0})
    try:
        monkeypatch.setattr(EngineWatcher, "_check_silence", check_silence)
        async with asyncio.timeout(BOUND_S):
            while svc.metric("sbs_engine_watcher_restarts_total") < 1:
                await asyncio.sleep(0.01)
        assert "decode-0: its watcher died" in caplog.text
        engine = svc.dispatcher.registry.engines["decode-0"]
        seen = engine.last_ok_s
        async with asyncio.timeout(BOUND_S):  # polling again
            while engine.last_ok_s == seen:
                await asyncio.sleep(0.01)
        assert (await svc.post("/generate", GEN))[0] == 200
    finally:
        await svc.close()


@pytest.fixture
async def service_cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2)
    yield c
    await c.close()
