"""Fault injection for the service tests: a TCP proxy that can freeze (a SIGSTOPped engine: its
connections stay open, it accepts new ones, and nothing moves), and a scriptable fake engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web


class FreezableProxy:
    """Forwards `127.0.0.1:<port>` to a target; `freeze()` stops every byte both ways until `thaw()`.
    With `hold_end_s`, the last chunk of a chunked answer (`0\\r\\n\\r\\n`) reaches the client that
    much later than the bytes before it (an engine slow to end its stream after `[DONE]`)."""

    def __init__(self, target_url: str, *, hold_end_s: float = 0.0) -> None:
        host, port = target_url.removeprefix("http://").rsplit(":", 1)
        self._target = (host, int(port))
        self._running = asyncio.Event()
        self._running.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._hold_end_s = hold_end_s
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self._running.clear()

    def thaw(self) -> None:
        self._running.set()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._running.wait()  # frozen: connected, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst, hold=src is up_reader))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, hold: bool) -> None:
        end = b"0\r\n\r\n"
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._running.wait()
                data = await src.read(65536)
                await self._running.wait()
                if not data:
                    break
                if hold and self._hold_end_s and data.endswith(end):
                    dst.write(data[: -len(end)])
                    await dst.drain()
                    await asyncio.sleep(self._hold_end_s)
                    data = end
                dst.write(data)
                await dst.drain()
        dst.close()


class FakeEngine:
    """An aiohttp server whose routes answer what a test says (`replies[path]()` → response)."""

    def __init__(self, replies: dict[str, Callable[[], Any]]) -> None:
        self.replies = replies
        self.hits: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeEngine:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        reply = self.replies.get(path)
        if reply is None:
            return web.Response(status=404)
        out = reply()
        if isinstance(out, web.StreamResponse):
            return out
        if isinstance(out, bytes):
            return web.Response(body=out, content_type="application/json")
        return web.json_response(out)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
