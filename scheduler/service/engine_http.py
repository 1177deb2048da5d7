"""A lean pooled HTTP/1.1 client for the requests' engine calls (the PD pair's two posts).

aiohttp's client costs about a quarter of the scheduler's CPU per request (a request object, a
body-writer task and a stream reader per call); this one writes each request with one transport write
and parses the answer in its protocol: a `Content-Length` body, a chunked one, or one that ends when
the engine closes. Connections are kept alive and reused, most recently used first, so that after a
load peak the spare ones stay idle and are closed after `idle_s`.

Errors: a connection that cannot be made raises `OSError` (`TimeoutError` past `connect_timeout_s`);
one that breaks, or an answer that is not HTTP/1.x, raises `EngineConnectionError` (a
`ConnectionError`). No read timeout: the callers bound what they wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
"""Longest answer head (status line and headers) accepted."""
_MAX_LINE = 4096
"""Longest chunk-size line accepted."""
_PAUSE_AT = 1 << 20
"""Buffered body bytes at which reading pauses until the caller reads."""
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NO_BODY = frozenset({204, 304})

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class EngineConnectionError(ConnectionError):
    """The engine's connection broke, or it answered something that is not HTTP/1.x."""


Origin = tuple[str, int, bool]
"""(host, port, TLS): the connections' pool key."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go."""

    origin: Origin
    host_header: str
    path: str
    """The request target (path and query)."""


def target_of(url: str) -> Target:
    """The target of an `http://` or `https://` URL. Raises ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target((host, port, tls), shown if parts.port is None else f"{shown}:{port}", path)


class EngineResponse:
    """One answer: status and headers once `EngineClient.post` returns, the body read with `readany`
    or `read`. `close` drops the connection unless the answer is complete."""

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        """Header names in lower case (repeated headers joined with ", ")."""
        self.content_type = "application/octet-stream"
        """The media type without parameters (aiohttp's default when there is none)."""
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def at_eof(self) -> bool:
        """The whole answer has arrived and been read."""
        return self._eof and not self._chunks

    async def readany(self, timeout_s: float | None = None) -> bytes:
        """The body bytes that have arrived (waits for some, raising TimeoutError when none came
        within `timeout_s`); b"" at the end of the body."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            loop = self._head.get_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if self._exc is not None:
            raise self._exc
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the answer: an incomplete one closes its connection (the engine sees the client
        go); a waiting reader gets `EngineConnectionError`."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._eof:
            self._fail(EngineConnectionError("connection closed"))
            conn.abort()

    release = close

    # -- fed by the connection ------------------------------------------------------------------

    def _started(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        ctype = headers.get("content-type")
        if ctype:
            self.content_type = ctype.partition(";")[0].strip().lower()
        if not self._head.done():
            self._head.set_result(None)

    def _data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        conn = self._conn
        if self._size >= _PAUSE_AT and conn is not None and not conn.paused:
            conn.pause()

    def _end(self) -> None:
        self._eof = True
        self._conn = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._eof:
            return
        if self._exc is None:
            self._exc = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # seen: `post` raises it, or nobody waits any more
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Conn(asyncio.Protocol):
    """One connection to an engine and the parser of the answer in flight on it."""

    def __init__(self, client: EngineClient, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.resp: EngineResponse | None = None
        self.lost = False
        self.paused = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._state = _DONE
        self._left = 0
        self._keep_alive = True

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.resp is None or self._state == _DONE:
            self.abort()  # bytes nobody asked for: the connection's framing is lost
            return
        try:
            self._parse(data)
        except ValueError as exc:
            self._broken(EngineConnectionError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client._forget(self)
        resp, self.resp = self.resp, None
        if resp is None:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            resp._end()
            return
        why = f"connection lost: {exc}" if exc else "the engine closed the connection"
        resp._fail(EngineConnectionError(why if self._state != _HEAD else why + " before answering"))

    # -- requests -------------------------------------------------------------------------------

    def usable(self) -> bool:
        t = self.transport
        return not self.lost and t is not None and not t.is_closing()

    def send(self, data: bytes, body: bytes) -> EngineResponse:
        assert self.transport is not None
        self.resp = resp = EngineResponse(self)
        self._state, self._buf, self._keep_alive = _HEAD, bytearray(), True
        if len(body) <= 65536:
            self.transport.write(data + body)
        else:
            self.transport.writelines((data, body))
        return resp

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        self._keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self.client._forget(self)

    def _broken(self, exc: EngineConnectionError) -> None:
        resp, self.resp = self.resp, None
        self._state = _DONE
        self.abort()
        if resp is not None:
            resp._fail(exc)

    def _finish(self, extra: bool) -> None:
        """The answer is complete; `extra`: bytes followed it (the connection is not reused)."""
        resp, self.resp = self.resp, None
        self._state = _DONE
        if resp is not None:
            resp._end()
        if self.paused:
            self.resume()
        if extra or not self._keep_alive or not self.usable():
            self.abort()
        else:
            self.client._release(self)

    # -- the parser ------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        resp = self.resp
        assert resp is not None
        if self._state == _HEAD:
            if self._buf:  # the head came in pieces: look for its end in the new bytes only
                buf: bytes | bytearray = self._buf
                seen = len(buf)
                buf += data
                end = buf.find(b"\r\n\r\n", max(seen - 3, 0))
            else:
                buf = data
                end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError("answer head too long")
                if buf is data:
                    self._buf = bytearray(data)
                return
            head, data = bytes(buf[:end]), bytes(buf[end + 4 :])
            self._buf = bytearray()
            status = self._head(head)
            if status < 200:  # an interim answer (100 Continue): the real one follows
                if data:
                    self._parse(data)
                return
            if self._state == _DONE:
                self._finish(bool(data))
                return
            if not data:
                return
        state = self._state
        if state == _LENGTH:
            n = self._left
            if len(data) < n:
                self._left = n - len(data)
                resp._data(data)
                return
            resp._data(data[:n] if len(data) > n else data)
            self._finish(len(data) > n)
        elif state == _UNTIL_CLOSE:
            resp._data(data)
        else:
            self._chunked(data, resp)

    def _head(self, head: bytes) -> int:
        """Parse a head; sets the body's framing. Returns the status."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise ValueError(f"status line {lines[0][:80]!r}")
        code = rest[:3]
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"status line {lines[0][:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"header line {line[:80]!r}")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if status < 200:
            self._state = _HEAD
            return status
        conn_hdr = headers.get("connection", "").lower()
        self._keep_alive = "close" not in conn_hdr and (version == "HTTP/1.1" or "keep-alive" in conn_hdr)
        te = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in _NO_BODY:
            self._state = _DONE
        elif te is not None:
            if te.rpartition(",")[2].strip().lower() != "chunked":
                raise ValueError(f"transfer-encoding {te[:80]!r}")
            self._state = _CHUNK_SIZE
        elif length is not None:
            if not length.isdigit():
                raise ValueError(f"content-length {length[:80]!r}")
            self._left = int(length)
            self._state = _LENGTH if self._left else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        assert self.resp is not None
        self.resp._started(status, headers)
        return status

    def _chunked(self, data: bytes, resp: EngineResponse) -> None:
        buf = bytes(self._buf) + data if self._buf else data
        pos, end = 0, len(buf)
        state = self._state
        while pos < end:
            if state == _CHUNK_DATA:
                take = min(self._left, end - pos)
                resp._data(buf[pos : pos + take] if take < end or pos else buf)
                pos += take
                self._left -= take
                if self._left == 0:
                    state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > _MAX_LINE:
                        raise ValueError("chunk-size line too long")
                    break
                size = buf[pos:nl].partition(b";")[0].strip()
                if not size or size.translate(None, _HEX_DIGITS):
                    raise ValueError(f"chunk size {size[:40]!r}")
                pos = nl + 2
                self._left = int(size, 16)
                state = _CHUNK_DATA if self._left else _TRAILER
            elif state == _CHUNK_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                pos += 2
                state = _CHUNK_SIZE
            else:  # _TRAILER: lines up to an empty one
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > _MAX_LINE:
                        raise ValueError("trailer line too long")
                    break
                done = nl == pos
                pos = nl + 2
                if done:
                    self._buf = bytearray()
                    self._finish(pos < end)
                    return
        self._state = state
        self._buf = bytearray(buf[pos:]) if pos < end else bytearray()


class EngineClient:
    """Pooled keep-alive connections per engine origin, and the POSTs of the PD pair."""

    def __init__(self, *, connect_timeout_s: float, idle_s: float, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: how `https://` engines are verified (default: the system's CAs, as aiohttp's)."""
        self.headers: dict[str, str] = {}
        """Sent with every request (e.g. the engines' `Authorization`)."""
        self._connect_timeout_s = connect_timeout_s
        self._idle_s = idle_s
        self._targets: dict[str, Target] = {}
        self._idle: dict[Origin, list[_Conn]] = {}
        self._conns: set[_Conn] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._tls = tls
        self._closed = False

    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def open_connections(self) -> int:
        return len(self._conns)

    async def post(self, url: str, body: bytes, content_type: str = "application/json") -> EngineResponse:
        """POST `body` to `url`; returns once the answer's head is in (the caller reads the body, then
        closes the answer). Cancelled before that, the connection is closed."""
        if self._closed:
            raise EngineConnectionError("the engine client is closed")
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = target_of(url)
        conn = await self._acquire(target.origin)
        head = (
            f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        )
        for k, v in self.headers.items():
            head += f"{k}: {v}\r\n"
        resp = conn.send((head + "\r\n").encode(), body)
        try:
            await resp._head
        except BaseException:
            resp.close()
            raise
        return resp

    async def _acquire(self, origin: Origin) -> _Conn:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.abort()
        loop = asyncio.get_running_loop()
        host, port, use_tls = origin
        tls = None
        if use_tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        async with asyncio.timeout(self._connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: _Conn(self, origin, loop), host, port, ssl=tls, server_hostname=host if tls else None
            )
        if self._closed:
            conn.abort()
            raise EngineConnectionError("the engine client is closed")
        self._conns.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        """`conn` finished an answer and may carry the next request."""
        if self._closed or conn not in self._conns:
            conn.abort()
            return
        loop = conn.loop
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self._idle_s, self._close_idle)

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _close_idle(self) -> None:
        """Close the connections idle for `idle_s`; look again while any stay idle."""
        self._sweep = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._idle_s
        left = 0
        for origin, conns in list(self._idle.items()):
            stale = [c for c in conns if c.idle_since <= cutoff]
            for c in stale:
                c.abort()
            left += len(self._idle.get(origin, ()))
            if not self._idle.get(origin):
                self._idle.pop(origin, None)
        if left:
            self._sweep = loop.call_later(self._idle_s / 2, self._close_idle)

    async def close(self) -> None:
        """Close every connection (answers in flight break)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._conns):
            resp = conn.resp
            conn.abort()
            if resp is not None:
                resp._fail(EngineConnectionError("the engine client is closed"))
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close
