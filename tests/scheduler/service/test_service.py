"""The service end to end, against emulated SGLang 0.5.23 PD engines on loopback.

Default cluster: 2 prefill × DP4 + 1 decode × DP8 (EP32 step times × 0.02).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from sbs.scheduler.core.events import LoadReported
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import cli, openapi, upstream
from sbs.scheduler.service.config_file import build_settings
from sbs.scheduler.service.discovery import ChangeKind, EngineChange
from sbs.settings import scheduling

from tests.scheduler.service.faults import FreezableProxy
from tests.scheduler.service.harness import (
    Cluster,
    Recorder,
    Service,
    engine_entries,
    start_cluster,
    start_service,
)

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi " * 30}], "max_tokens": 5}
LONG = 1500
"""Decode tokens of a request that is still running when a test interferes (≈1 s of decode)."""


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster()
    yield c
    await c.close()


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


async def test_non_stream_requests_complete_through_all_three_endpoints(service: Service) -> None:
    status, body, headers = await service.post("/generate", GEN, headers={"X-Request-Id": "req-1"})
    assert status == 200 and headers["X-Request-Id"] == "req-1"
    assert body["meta_info"]["completion_tokens"] == 6
    assert body["meta_info"]["id"] != "req-1"  # the engines get the service's own rid, never the client's
    status, body, headers = await service.post("/v1/completions", {"prompt": "abc " * 20, "max_tokens": 3})
    assert status == 200 and body["object"] == "text_completion" and headers["X-Request-Id"]
    status, body, _ = await service.post("/v1/chat/completions", CHAT)
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 5
    await service.assert_accounted()
    assert service.total("sbs_requests_completed_total") == 3


async def test_streams_relay_the_decode_side_to_the_end(service: Service) -> None:
    status, text, headers = await service.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    status, text, _ = await service.post("/generate", {**GEN, "stream": True})
    events = sse_events(text)
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["meta_info"]["completion_tokens"] == 6  # cumulative, as SGLang streams
    assert service.dispatcher.metrics.ttft.collect()[0].samples  # observed
    assert service.metric("sbs_ttft_seconds_count") == 2
    # decode timing from SGLang's own counts: only /generate carries them (the chat stream has no usage)
    assert service.metric("sbs_tpot_seconds_count") == 1 and service.metric("sbs_tpot_seconds_sum") > 0
    assert service.metric("sbs_itl_seconds_count") >= 1
    await service.assert_accounted()


@pytest.mark.parametrize("policy", ["sbs", "least_load", "round_robin"])
async def test_ranks_are_pinned_the_way_sglang_honours_them(
    cluster: Cluster, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster, policy=policy)
    try:
        results = await asyncio.gather(
            *(svc.post("/generate", {**GEN, "text": "x" * (40 + 30 * i)}) for i in range(12))
        )
        assert [s for s, _, _ in results] == [200] * 12
        by_rid = {b["meta_info"]["id"]: b["meta_info"] for _, b, _ in results}
        assert len(rec.bodies) == 12
        for p, d in rec.bodies:
            rank = p["routed_dp_rank"]
            assert 0 <= rank < 4 and p["bootstrap_room"] % 4 == rank
            assert p["disagg_prefill_dp_rank"] == d["disagg_prefill_dp_rank"] == rank
            assert p["bootstrap_room"] == d["bootstrap_room"] and p["bootstrap_port"] == d["bootstrap_port"]
            assert p["bootstrap_host"] == "127.0.0.1"
            assert by_rid[d["rid"]]["dp_rank"] == d["routed_dp_rank"]  # the decode honoured its rank
        ports = {p["bootstrap_port"] for p, _ in rec.bodies}
        assert ports <= {e.bootstrap_port for e in cluster.prefill}
    finally:
        await svc.close()


async def test_the_sglang_baseline_leaves_ranks_to_the_engines(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster, policy="sglang")
    try:
        results = await asyncio.gather(*(svc.post("/generate", GEN) for _ in range(4)))
        assert [s for s, _, _ in results] == [200] * 4
        for p, d in rec.bodies:
            assert (
                "routed_dp_rank" not in p and "routed_dp_rank" not in d and "disagg_prefill_dp_rank" not in d
            )
    finally:
        await svc.close()


@pytest.mark.parametrize("policy", scheduling.POLICY_NAMES)
async def test_every_policy_serves_a_burst(cluster: Cluster, policy: str) -> None:
    svc = await start_service(cluster, policy=policy)
    try:
        bodies = [{**GEN, "text": "y" * (20 + 97 * i), "stream": i % 2 == 0} for i in range(16)]
        results = await asyncio.gather(*(svc.post("/generate", b) for b in bodies))
        assert [s for s, _, _ in results] == [200] * 16
        await svc.assert_accounted()
        assert svc.total("sbs_requests_completed_total") == 16
        assert svc.total("sbs_dispatches_total") == 16
        if policy == "sbs":  # inferred step completions keep the staggered releases going
            assert svc.metric("sbs_dispatches_total", reason="staggered") > 0
            assert svc.metric("sbs_core_forced_releases_total") == 0
    finally:
        await svc.close()


async def test_load_polls_reach_the_core_per_rank(
    service: Service, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[LoadReported] = []
    feed = service.dispatcher.feed

    def spy(pool, event):
        if isinstance(event, LoadReported):
            seen.append(event)
        return feed(pool, event)

    monkeypatch.setattr(service.dispatcher, "feed", spy)
    running = [
        asyncio.ensure_future(service.post("/generate", {**GEN, "sampling_params": {"max_new_tokens": LONG}}))
        for _ in range(3)
    ]
    try:
        async with asyncio.timeout(3):
            while not any(
                e.role is Role.DECODE
                and sum(ld.num_running_reqs + ld.num_waiting_reqs for ld in e.loads) == 3
                for e in seen
            ):
                await asyncio.sleep(0.01)
        assert {(e.role, e.instance) for e in seen} >= {
            (Role.PREFILL, 0),
            (Role.PREFILL, 1),
            (Role.DECODE, 0),
        }
        assert all(len(e.loads) == (8 if e.role is Role.DECODE else 4) for e in seen)
        pool = service.dispatcher.pools.by_revision["static"]
        assert sum(pool.core.decode.count) == 3  # reconciled with the snapshot, not double counted
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_engines_show_the_requests_each_engine_holds_and_was_sent(service: Service) -> None:
    long = {**GEN, "sampling_params": {"max_new_tokens": LONG}}
    running = [asyncio.ensure_future(service.post("/generate", long)) for _ in range(3)]
    try:
        async with asyncio.timeout(5):
            jobs = service.dispatcher.jobs
            while len(jobs) < 3 or not all(j.prefilled for j in jobs.values()):
                await asyncio.sleep(0.01)
        engines = service.dispatcher.describe()["engines"]
        held = {e["role"]: 0 for e in engines}
        for e in engines:
            held[e["role"]] += e["in_flight"]
        assert held == {"prefill": 0, "decode": 3}  # prefilled: only the decode engine holds them
        sent = [service.total_where("sbs_engine_dispatches_total", role=r) for r in ("prefill", "decode")]
        assert sent == [3, 3]
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_full_buffer_answers_429_with_retry_after() -> None:
    # One slow prefill (time factor 2): a ~1.8 s step keeps the next request in the SBS buffer long
    # enough for the third to find it full on a busy machine too.
    cluster = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2, time_factor=2.0)
    svc = await start_service(
        cluster, time_factor=2.0, admission={"max_buffered_requests": 1, "retry_after_s": 3}
    )
    try:
        big = {"text": "z" * 32000, "sampling_params": {"max_new_tokens": 1}}
        first = asyncio.ensure_future(svc.post("/generate", big))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(svc.post("/generate", big))
        async with asyncio.timeout(2):
            while svc.metric("sbs_buffered_requests") < 1:
                await asyncio.sleep(0.005)
        status, body, headers = await svc.post("/generate", big)
        assert status == 429 and headers["Retry-After"] == "3"
        assert body["error"]["code"] == "buffer_full" and body["error"]["type"] == "rate_limit_error"
        assert svc.metric("sbs_requests_rejected_total", reason="buffer_full") == 1
        assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
        assert svc.metric("sbs_queue_wait_seconds_count") == 2
        await svc.assert_accounted()
    finally:
        await svc.close()
        await cluster.close()


async def test_outstanding_limit_answers_429(cluster: Cluster) -> None:
    svc = await start_service(cluster, admission={"max_outstanding_requests": 2})
    long = {**GEN, "sampling_params": {"max_new_tokens": LONG}}
    running = [asyncio.ensure_future(svc.post("/generate", long)) for _ in range(2)]
    try:
        async with asyncio.timeout(2):
            while len(svc.dispatcher.jobs) < 2:
                await asyncio.sleep(0.005)
        status, body, headers = await svc.post("/generate", GEN)
        assert status == 429 and body["error"]["code"] == "too_many_outstanding" and "Retry-After" in headers
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await svc.close()


async def test_deadline_gives_an_explicit_error_and_aborts_the_engines(
    service: Service, cluster: Cluster
) -> None:
    long = {**GEN, "sampling_params": {"max_new_tokens": LONG}}
    status, body, headers = await service.post("/generate", long, headers={"X-Request-Timeout": "0.15"})
    assert status == 504 and body["error"]["code"] == "deadline_exceeded" and body["error"]["retryable"]
    assert "Retry-After" in headers
    # streamed: the deadline must fall after the stream started (its first byte comes after the
    # prefill, tens of ms; even a busy machine starts it within 1 s) and before the end (~3 s)
    longer = {**GEN, "sampling_params": {"max_new_tokens": 3 * LONG}, "stream": True}
    status, text, _ = await service.post("/generate", longer, headers={"X-Request-Timeout": "1.0"})
    assert isinstance(text, str), f"the stream did not start within its 1 s deadline: {text}"
    events = sse_events(text)
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    decode = cluster.decode[0].runtime
    async with asyncio.timeout(2):
        while decode.reqs:
            await asyncio.sleep(0.01)
    await service.assert_accounted()
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="deadline") == 2


async def test_client_disconnect_closes_both_upstream_requests(service: Service, cluster: Cluster) -> None:
    body = {**GEN, "stream": True, "sampling_params": {"max_new_tokens": LONG}}
    async with aiohttp.ClientSession() as client:
        resp = await client.post(service.url + "/generate", json=body)
        assert resp.status == 200
        await resp.content.readany()
        resp.close()  # the client goes away mid-stream
    decode = cluster.decode[0].runtime
    async with asyncio.timeout(2):
        while decode.reqs or service.dispatcher.jobs:
            await asyncio.sleep(0.01)
    await service.assert_accounted()
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="client_disconnect") == 1


async def test_prefill_killed_before_prefill_is_redispatched_transparently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prefill-0 is slow (its ~0.5 s step is still running when it dies); prefill-1 is fast.
    cluster = await start_cluster(
        prefill=2, prefill_dp=2, decode=1, decode_dp=2, prefill_time_factors=[1.0, 0.02]
    )
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster)
    try:
        body = {"text": "q" * 16000, "sampling_params": {"max_new_tokens": 4}, "stream": True}
        pending = asyncio.ensure_future(svc.post("/generate", body, headers={"X-Request-Id": "r1"}))
        p0 = cluster.prefill[0]
        async with asyncio.timeout(2):
            while not p0.runtime.reqs:
                await asyncio.sleep(0.002)
        # It dies: it fails what it holds (503, as SGLang shutting down does), then stops serving.
        # (Closing it outright while the decode long-polls its bootstrap server leaks a socket in the
        # emulator's bootstrap server, so the request is let go first.)
        await p0.runtime.close()
        async with asyncio.timeout(2):
            while cluster.decode[0].runtime.reqs.get("r1") is not None:
                await asyncio.sleep(0.002)
        await p0.close()
        status, text, _ = await pending
        assert status == 200 and sse_events(text)[-1] == "[DONE]"
        assert rec.prefill_urls["r1"].startswith(cluster.prefill[0].url)
        assert rec.prefill_urls["r1-1"].startswith(cluster.prefill[1].url)  # sent again, elsewhere
        assert svc.metric("sbs_requests_redispatched_total", role="prefill") == 1
        status, _, _ = await svc.post("/generate", GEN)  # the dead engine is skipped
        assert status == 200
        await svc.assert_accounted()
        assert svc.total("sbs_requests_errored_total") == 0
        async with asyncio.timeout(2):  # its polls fail: suspect until it answers again
            while svc.metric("sbs_suspect_engines", role="prefill") != 1:
                await asyncio.sleep(0.01)
    finally:
        await svc.close()
        await cluster.close()


async def test_decode_killed_after_prefill_is_an_explicit_retryable_error(
    service: Service, cluster: Cluster
) -> None:
    long = {**GEN, "sampling_params": {"max_new_tokens": LONG}}
    pending = asyncio.ensure_future(service.post("/generate", long))
    async with asyncio.timeout(2):
        while not any(j.prefilled for j in service.dispatcher.jobs.values()):
            await asyncio.sleep(0.002)
    await cluster.decode[0].close()
    status, body, headers = await pending
    assert status == 503 and body["error"]["retryable"] and headers["Retry-After"] == "1"
    assert body["error"]["code"] == "engine_failed"
    await service.assert_accounted()
    assert (
        service.metric(
            "sbs_requests_errored_total", endpoint="/generate", reason="engine_failed_after_prefill"
        )
        == 1
    )


async def test_decode_killed_mid_stream_ends_the_stream_with_a_retryable_error(
    service: Service, cluster: Cluster
) -> None:
    body = {**GEN, "stream": True, "sampling_params": {"max_new_tokens": LONG}}
    async with aiohttp.ClientSession() as client:
        resp = await client.post(service.url + "/generate", json=body)
        assert resp.status == 200
        first = await resp.content.readany()
        assert first.startswith(b"data: {")
        await cluster.decode[0].close()
        rest = (first + await resp.read()).decode()
    events = sse_events(rest)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["retryable"] is True
    await service.assert_accounted()
    assert (
        service.metric(
            "sbs_requests_errored_total", endpoint="/generate", reason="engine_failed_after_prefill"
        )
        == 1
    )


async def test_no_usable_engines_is_503_not_accepted(service: Service, cluster: Cluster) -> None:
    for e in cluster.prefill:
        await e.close()
    async with asyncio.timeout(3):
        while service.dispatcher.ready():
            await asyncio.sleep(0.01)
    async with service.client.get(service.url + "/readyz") as r:
        assert r.status == 503
    status, body, headers = await service.post("/generate", GEN)
    assert status == 503 and body["error"]["code"] == "not_ready" and "Retry-After" in headers
    assert service.total("sbs_requests_accepted_total") == 0
    assert service.metric("sbs_requests_rejected_total", reason="not_ready") == 1


async def test_draining_engine_gets_no_new_requests_while_its_own_finish(
    service: Service, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    dispatcher = service.dispatcher
    long = {**GEN, "sampling_params": {"max_new_tokens": 200}}
    first = asyncio.ensure_future(service.post("/generate", long, headers={"X-Request-Id": "before"}))
    async with asyncio.timeout(2):
        while "before" not in rec.prefill_urls:
            await asyncio.sleep(0.002)
    drained = next(
        e for e in dispatcher.registry.engines.values() if rec.prefill_urls["before"].startswith(e.record.url)
    )
    dispatcher.watcher.apply_change(EngineChange(ChangeKind.UPDATE, replace(drained.record, draining=True)))
    results = await asyncio.gather(
        *(service.post("/generate", GEN, headers={"X-Request-Id": f"after-{i}"}) for i in range(6))
    )
    assert [s for s, _, _ in results] == [200] * 6
    assert not any(rec.prefill_urls[f"after-{i}"].startswith(drained.record.url) for i in range(6))
    assert (await first)[0] == 200  # the in-flight request on the draining engine finished
    assert {e.engine: e.state for e in dispatcher.snapshot().engines}[drained.key] == "draining"
    await service.assert_accounted()


async def test_prefill_and_decode_pair_only_within_a_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = await start_cluster(prefill=2, prefill_dp=2, decode=2, decode_dp=2)
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster, revisions=["a", "b"])
    try:
        assert sorted(svc.dispatcher.pools.by_revision) == ["a", "b"]
        results = await asyncio.gather(
            *(svc.post("/generate", GEN, headers={"X-Request-Id": f"r{i}"}) for i in range(10))
        )
        assert [s for s, _, _ in results] == [200] * 10
        revision_of = {e.url: rev for rev, e in zip("ab", cluster.prefill, strict=True)}
        revision_of |= {e.url: rev for rev, e in zip("ab", cluster.decode, strict=True)}
        used = set()
        for rid, purl in rec.prefill_urls.items():
            p_rev = revision_of[purl.rsplit("/", 1)[0]]
            d_rev = revision_of[rec.decode_urls[rid].rsplit("/", 1)[0]]
            assert p_rev == d_rev
            used.add(p_rev)
        assert used == {"a", "b"}  # both revisions serve
    finally:
        await svc.close()
        await cluster.close()


async def test_invalid_requests_are_400_naming_the_field(service: Service) -> None:
    status, body, _ = await service.post(
        "/v1/chat/completions", {"messages": [{"role": "user"}], "max_tokens": -2}
    )
    assert status == 400 and body["error"]["param"] == "max_tokens"
    assert "field 'max_tokens'" in body["error"]["message"]
    status, body, _ = await service.post("/generate", {"sampling_params": {}})
    assert status == 400 and "exactly one of 'text' and 'input_ids'" in body["error"]["message"]
    status, body, _ = await service.post("/generate", GEN, headers={"X-Request-Timeout": "soon"})
    assert status == 400 and body["error"]["param"] == "X-Request-Timeout"
    async with service.client.post(service.url + "/generate", data=b"{not json") as r:
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
    assert service.total("sbs_requests_accepted_total") == 0
    assert service.metric("sbs_requests_rejected_total", reason="invalid_request") == 4


async def test_engine_refusals_are_passed_through(service: Service) -> None:
    # (A max_new_tokens beyond the context is now refused before acceptance: tests/.../test_hostile_input.)
    status, body, _ = await service.post("/generate", {"input_ids": [1, 2], "input_embeds": [[0.5]]})
    assert status == 400 and "Only one of text, input_ids or input_embeds" in body["error"]["message"]
    await service.assert_accounted()
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="upstream_rejected") == 1


METRIC_NAMES = [
    "sbs_requests_accepted_total",
    "sbs_requests_completed_total",
    "sbs_requests_errored_total",
    "sbs_requests_rejected_total",
    "sbs_requests_redispatched_total",
    "sbs_dispatches_total",
    "sbs_ttft_seconds_bucket",
    "sbs_queue_wait_seconds_bucket",
    "sbs_e2e_latency_seconds_bucket",
    "sbs_batch_size_bucket",
    "sbs_dispatch_interval_seconds_bucket",
    "sbs_buffered_requests",
    "sbs_outstanding_requests",
    "sbs_rank_assigned_requests",
    "sbs_rank_assigned_tokens",
    "sbs_rank_imbalance_ratio",
    "sbs_engine_state",
    "sbs_suspect_engines",
    "sbs_core_releases_total",
    "sbs_core_bypass_releases_total",
]


async def test_health_readiness_metrics_and_openapi(service: Service) -> None:
    for _ in range(2):
        assert (await service.post("/generate", {**GEN, "stream": True}))[0] == 200
    async with service.client.get(service.url + "/health") as r:
        assert r.status == 200
    async with service.client.get(service.url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["ready"] is True
    async with service.client.get(service.url + "/metrics") as r:
        text = await r.text()
    for name in METRIC_NAMES:
        assert f"\n{name}" in text, name
    assert 'sbs_rank_assigned_tokens{dp_rank="7",engine="decode-0",role="decode"}' in text
    async with service.client.get(service.url + "/v1/models") as r:
        assert r.status == 200 and (await r.json())["data"]
    async with service.client.get(service.url + "/engines") as r:
        doc = await r.json()
    assert {e["key"]: e["dp_size"] for e in doc["engines"]} == {"decode-0": 8, "prefill-0": 4, "prefill-1": 4}
    async with service.client.get(service.url + "/openapi.json") as r:
        assert await r.json() == json.loads(json.dumps(openapi.document()))


async def test_engines_without_v1_loads_are_read_from_metrics(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_loads(session: object, url: str, engine: str) -> upstream.LoadsReply:
        raise upstream.LoadsUnavailable(engine)

    scraped: list[str] = []
    real = upstream.fetch_metrics_loads

    async def fetch_metrics_loads(session: object, url: str, engine: str) -> upstream.LoadsReply:
        reply = await real(session, url, engine)
        scraped.append(engine)
        return reply

    monkeypatch.setattr(upstream, "fetch_loads", no_loads)
    monkeypatch.setattr(upstream, "fetch_metrics_loads", fetch_metrics_loads)
    svc = await start_service(cluster)
    try:
        async with asyncio.timeout(2):
            while not {"prefill-0", "prefill-1", "decode-0"} <= set(scraped):
                await asyncio.sleep(0.01)
        assert (await svc.post("/generate", GEN))[0] == 200
        assert {e.engine: e.state for e in svc.dispatcher.snapshot().engines} == {
            "prefill-0": "usable",
            "prefill-1": "usable",
            "decode-0": "usable",
        }
    finally:
        await svc.close()


async def test_a_client_that_hangs_up_on_done_has_a_completed_request(cluster: Cluster) -> None:
    """The client closes as soon as it reads `[DONE]`, before the engine's stream has ended: the
    handler is cancelled, but the client has its whole answer, so it is counted completed (issue 13's
    soak counted such requests as `client_disconnect` errors)."""
    proxy = await FreezableProxy(cluster.decode[0].url, hold_end_s=0.5).start()
    entries = engine_entries(cluster)
    svc = await start_service(cluster, engines={**entries, "decode": [{"url": proxy.url}]})
    try:
        async with aiohttp.ClientSession() as client:
            resp = await client.post(svc.url + "/generate", json={**GEN, "stream": True})
            seen = b""
            async with asyncio.timeout(10):
                while not seen.rstrip().endswith(b"data: [DONE]"):
                    chunk = await resp.content.readany()
                    assert chunk, f"the stream ended before [DONE]: {seen!r}"
                    seen += chunk
            resp.close()  # hang up at once, while the decode still holds its stream open
        await svc.assert_accounted()
        assert svc.total("sbs_requests_completed_total") == 1
        assert svc.total("sbs_requests_errored_total") == 0
    finally:
        await svc.close()
        await proxy.close()


def _connections_to(port: int) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:`port` from this network namespace (client ends)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and remote == f"0100007F:{port:04X}":
            count += 1
    return count


async def test_the_engine_pool_shrinks_back_after_a_load_peak_while_polls_go_on(cluster: Cluster) -> None:
    """The soak left ~30 idle connections per engine open for good: the load polls went through the
    requests' pool, and aiohttp reuses its oldest idle connection first, so polls far more frequent
    than the keep-alive timeout kept every connection of the peak alive. Polls have their own pool."""
    svc = await start_service(cluster, engines={"loads_period_s": 0.01, "idle_connection_s": 1.0})
    decode_port = int(cluster.decode[0].url.rsplit(":", 1)[1])
    try:
        results = await asyncio.gather(*(svc.post("/generate", GEN) for _ in range(24)))
        assert all(status == 200 for status, _, _ in results)
        peak = _connections_to(decode_port)
        await asyncio.sleep(3.5)  # > 2 keep-alive periods, while the polls go on every 10 ms
        after = _connections_to(decode_port)
        assert peak >= 8, f"the burst opened only {peak} decode connections: the test proves nothing"
        assert after <= 2, f"{after} of the peak's {peak} decode connections still open"
    finally:
        await svc.close()


async def test_a_non_stream_client_that_gives_up_cancels_upstream(service: Service, cluster: Cluster) -> None:
    body = {**GEN, "sampling_params": {"max_new_tokens": LONG}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as client:
        with pytest.raises(TimeoutError):
            await client.post(service.url + "/generate", json=body)
    decode = cluster.decode[0].runtime
    async with asyncio.timeout(2):
        while decode.reqs or service.dispatcher.jobs:
            await asyncio.sleep(0.01)
    await service.assert_accounted()
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="client_disconnect") == 1


async def test_cli_serve_runs_until_stopped(cluster: Cluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = build_settings(
        {"host": "127.0.0.1", "port": port, "engines": engine_entries(cluster)},
        overrides={"policy": "least_load"},
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(cli.serve(settings, stop=stop))
    try:
        async with aiohttp.ClientSession() as client, asyncio.timeout(5):
            while True:
                try:
                    async with client.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.02)
            async with client.post(f"http://127.0.0.1:{port}/generate", json=GEN) as r:
                assert r.status == 200
    finally:
        stop.set()
        await task
