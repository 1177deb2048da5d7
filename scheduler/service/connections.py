"""Client connections within limits: the head and keep-alive timeouts, and the connection cap.

aiohttp times out neither a slow request head nor (before 3.10) an idle connection, and accepts any
number of connections. `GuardedSite` listens with each aiohttp protocol wrapped in `_Conn`, which
`ConnectionGuard` tracks:

- a request head must be complete `limits.header_timeout_s` after its first byte (a new connection:
  after connecting), else the connection closes (408 when part of a head came: slowloris);
- an idle keep-alive connection closes after `limits.keepalive_timeout_s`;
- at `limits.max_connections` a new connection closes the longest-idle one (then the oldest with a
  head still coming), so idle sockets never starve real requests; when every connection is busy the
  new one is answered 503 and closed. The cap is lowered to what the open-file limit allows.

The body's own deadline (`limits.body_timeout_s`) is kept by the handler that reads it
(`bodies.read_body`); the app's middleware marks a connection busy while a handler runs
(`request_started`, `request_done`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sbs.scheduler.service import protocol
from sbs.settings.service import LimitsSettings

log = logging.getLogger(__name__)

_FDS_PER_CONNECTION = 3
"""A busy client connection holds its socket and the two to its prefill and decode engines."""
_FDS_RESERVED = 128


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (at most 2**20); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 2**20, 2**20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


def connection_cap(configured: int) -> int:
    """`configured`, lowered to what the process's open-file limit allows."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, (soft - _FDS_RESERVED) // _FDS_PER_CONNECTION))


def _raw_response(status: str, message: str, **headers: str) -> bytes:
    body = json.dumps(protocol.error_body(message, type="connection_error", retryable=True)).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()] + ["Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


class _Conn(asyncio.Protocol):
    """One client connection: aiohttp's protocol, with the guard's state and timer around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        """Requests of this connection in a handler."""
        self.partial = False
        """Part of a request head (or an unread body) came and no handler runs yet."""
        self.refused = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's too)
        if not self.guard.admit(self):
            self.refused = True
            transport.write(
                _raw_response("503 Service Unavailable", "too many connections; retry", Retry_After="1")
            )
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy and not self.partial:
            self.guard.head_started(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    def arm(self, delay_s: float) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(delay_s, self.guard.expire, self)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ConnectionGuard:
    """The open client connections of one service, their timers and the cap."""

    def __init__(
        self, limits: LimitsSettings, *, on_change: Callable[[int, bool], None] | None = None
    ) -> None:
        self.limits = limits
        self.max_connections = connection_cap(limits.max_connections)
        if self.max_connections < limits.max_connections:
            log.warning(
                "limits.max_connections lowered from %d to %d by the open-file limit",
                limits.max_connections,
                self.max_connections,
            )
        self._on_change = on_change
        """Told (open connections, whether one was just refused) on every change (metrics)."""
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._idle: dict[_Conn, None] = {}
        """Idle connections, longest-idle first (insertion order)."""
        self._heads: dict[_Conn, None] = {}
        """Connections with a head (or an unread body) coming, oldest first."""

    def __len__(self) -> int:
        return len(self._conns)

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Conn(self, make())

    def admit(self, conn: _Conn) -> bool:
        """A new connection: make room at the cap (closing an idle one), else refuse it."""
        if len(self._conns) >= self.max_connections:
            victim = next(iter(self._idle), None) or next(iter(self._heads), None)
            if victim is None:
                self._notify(refused=True)
                return False
            self._close(victim, None)
        assert conn.transport is not None
        self._conns[conn.transport] = conn
        self._idle[conn] = None
        conn.arm(self.limits.header_timeout_s)
        self._notify()
        return True

    def head_started(self, conn: _Conn) -> None:
        conn.partial = True
        self._idle.pop(conn, None)
        self._heads[conn] = None
        conn.arm(self.limits.header_timeout_s)

    def request_started(self, conn: _Conn) -> None:
        conn.busy += 1
        conn.partial = False
        conn.disarm()
        self._idle.pop(conn, None)
        self._heads.pop(conn, None)

    def request_done(self, conn: _Conn) -> None:
        conn.busy -= 1
        if conn.busy == 0 and conn.transport is not None and conn.transport in self._conns:
            self._idle[conn] = None
            conn.arm(self.limits.keepalive_timeout_s)

    def expire(self, conn: _Conn) -> None:
        """A connection's timer fired: close it unless a handler took it meanwhile."""
        conn.timer = None
        if conn.busy:
            return
        timeout = self.limits.header_timeout_s
        late = "408 Request Timeout", f"the request head did not arrive within {timeout:g} s"
        self._close(conn, late if conn.partial else None)

    def forget(self, conn: _Conn) -> None:
        conn.disarm()
        self._idle.pop(conn, None)
        self._heads.pop(conn, None)
        if conn.transport is not None and self._conns.pop(conn.transport, None) is not None:
            self._notify()

    def lookup(self, transport: asyncio.BaseTransport | None) -> _Conn | None:
        return self._conns.get(transport) if transport is not None else None

    def _close(self, conn: _Conn, answer: tuple[str, str] | None) -> None:
        self.forget(conn)
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        if answer is not None:
            transport.write(_raw_response(*answer))
        transport.close()

    def _notify(self, refused: bool = False) -> None:
        if self._on_change is not None:
            self._on_change(len(self._conns), refused)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner of the service's app. aiohttp's own keep-alive timer stays a backstop behind the
    guard's (it would close a half-sent head silently, where the guard answers 408)."""
    limits = app[GUARD].limits
    backstop = limits.keepalive_timeout_s + limits.header_timeout_s
    return web.AppRunner(app, handler_cancellation=True, access_log=None, keepalive_timeout=backstop)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through the app's `ConnectionGuard`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        factory: Any = runner.app[GUARD].protocol_factory(runner.server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
