"""The lean engine client (`engine_http`): framing, keep-alive, errors and timeouts against scripted
raw-socket servers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sbs.e2e.pki import make_pki
from sbs.scheduler.service.engine_http import EngineClient, EngineConnectionError, target_of

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Each connection runs `script`; records the requests' raw heads and bodies and the
    connections made."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self._scheme = "https" if tls else "http"
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"{self._scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await self.script(reader, writer)
        with contextlib.suppress(OSError):
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return head, body

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def on_both_loops(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on asyncio's loop and on uvloop (the service's default: its transports
    differ in details), with a fresh `client` when the test takes one."""
    sig = inspect.signature(fn)
    wants_client = "client" in sig.parameters

    async def body(kwargs: dict[str, Any]) -> None:
        client = EngineClient(connect_timeout_s=2.0, idle_s=30.0)
        try:
            async with asyncio.timeout(20):
                await (fn(client=client, **kwargs) if wants_client else fn(**kwargs))
        finally:
            await client.close()
            while _SERVERS:  # a failed test's too, so that the loop can close
                await _SERVERS.pop().close()

    def test(loop: str, **kwargs: Any) -> None:
        if loop == "uvloop":
            pytest.importorskip("uvloop").run(body(kwargs))
        else:
            asyncio.run(body(kwargs))

    params = [p for name, p in sig.parameters.items() if name != "client"]
    loop_param = inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    test.__signature__ = sig.replace(parameters=[loop_param, *params])  # type: ignore[attr-defined]
    test.__name__, test.__doc__ = fn.__name__, fn.__doc__
    test.pytestmark = getattr(fn, "pytestmark", [])  # type: ignore[attr-defined]
    return pytest.mark.parametrize("loop", ["asyncio", "uvloop"])(test)


def answers(*responses: bytes, then_close: bool = False) -> Callable[[RawServer], Script]:
    """A script answering successive requests on one connection with `responses`."""

    def make(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for r in responses:
                await server.read_request(reader)
                writer.write(r)
                await writer.drain()
            if not then_close:
                await reader.read()  # hold the connection open until the client closes it

        return script

    return make


_SERVERS: list[RawServer] = []
"""The running test's servers."""


async def serve(make: Callable[[RawServer], Script], tls: ssl.SSLContext | None = None) -> RawServer:
    server = RawServer(lambda r, w: asyncio.sleep(0))
    server.script = make(server)
    _SERVERS.append(server)
    return await server.start(tls)


@on_both_loops
async def test_content_length_answers_reuse_one_keep_alive_connection(client: EngineClient) -> None:
    ok = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b'Content-Length: 12\r\n\r\n{"ok": true}'
    )
    server = await serve(answers(ok, ok))
    client.headers["Authorization"] = "Bearer k"
    for _ in range(2):
        resp = await client.post(server.url + "/generate", b'{"a": 1}')
        assert (resp.status, resp.content_type) == (200, "application/json")
        assert await resp.read() == b'{"ok": true}'
        assert resp.at_eof()
        resp.close()
    assert server.connections == 1 and client.open_connections() == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /generate HTTP/1.1\r\n") and body == b'{"a": 1}'
    assert b"\r\nContent-Type: application/json\r\n" in head and b"\r\nAuthorization: Bearer k\r\n" in head
    assert b"\r\nHost: 127.0.0.1:" in head
    await server.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'e\r\ndata: {"a":1}\n\r\n'
    b"6;ext=1\r\ndata: \r\n"
    b"10\r\n[DONE]\n\n12345678\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


@on_both_loops
@pytest.mark.parametrize("step", [1, 2, 7, len(CHUNKED)])
async def test_chunked_answer_split_anywhere(client: EngineClient, step: int) -> None:
    def make(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            for i in range(0, len(CHUNKED), step):
                writer.write(CHUNKED[i : i + step])
                await writer.drain()
                await asyncio.sleep(0)
            await reader.read()

        return script

    server = await serve(make)
    resp = await client.post(server.url + "/generate", b"{}")
    assert resp.content_type == "text/event-stream"
    assert await resp.read() == b'data: {"a":1}\ndata: [DONE]\n\n12345678'
    resp.close()
    assert client.idle_connections() == 1  # the answer ended cleanly: the connection is kept
    await server.close()


@on_both_loops
async def test_an_answer_without_length_ends_with_the_connection(client: EngineClient) -> None:
    server = await serve(answers(b"HTTP/1.1 200 OK\r\n\r\nall of it", then_close=True))
    resp = await client.post(server.url + "/x", b"{}")
    assert await resp.read() == b"all of it"
    assert resp.content_type == "application/octet-stream"
    await asyncio.sleep(0.01)
    assert client.open_connections() == 0
    await server.close()


@on_both_loops
async def test_connection_close_and_no_body_statuses(client: EngineClient) -> None:
    closing = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy"
    server = await serve(answers(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", closing))
    resp = await client.post(server.url + "/x", b"{}")
    assert resp.status == 204 and await resp.read() == b""
    resp = await client.post(server.url + "/x", b"{}")
    assert resp.status == 503 and await resp.read() == b"busy"
    await asyncio.sleep(0.01)
    assert client.open_connections() == 0 and server.connections == 1
    await server.close()


@on_both_loops
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # closed mid-chunk
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",  # no CRLF after the data
    ],
)
async def test_a_broken_body_raises(client: EngineClient, answer: bytes) -> None:
    server = await serve(answers(answer, then_close=True))
    resp = await client.post(server.url + "/x", b"{}")
    with pytest.raises(EngineConnectionError):
        await resp.read()
    resp.close()
    await server.close()


@on_both_loops
@pytest.mark.parametrize(
    "answer", [b"", b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 200"]
)
async def test_no_valid_head_raises_from_post(client: EngineClient, answer: bytes) -> None:
    server = await serve(answers(answer, then_close=True))
    with pytest.raises(EngineConnectionError):
        await client.post(server.url + "/x", b"{}")
    await server.close()


@on_both_loops
async def test_refused_connection_is_an_os_error(client: EngineClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError):
            await client.post(f"http://127.0.0.1:{port}/x", b"{}")


@on_both_loops
async def test_read_timeout_and_close_wake_a_waiting_reader(client: EngineClient) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"
    server = await serve(answers(head))
    resp = await client.post(server.url + "/x", b"{}")
    assert await resp.readany(timeout_s=0.5) == b"hi"
    with pytest.raises(TimeoutError):
        await resp.readany(timeout_s=0.05)
    reader = asyncio.ensure_future(resp.readany())
    await asyncio.sleep(0.01)
    resp.close()  # e.g. the engine was found hung
    with pytest.raises(EngineConnectionError):
        await reader
    await asyncio.sleep(0.01)
    assert client.open_connections() == 0
    await server.close()


@on_both_loops
async def test_cancelled_before_the_answer_closes_the_connection(client: EngineClient) -> None:
    gone = asyncio.Event()

    def make(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await reader.read()  # never answers; EOF when the client closes
            gone.set()

        return script

    server = await serve(make)
    task = asyncio.ensure_future(client.post(server.url + "/x", b"{}"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gone.wait(), 2.0)  # the engine sees the request go
    assert client.open_connections() == 0
    await server.close()


@on_both_loops
async def test_idle_connections_are_closed_and_stale_ones_not_reused() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    client = EngineClient(connect_timeout_s=2.0, idle_s=0.1)
    server = await serve(answers(ok, then_close=True))  # closes each connection after one answer
    for _ in range(2):
        resp = await client.post(server.url + "/x", b"{}")
        assert await resp.read() == b"ok"
        await asyncio.sleep(0.01)  # the engine's close arrives: the idle connection is dropped
    assert server.connections == 2
    server2 = await serve(answers(ok))
    resp = await client.post(server2.url + "/x", b"{}")
    await resp.read()
    assert client.idle_connections() == 1
    await asyncio.sleep(0.3)
    assert client.idle_connections() == 0 and client.open_connections() == 0
    await client.close()
    await server.close()
    await server2.close()


@on_both_loops
async def test_a_large_body_pauses_reading_until_read(client: EngineClient) -> None:
    big = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    server = await serve(answers(answer, answer))
    for _ in range(2):
        resp = await client.post(server.url + "/x", big)
        await asyncio.sleep(0.05)
        assert await resp.read() == big
    assert server.requests[1][1] == big and server.connections == 1
    await server.close()


def test_targets() -> None:
    t = target_of("http://engine-0.ns:30000/generate?x=1")
    assert t.origin == ("engine-0.ns", 30000, False) and t.path == "/generate?x=1"
    assert t.host_header == "engine-0.ns:30000"
    t = target_of("https://[::1]/v1/chat/completions")
    assert t.origin == ("::1", 443, True) and t.host_header == "[::1]"  # the default port unsaid
    with pytest.raises(ValueError):
        target_of("ftp://x/y")


@on_both_loops
async def test_https_engines_are_verified(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "10.0.0.1")  # a CA and a serving certificate for 127.0.0.1
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.apiserver_crt, pki.apiserver_key)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = await serve(answers(ok, ok), tls=server_tls)
    trusting = EngineClient(
        connect_timeout_s=2.0, idle_s=30.0, tls=ssl.create_default_context(cafile=pki.ca_crt)
    )
    for _ in range(2):
        resp = await trusting.post(server.url + "/x", b"{}")
        assert await resp.read() == b"ok"
    assert server.connections == 1
    stranger = EngineClient(connect_timeout_s=2.0, idle_s=30.0)  # the system's CAs: not this one
    with pytest.raises(ssl.SSLCertVerificationError):
        await stranger.post(server.url + "/x", b"{}")
    await trusting.close()
    await stranger.close()
    await server.close()
