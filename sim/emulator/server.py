"""`start_engine`: one emulated engine (API site, bootstrap site on a prefill, engine loop) in the
running event loop, for the CLI, tests and benchmarks alike."""

from __future__ import annotations

import logging
import socket
from types import TracebackType

from aiohttp import web
from sbs.sim.emulator import bootstrap
from sbs.sim.emulator.engine_runtime import Runtime
from sbs.sim.emulator.http_api import Api, worker_app
from sbs.sim.emulator.settings import EngineSettings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0
"""How long `close()` lets open connections (long-polls, streams) finish before cutting them."""


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        sock = _bind(host, port)
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, sock.getsockname()[1]


class RunningEngine:
    """A started engine: where it listens, its runtime, and `close()`. Also an async context manager."""

    def __init__(
        self,
        settings: EngineSettings,
        runtime: Runtime | None,
        runners: list[web.AppRunner],
        port: int,
        bootstrap_port: int | None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        """None on a worker node (`node_rank` > 0)."""
        self._runners = runners
        self.port = port
        self.bootstrap_port = bootstrap_port
        """The bootstrap server's port on a prefill engine, else None."""

    @property
    def host(self) -> str:
        """The address clients use: the bind host, or loopback for a wildcard bind."""
        h = self.settings.host
        return "127.0.0.1" if h in ("", "0.0.0.0") else ("::1" if h == "::" else h)

    @property
    def url(self) -> str:
        h = self.host
        return f"http://[{h}]:{self.port}" if ":" in h else f"http://{h}:{self.port}"

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []

    async def __aenter__(self) -> RunningEngine:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def start_engine(settings: EngineSettings, *, launch_command: str = "") -> RunningEngine:
    """Start one engine in the running loop: its API on `settings.port` (0 = a free port) and, on a
    prefill, its bootstrap server on `settings.bootstrap_port`. Raises OSError when a port is taken."""
    if settings.node_rank > 0:
        runner, port = await _serve(worker_app(), settings.host, settings.port)
        return RunningEngine(settings, None, [runner], port, None)
    runtime = Runtime(settings)
    runtime.start()
    runners: list[web.AppRunner] = []
    try:
        boot_port = None
        if runtime.registry is not None:
            boot_runner, boot_port = await _serve(
                bootstrap.bootstrap_app(runtime.registry), settings.host, settings.bootstrap_port
            )
            runners.append(boot_runner)
        api_runner, port = await _serve(
            Api(runtime, launch_command=launch_command).app(), settings.host, settings.port
        )
        runners.append(api_runner)
    except BaseException:
        await runtime.close()
        for r in runners:
            await r.cleanup()
        raise
    return RunningEngine(settings, runtime, runners, port, boot_port)
