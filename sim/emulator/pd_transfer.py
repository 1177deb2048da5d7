"""`PdTransfer`: the prefill-decode side of one engine: the bootstrap handshake and the KV transfer.

A PD prefill holds the `RoomRegistry` its bootstrap server answers from: a request waits in the
bootstrap queue for its decode's handshake, is prefilled, then its KV is on the wire for the cost
model's transfer time before the decode is told it is done. A PD decode holds the `BootstrapClient`:
it reserves KV for the request, finds the prefill rank that holds the room and waits for its KV,
then the request joins the decode batch. Failures carry SGLang's `KVTransferError` messages and
count in its PD failure metrics.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sbs.sim.emulator import bootstrap, tokens
from sbs.sim.emulator.request_state import Req
from sbs.sim.engine import DecodeJob

if TYPE_CHECKING:
    from sbs.sim.emulator.engine_runtime import Runtime


def _kv_transfer_error(what: str, holder: str, req: Req, msg: str) -> str:
    room = req.gen.bootstrap_room
    return (
        f"{what} for request rank={req.rank} {holder}.rid={req.rid!r} {holder}.bootstrap_room={room} "
        f"with exception KVTransferError(bootstrap_room={room}): {msg}"
    )


def _prefill_bootstrap_failed(req: Req, msg: str) -> str:
    return _kv_transfer_error("Prefill bootstrap failed", "req", req, msg)


def _decode_transfer_failed(req: Req, msg: str) -> str:
    return _kv_transfer_error("Decode transfer failed", "decode_req.req", req, msg)


class PdTransfer:
    """The PD half of a `Runtime`: `registry` on a prefill, `client` on a decode, else neither."""

    def __init__(self, runtime: Runtime) -> None:
        s = runtime.settings
        self.rt = runtime
        self.registry: bootstrap.RoomRegistry | None = None
        if s.mode == "prefill":
            follow = s.resolved_balance == "follow_bootstrap_room" and not s.force_query_prefill_dp_rank
            self.registry = bootstrap.RoomRegistry(s.dp_size, follow, stale_after_s=2 * s.bootstrap_timeout_s)
        self.client = bootstrap.BootstrapClient() if s.mode == "decode" else None
        self._booting: set[int] = set()
        """Requests counted in the bootstrap queue (`book.bootstrap_queue`)."""

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    # --- prefill side -----------------------------------------------------------------------------
    def submit_prefill(self, req: Req, routed: int | None) -> None:
        rt = self.rt
        s = rt.settings
        room = req.gen.bootstrap_room
        assert room is not None and self.registry is not None
        rank = req.rank = routed if routed is not None else rt.balance(req)
        if req.fake_bootstrap:
            rt.enqueue_prefill(req, rank)
            return
        implied = room % rt.dp
        if (
            rt.dp > 1
            and req.gen.disagg_prefill_dp_rank is None
            and s.resolved_balance == "follow_bootstrap_room"
            and rank != implied
            and not s.force_query_prefill_dp_rank
        ):
            rt.metrics.bootstrap_failed.labels(**rt.metrics.rank(rank)).inc()
            msg = (
                f"follow_bootstrap_room conflict: dispatched to dp_rank {rank} but bootstrap_room {room} "
                f"implies dp_rank {implied}. Set SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK=1 "
                f"to allow mixed routing."
            )
            rt.fail(req, 500, _prefill_bootstrap_failed(req, msg))
            return
        self.registry.record_rank(room, rank)
        req.stage = "bootstrap"
        self._booting.add(req.num)
        rt.book.bootstrap_queue(req.rank, req.prompt_tokens, +1)
        req.task = asyncio.create_task(self._await_handshake(req))
        rt.book.changed()

    def _leave_bootstrap(self, req: Req) -> None:
        """Off the bootstrap queue, once, whichever of the handshake, an abort or a cancellation
        comes first."""
        if req.num in self._booting:
            self._booting.discard(req.num)
            self.rt.book.bootstrap_queue(req.rank, req.prompt_tokens, -1)

    async def _await_handshake(self, req: Req) -> None:
        """Wait for the decode's handshake; an aborted request's bookkeeping is `abort`'s."""
        rt = self.rt
        assert self.registry is not None and req.gen.bootstrap_room is not None
        r, room = req.rank, req.gen.bootstrap_room
        try:
            ok = await self.registry.wait_connected(room, r, rt.settings.bootstrap_timeout_s)
        finally:
            self._leave_bootstrap(req)
        if req.finished:  # aborted meanwhile (Python 3.11's wait_for may return the result of a wait
            return  # that finished as it was cancelled)
        if ok:
            waited = rt.now() - req.arrival_s  # SGLang observes the bootstrap stage as it ends
            rt.metrics.stage_latency.labels(**rt.metrics.rank(r), stage="prefill_bootstrap").observe(waited)
            rt.enqueue_prefill(req, r)
            return
        rt.metrics.bootstrap_failed.labels(**rt.metrics.rank(r)).inc()
        waited = rt.now() - req.arrival_s
        msg = f"Request {req.gen.bootstrap_room} timed out after {waited:.1f}s in KVPoll.Bootstrapping"
        rt.fail(req, 500, _prefill_bootstrap_failed(req, msg))

    def start_transfer(self, req: Req) -> None:
        """A prefilled request's KV goes on the wire (instantly for a fake bootstrap)."""
        rt = self.rt
        r, n = req.rank, req.prompt_tokens
        req.stage = "transfer"
        req.transfer_start_s = rt.now()
        rt.book.inflight(r, n, +1)
        delay = 0.0 if req.fake_bootstrap else rt.cost.kv_transfer_s(n) * rt.settings.time_factor
        asyncio.get_running_loop().call_later(delay, self._transfer_done, req)

    def _transfer_done(self, req: Req) -> None:
        rt = self.rt
        r, n = req.rank, req.prompt_tokens
        rt.book.inflight(r, n, -1)
        if not req.fake_bootstrap:
            assert self.registry is not None and req.gen.bootstrap_room is not None
            result = {
                "status": "done",
                "prompt_tokens": n,
                "cached_tokens": req.cached_tokens,
                "output_ids": tokens.output_ids(1),
            }
            self.registry.complete(req.gen.bootstrap_room, r, result)
            modelled_s = rt.cost.kv_transfer_s(n)
            latency_ms = (rt.now() - req.transfer_start_s) * 1e3
            rt.book.kv_transfer(r, latency_ms, n * rt.cost.kv_bytes_per_token() / modelled_s / 1e9)
        rt.book.changed()
        if req.finished:
            return
        rt.first_token(req)
        rt.finish(req, {"type": "length", "length": 0})

    # --- decode side ------------------------------------------------------------------------------
    def submit_decode(self, req: Req, routed: int | None) -> None:
        rt = self.rt
        assert rt.decode is not None
        rank = req.rank = routed if routed is not None else rt.balance(req)
        req.stage = "transfer"
        rt.decode.reserve(rank, req.prompt_tokens + 1)
        req.task = asyncio.create_task(self._fetch_kv(req))
        rt.book.changed()

    async def _fetch_kv(self, req: Req) -> None:
        """Decode side: find the prefill rank that holds the room, wait for its KV (or time out).
        A cancelled wait (abort) leaves the reservation to `abort`."""
        rt = self.rt
        assert rt.decode is not None and self.client is not None
        g = req.gen
        room = g.bootstrap_room
        assert room is not None
        deadline = req.arrival_s + rt.settings.waiting_timeout_s
        try:
            if not req.fake_bootstrap:
                host, port = g.bootstrap_host or "127.0.0.1", g.bootstrap_port or 8998
                p = g.disagg_prefill_dp_rank
                if p is None:
                    dp, follows = await self.client.prefill_shape(host, port, deadline)
                    p = 0 if dp == 1 else (room % dp if follows else -1)
                await self.client.wait_kv(host, port, room, p, deadline)
        except TimeoutError:
            waited = rt.now() - req.arrival_s
            self._transfer_failed(
                req, f"Request {room} timed out after {waited:.1f}s in KVPoll.WaitingForInput"
            )
            return
        except bootstrap.TransferFailed as exc:
            self._transfer_failed(req, exc.message)
            return
        except Exception as exc:  # a malformed answer must not leave the request hanging
            self._transfer_failed(req, repr(exc))
            return
        if not req.finished:
            self._kv_arrived(req)

    def _transfer_failed(self, req: Req, msg: str) -> None:
        rt = self.rt
        assert rt.decode is not None
        if req.finished:
            return
        rt.decode.unreserve(req.rank, req.prompt_tokens + 1)
        rt.metrics.transfer_failed.labels(**rt.metrics.rank(req.rank)).inc()
        rt.fail(req, 500, _decode_transfer_failed(req, msg))

    def _kv_arrived(self, req: Req) -> None:
        rt = self.rt
        assert rt.decode is not None
        n = req.prompt_tokens
        if req.gen.max_new_tokens <= 1:  # the prefill's token is the whole answer
            rt.decode.unreserve(req.rank, n + 1)
            rt.first_token(req)
            rt.finish(req)
            return
        req.stage = "decode"
        steps = req.gen.max_new_tokens - 1
        rt.decode.add(DecodeJob(req.num, req.rank, n + 1, steps, priority=req.gen.priority))
        rt.wake.set()
        rt.book.changed()

    # --- aborts -----------------------------------------------------------------------------------
    def abort(self, req: Req) -> None:
        """Undo an aborted request's PD bookkeeping: its place in the bootstrap queue or its decode
        reservation; a prefill tells the decode waiting on the room that it failed."""
        rt = self.rt
        if req.stage == "bootstrap":
            self._leave_bootstrap(req)
        elif req.stage == "transfer" and rt.decode is not None and rt.settings.mode == "decode":
            rt.decode.unreserve(req.rank, req.prompt_tokens + 1)
        if req.stage in ("bootstrap", "prefill") and self.registry is not None and not req.fake_bootstrap:
            assert req.gen.bootstrap_room is not None
            self.registry.complete(
                req.gen.bootstrap_room, req.rank, {"status": "failed", "message": "Aborted by AbortReq."}
            )
