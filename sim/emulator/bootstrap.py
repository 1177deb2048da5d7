"""The PD handshake: a prefill engine's bootstrap server and the decode side's client.

SGLang pairs the prefill and the decode of one request by `bootstrap_room` through a bootstrap
server on the prefill (`--disaggregation-bootstrap-port`), then moves KV over RDMA. The emulator keeps
the pairing rules and the timing but uses its own small protocol over real HTTP:

- `GET /route` → `{"dp_size", "follow_bootstrap_room"}`: what a decode needs to work out which prefill
  DP rank holds a room (SGLang's decode asks the same of the bootstrap server).
- `GET /kv/{room}?dp_rank=P&wait_s=W`: the decode connects to rank P for the room (the handshake a
  prefill request waits for before it is scheduled), then long-polls until the prefill's KV for that
  (room, rank) has arrived (`{"status": "done", ...}`), failed (`{"status": "failed", "message"}`), or
  W seconds passed (`{"status": "pending"}`, poll again). `dp_rank=-1` asks the server which rank
  the room went to (SGLang's query for prefills that do not follow the room).

Rooms are keyed by (room, prefill rank): a decode that looks for the KV on another rank than the one
the prefill ran on never connects to it, so both sides time out, as they do in SGLang.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

FAKE_BOOTSTRAP_HOST = "2.2.2.2"
"""SGLang's fake transfer backend host (health checks): no peer, no handshake, no transfer."""
PREFILL_LOST_AFTER_S = 10.0
"""A decode gives up on an unreachable prefill after this long (SGLang: heartbeat every 5 s, dead
after 2 failures)."""
POLL_S = 10.0
"""Longest single long-poll; the decode re-polls until its own deadline."""


@dataclass(eq=False)
class _Room:
    created_s: float
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: dict[str, Any] | None = None


class RoomRegistry:
    """The prefill side of every handshake in flight, keyed by (bootstrap_room, prefill DP rank)."""

    def __init__(self, dp_size: int, follow_room: bool, stale_after_s: float) -> None:
        self.dp_size = dp_size
        self.follow_room = follow_room
        self.stale_after_s = stale_after_s
        self._rooms: dict[tuple[int, int], _Room] = {}
        self._rank_of: dict[int, tuple[int, float]] = {}
        """room -> (the prefill rank it went to, when that was recorded)."""
        self._rank_known: dict[int, asyncio.Event] = {}
        """Rooms a decode asks the rank of before the prefill recorded it (its waiter removes it)."""
        self._created = 0

    def __len__(self) -> int:
        return len(self._rooms)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _room(self, key: tuple[int, int]) -> _Room:
        room = self._rooms.get(key)
        if room is None:
            self._created += 1
            if self._created % 256 == 0:
                self._sweep()
            room = self._rooms[key] = _Room(self._now())
        return room

    def _sweep(self) -> None:
        """Drop what no handshake finished within `stale_after_s` (a peer that never came); by age
        only, so a room recorded a moment ago is never swept before its handshake runs."""
        cutoff = self._now() - self.stale_after_s
        for key in [k for k, r in self._rooms.items() if r.created_s < cutoff]:
            del self._rooms[key]
        for room in [r for r, (_, at) in self._rank_of.items() if at < cutoff]:
            del self._rank_of[room]

    def record_rank(self, room: int, rank: int) -> None:
        """The prefill placed `room` on `rank` (answers `dp_rank=-1` queries)."""
        self._rank_of[room] = (rank, self._now())
        ev = self._rank_known.pop(room, None)
        if ev is not None:
            ev.set()

    async def resolve_rank(self, room: int, timeout_s: float) -> int | None:
        if room in self._rank_of:
            return self._rank_of[room][0]
        ev = self._rank_known.setdefault(room, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except TimeoutError:
            if self._rank_known.get(room) is ev:
                del self._rank_known[room]
            return None
        found = self._rank_of.get(room)
        return found[0] if found else None

    async def wait_connected(self, room: int, rank: int, timeout_s: float) -> bool:
        """Prefill side: wait for the decode's handshake; False on timeout."""
        r = self._room((room, rank))
        try:
            await asyncio.wait_for(r.connected.wait(), timeout_s)
        except TimeoutError:
            self._rooms.pop((room, rank), None)
            return False
        return True

    def connect(self, room: int, rank: int) -> _Room:
        """Decode side: the handshake for (room, rank)."""
        r = self._room((room, rank))
        r.connected.set()
        return r

    def complete(self, room: int, rank: int, result: dict[str, Any]) -> None:
        """Prefill side: the KV has arrived at the decode (`status` done) or never will (failed)."""
        r = self._room((room, rank))
        r.result = result
        r.done.set()

    def forget(self, room: int, rank: int) -> None:
        self._rooms.pop((room, rank), None)
        self._rank_of.pop(room, None)


def bootstrap_app(registry: RoomRegistry) -> web.Application:
    """The bootstrap server a prefill engine runs on its bootstrap port."""

    async def route(_: web.Request) -> web.Response:
        return web.json_response({"dp_size": registry.dp_size, "follow_bootstrap_room": registry.follow_room})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def kv(request: web.Request) -> web.Response:
        try:
            room = int(request.match_info["room"])
            rank = int(request.query.get("dp_rank", "-1"))
            wait_s = min(float(request.query.get("wait_s", str(POLL_S))), 60.0)
        except ValueError:
            return web.json_response({"error": "room, dp_rank and wait_s must be numbers"}, status=400)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        if rank < 0:
            found = await registry.resolve_rank(room, wait_s)
            if found is None:
                return web.json_response({"status": "pending"})
            rank = found
        r = registry.connect(room, rank)
        try:
            await asyncio.wait_for(r.done.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return web.json_response({"status": "pending", "dp_rank": rank})
        registry.forget(room, rank)
        return web.json_response({**(r.result or {}), "dp_rank": rank})

    app = web.Application()
    app.router.add_get("/route", route)
    app.router.add_get("/health", health)
    app.router.add_get("/kv/{room}", kv)
    return app


class TransferFailed(Exception):
    """The decode will not get this request's KV: `message` is the underlying exception's text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BootstrapClient:
    """The decode side: asks prefill bootstrap servers for their shape and long-polls for KV."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._routes: dict[tuple[str, int], tuple[int, bool]] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, url: str, deadline: float, *, poll_s: float) -> dict[str, Any]:
        """GET with retries on connection errors until `deadline`; TransferFailed when the prefill
        stays unreachable for `PREFILL_LOST_AFTER_S`, TimeoutError at the deadline."""
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            try:
                timeout = aiohttp.ClientTimeout(total=min(left, poll_s) + 5.0)
                async with self._http().get(url, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise TransferFailed(f"bootstrap server answered {resp.status} for {url}")
                    return await resp.json()
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                now = loop.time()
                down_since = now if down_since is None else down_since
                if now - down_since >= PREFILL_LOST_AFTER_S:
                    raise TransferFailed(
                        f"Lost connection with prefill instance (bootstrap {url.split('/')[2]}): {exc!r}"
                    ) from None
                await asyncio.sleep(min(0.2, max(0.0, deadline - now)))

    async def prefill_shape(self, host: str, port: int, deadline: float) -> tuple[int, bool]:
        """(dp_size, follows the room) of the prefill behind host:port, cached."""
        key = (host, port)
        if key not in self._routes:
            info = await self._get(f"http://{host}:{port}/route", deadline, poll_s=POLL_S)
            self._routes[key] = (int(info["dp_size"]), bool(info["follow_bootstrap_room"]))
        return self._routes[key]

    async def wait_kv(self, host: str, port: int, room: int, rank: int, deadline: float) -> dict[str, Any]:
        """Connect to (room, rank) and wait for its KV. Raises TimeoutError at `deadline`."""
        loop = asyncio.get_running_loop()
        while True:
            wait_s = max(0.0, min(POLL_S, deadline - loop.time()))
            url = f"http://{host}:{port}/kv/{room}?dp_rank={rank}&wait_s={wait_s:.3f}"
            out = await self._get(url, deadline, poll_s=wait_s)
            status = out.get("status")
            if status == "done":
                return out
            if status == "failed":
                raise TransferFailed(str(out.get("message", "prefill failed")))
            if loop.time() >= deadline:
                raise TimeoutError
