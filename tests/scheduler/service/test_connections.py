"""Connection hygiene (issue 13, "Already found" 5 and "Protocol abuse"): slow heads and bodies are
timed out, idle keep-alive connections closed, and idle sockets never starve real requests."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator

import pytest

from tests.scheduler.service.harness import Cluster, Service, start_cluster, start_service

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}}
QUICK = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "keepalive_timeout_s": 0.5}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2)
    yield c
    await c.close()


async def connect(svc: Service) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = svc.url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (which must happen in time)."""
    async with asyncio.timeout(timeout_s):
        return await reader.read()


async def test_a_slow_head_is_timed_out_with_408(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits=QUICK)
    try:
        reader, writer = await connect(svc)
        writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # slowloris: a header byte every 0.1 s, never the end of the head
            while True:
                writer.write(b"X")
                await asyncio.sleep(0.1)

        dripping = asyncio.ensure_future(trickle())
        try:
            answer = await closed_within(reader, 5)
        finally:
            dripping.cancel()
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer
        reader, writer = await connect(svc)  # a connection that never says anything is closed too
        assert await closed_within(reader, 5) == b""
        writer.close()
        assert svc.total("sbs_requests_accepted_total") == 0
    finally:
        await svc.close()


async def test_a_slow_body_is_timed_out_with_408(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits=QUICK)
    try:
        reader, writer = await connect(svc)
        writer.write(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"text": "'
        )
        answer = await closed_within(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"] == (
            "the request body did not arrive within 0.5 s"
        )
        assert svc.total("sbs_requests_accepted_total") == 0
        assert svc.metric("sbs_requests_rejected_total", reason="invalid_request") == 1
    finally:
        await svc.close()


async def test_an_idle_keep_alive_connection_is_closed(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits=QUICK)
    try:
        reader, writer = await connect(svc)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        assert await closed_within(reader, 5) == b""  # nothing more, then closed after 0.5 s idle
        writer.close()
        async with asyncio.timeout(5):
            while svc.metric("sbs_client_connections") != 0:
                await asyncio.sleep(0.01)
    finally:
        await svc.close()


def _fd_headroom(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_2000_idle_connections_do_not_starve_real_requests(cluster: Cluster) -> None:
    _fd_headroom(8192)  # both ends of every socket live in this process
    svc = await start_service(cluster)
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(20):
            pairs = await asyncio.gather(*(connect(svc) for _ in range(100)))
            idle += [w for _, w in pairs]
        async with asyncio.timeout(10):
            while svc.metric("sbs_client_connections") < 2000:
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        status, _, _ = await svc.post("/generate", GEN)
        assert status == 200 and loop.time() - start < 5.0
    finally:
        for w in idle:
            w.close()
        await svc.close()


async def test_at_the_cap_an_idle_connection_makes_room(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits={"max_connections": 20})
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        idle = [await connect(svc) for _ in range(20)]
        status, _, _ = await svc.post("/generate", GEN)  # a 21st connection: the longest-idle one goes
        assert status == 200
        assert await closed_within(idle[0][0], 5) == b""
        assert svc.metric("sbs_client_connections") <= 20
    finally:
        for _, w in idle:
            w.close()
        await svc.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits={"max_connections": 16})
    long = {**GEN, "stream": True, "sampling_params": {"max_new_tokens": 1500}}
    busy = [asyncio.ensure_future(svc.post("/generate", long)) for _ in range(16)]
    try:
        async with asyncio.timeout(10):
            while len(svc.dispatcher.jobs) < 16:
                await asyncio.sleep(0.01)
        reader, writer = await connect(svc)
        answer = await closed_within(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert svc.metric("sbs_requests_rejected_total", reason="too_many_connections") == 1
        assert [s for s, _, _ in await asyncio.gather(*busy)] == [200] * 16
    finally:
        for t in busy:
            t.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        await svc.close()
