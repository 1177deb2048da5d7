"""The real-time engine: the simulator's engine models (`sbs.sim.engine`) driven by an asyncio loop.

One `Runtime` per engine instance. Its loop starts a step whenever there is work, sleeps the step's
modelled duration × `time_factor`, then applies the step and resolves the waiting requests. Which
requests run, in what chunks, how long a step takes, when a decode joins the batch and when KV is
full are decided by the same `PrefillEngine` / `DecodeEngine` the simulator uses; this module adds
what a live engine has on top: HTTP-facing request state, the PD handshake and KV transfer, SGLang's
DP rank rules and error messages, aborts, load snapshots and metrics.

Request stages: `bootstrap` (PD prefill waiting for its decode's handshake) → `prefill` (in a rank
queue or being prefilled) → `transfer` (prefill: KV on the wire; decode: waiting for the prefill's
KV) → `decode` (waiting for a batch slot or running) → `done`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.sim.costmodel import CostModel, CostParams
from sbs.sim.emulator import bootstrap, tokens
from sbs.sim.emulator.metrics import EngineMetrics
from sbs.sim.emulator.requests import GenRequest, RequestError, check_length
from sbs.sim.emulator.settings import EngineSettings
from sbs.sim.engine import DecodeEngine, DecodeJob, PrefillEngine, PrefillJob

log = logging.getLogger(__name__)

CATCH_UP_S = 0.05
"""Largest lag of the loop behind the engine's timeline that back-to-back steps absorb."""


class EngineConfigError(ValueError):
    """The settings are valid one by one but describe an engine that cannot exist."""


@dataclass(eq=False, slots=True)
class Req:
    """One request inside the engine; the HTTP layer waits on `changed` / `done`."""

    gen: GenRequest
    rid: str
    num: int
    """The integer id the engine models know the request by."""
    arrival_s: float
    rank: int = -1
    stage: str = "new"
    output_tokens: int = 0
    """Tokens generated so far (SGLang streams the cumulative text of these)."""
    cached_tokens: int = 0
    first_token_s: float | None = None
    finished_s: float | None = None
    finish_reason: dict[str, Any] | None = None
    error: RequestError | None = None
    task: asyncio.Task[None] | None = None
    transfer_start_s: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def fake_bootstrap(self) -> bool:
        return self.gen.bootstrap_host == bootstrap.FAKE_BOOTSTRAP_HOST


@dataclass(frozen=True, slots=True)
class StepTiming:
    kind: str
    modelled_s: float
    wall_s: float


class Runtime:
    """One emulated engine instance: `submit` requests, `abort` them, read `loads()`."""

    def __init__(self, settings: EngineSettings, cost: CostModel | None = None) -> None:
        s = self.settings = settings
        self.cost = cost or CostModel(CostParams.h200() if s.hardware == "h200" else CostParams.h800())
        self.dp = s.dp_size
        self.ep_size = s.resolved_ep_size
        cap = s.max_total_tokens or self.cost.kv_capacity_tokens_per_rank(ep_size=self.ep_size)
        if cap <= 0:
            raise EngineConfigError(
                f"field 'ep_size': EP{self.ep_size} leaves no GPU memory for KV on {s.hardware}; "
                f"use a larger ep_size or set max_total_tokens"
            )
        self.kv_capacity = cap
        role = Role.DECODE if s.mode == "decode" else Role.PREFILL
        spec = InstanceSpec(
            f"{s.mode}", role, s.dp_size, s.chunk_tokens_per_rank, cap, s.max_running_per_rank
        )
        self.prefill: PrefillEngine | None = None
        self.decode: DecodeEngine | None = None
        if s.mode != "decode":
            self.prefill = PrefillEngine(
                spec,
                self.cost,
                block_tokens=s.prefix_block_tokens,
                prefix_cache=not s.disable_radix_cache,
                jitter_cv=s.jitter_cv,
                rng=random.Random(s.seed),
            )
            self.prefill.ep_size = self.ep_size
        if s.mode != "prefill":
            self.decode = DecodeEngine(spec, self.cost, jitter_cv=s.jitter_cv, rng=random.Random(s.seed + 1))
            self.decode.ep_size = self.ep_size
        self.metrics = EngineMetrics(s)
        self.registry: bootstrap.RoomRegistry | None = None
        if s.mode == "prefill":
            follow = s.resolved_balance == "follow_bootstrap_room" and not s.force_query_prefill_dp_rank
            self.registry = bootstrap.RoomRegistry(s.dp_size, follow, stale_after_s=2 * s.bootstrap_timeout_s)
        self.client = bootstrap.BootstrapClient() if s.mode == "decode" else None

        self.reqs: dict[str, Req] = {}
        self._by_num: dict[int, Req] = {}
        self._num = 0
        self._rr = 0
        self._running: dict[int, Req] = {}
        self._pending_aborts: list[tuple[str, int]] = []
        self._busy = False
        self._step_end: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.crashed: BaseException | None = None
        n = s.dp_size
        self._boot_reqs = [0] * n
        self._boot_tokens = [0] * n
        self._inflight_reqs = [0] * n
        self._inflight_tokens = [0] * n
        self._prefill_tokens = [0] * n
        self._prefill_busy_us = [0.0] * n
        self._prompt_total = [0] * n
        self._cached_total = [0] * n
        self._moments = [[0.0] * 6 for _ in range(n)]
        self._generated = [0] * n
        self._thr_mark: tuple[float, list[int]] | None = None
        self._thr = [0.0] * n
        self._kv_ms = 0.0
        self._kv_gbps = 0.0
        self._snapshot: list[dict[str, Any]] = []
        self._snapshot_due = True
        self._decode_count = 0
        self.prefill_steps = 0
        self.decode_steps = 0
        self.lag_s = 0.0
        """Wall time by which the engine's timeline fell behind the cost model (loop overloaded)."""
        self.lagged_steps = 0
        self.steps: deque[StepTiming] = deque(maxlen=1024)
        """Recent steps (modelled and wall duration), newest last."""

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sbs-engine-{self.settings.mode}")

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def close(self) -> None:
        self._closing = True
        if self.reqs:
            log.info("shutting down: failing %d open requests with 503", len(self.reqs))
        for req in list(self.reqs.values()):
            self._fail(req, 503, "The server is shutting down.", quiet=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # already logged by the loop
                pass
        if self.client is not None:
            await self.client.close()

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    # --- requests in ------------------------------------------------------------------------------
    def submit(self, gen: GenRequest) -> Req:
        """Admit a request or raise `RequestError` (400 for a bad one, 503 while shutting down)."""
        s = self.settings
        if self._closing or not self.healthy:
            raise RequestError(503, "The server is not running.")
        rid = gen.rid or uuid.uuid4().hex
        if rid in self.reqs:
            raise RequestError(400, f"Duplicate request ID: {rid}")
        check_length(gen, s.context_length)
        need = gen.prompt_tokens if s.mode == "prefill" else gen.prompt_tokens + gen.max_new_tokens
        if need > self.kv_capacity:
            raise RequestError(
                400, f"Request {rid} exceeds the maximum number of tokens: {need} > {self.kv_capacity}"
            )
        if s.mode != "null" and gen.bootstrap_room is None:
            raise RequestError(400, "Disaggregated request received without bootstrap room id")
        routed = gen.routed_dp_rank
        if routed is not None and self.dp > 1 and not 0 <= routed < self.dp:
            raise RequestError(400, f"routed_dp_rank {routed} is out of range [0, {self.dp})")
        if self.dp == 1 and routed is not None:
            routed = 0  # SGLang ignores the rank when there is one
        self._num += 1
        req = Req(gen, rid, self._num, self.now())
        self.reqs[rid] = req
        self._by_num[req.num] = req
        if s.mode == "decode":
            self._submit_decode(req, routed)
        elif s.mode == "prefill":
            self._submit_pd_prefill(req, routed)
        else:
            self._enqueue_prefill(req, routed if routed is not None else self._balance(req))
        return req

    def _balance(self, req: Req) -> int:
        """The in-engine DP balancer (SGLang's DP controller) for a request without a rank."""
        method = self.settings.resolved_balance
        room = req.gen.bootstrap_room
        if method == "follow_bootstrap_room" and room is not None:
            return room % self.dp
        if method in ("total_requests", "total_tokens") and self.prefill is not None:
            q, qt = self.prefill.queues, self.prefill.queued_tokens
            if method == "total_requests":
                return min(range(self.dp), key=lambda r: (len(q[r]) + self._boot_reqs[r], r))
            return min(
                range(self.dp), key=lambda r: (qt[r] + self._boot_tokens[r] + self._inflight_tokens[r], r)
            )
        self._rr += 1
        return (self._rr - 1) % self.dp

    def _submit_pd_prefill(self, req: Req, routed: int | None) -> None:
        s = self.settings
        room = req.gen.bootstrap_room
        assert room is not None and self.registry is not None
        rank = req.rank = routed if routed is not None else self._balance(req)
        if req.fake_bootstrap:
            self._enqueue_prefill(req, rank)
            return
        implied = room % self.dp
        if (
            self.dp > 1
            and req.gen.disagg_prefill_dp_rank is None
            and s.resolved_balance == "follow_bootstrap_room"
            and rank != implied
            and not s.force_query_prefill_dp_rank
        ):
            self.metrics.bootstrap_failed.labels(**self.metrics.rank(rank)).inc()
            msg = (
                f"follow_bootstrap_room conflict: dispatched to dp_rank {rank} but bootstrap_room {room} "
                f"implies dp_rank {implied}. Set SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK=1 "
                f"to allow mixed routing."
            )
            self._fail(req, 500, self._prefill_bootstrap_failed(req, msg))
            return
        self.registry.record_rank(room, rank)
        req.stage = "bootstrap"
        self._bootstrap_queue(req, +1)
        req.task = asyncio.create_task(self._await_handshake(req))
        self._changed()

    def _bootstrap_queue(self, req: Req, delta: int) -> None:
        self._boot_reqs[req.rank] += delta
        self._boot_tokens[req.rank] += delta * req.prompt_tokens

    async def _await_handshake(self, req: Req) -> None:
        """Wait for the decode's handshake (a cancelled wait leaves the bookkeeping to `abort`)."""
        assert self.registry is not None and req.gen.bootstrap_room is not None
        r = req.rank
        ok = await self.registry.wait_connected(req.gen.bootstrap_room, r, self.settings.bootstrap_timeout_s)
        self._bootstrap_queue(req, -1)
        if req.finished:
            return
        if ok:
            self._enqueue_prefill(req, r)
            return
        self.metrics.bootstrap_failed.labels(**self.metrics.rank(r)).inc()
        waited = self.now() - req.arrival_s
        msg = f"Request {req.gen.bootstrap_room} timed out after {waited:.1f}s in KVPoll.Bootstrapping"
        self._fail(req, 500, self._prefill_bootstrap_failed(req, msg))

    @staticmethod
    def _prefill_bootstrap_failed(req: Req, msg: str) -> str:
        room = req.gen.bootstrap_room
        return (
            f"Prefill bootstrap failed for request rank={req.rank} req.rid={req.rid!r} "
            f"req.bootstrap_room={room} with exception KVTransferError(bootstrap_room={room}): {msg}"
        )

    @staticmethod
    def _decode_transfer_failed(req: Req, msg: str) -> str:
        room = req.gen.bootstrap_room
        return (
            f"Decode transfer failed for request rank={req.rank} decode_req.req.rid={req.rid!r} "
            f"decode_req.req.bootstrap_room={room} "
            f"with exception KVTransferError(bootstrap_room={room}): {msg}"
        )

    def _enqueue_prefill(self, req: Req, rank: int) -> None:
        assert self.prefill is not None
        s = self.settings
        req.rank = rank
        req.stage = "prefill"
        hashes = (
            () if s.disable_radix_cache else tokens.block_hashes(req.gen.prompt_ids, s.prefix_block_tokens)
        )
        self.prefill.submit(PrefillJob(req.num, req.prompt_tokens, hashes), rank)
        self._wake.set()
        self._changed()

    def _submit_decode(self, req: Req, routed: int | None) -> None:
        assert self.decode is not None
        rank = req.rank = routed if routed is not None else self._balance(req)
        req.stage = "transfer"
        self.decode.reserve(rank, req.prompt_tokens + 1)
        req.task = asyncio.create_task(self._fetch_kv(req))
        self._changed()

    async def _fetch_kv(self, req: Req) -> None:
        """Decode side: find the prefill rank that holds the room, wait for its KV (or time out).
        A cancelled wait (abort) leaves the reservation to `abort`."""
        assert self.decode is not None and self.client is not None
        g = req.gen
        room = g.bootstrap_room
        assert room is not None
        deadline = req.arrival_s + self.settings.bootstrap_timeout_s
        try:
            if not req.fake_bootstrap:
                host, port = g.bootstrap_host or "127.0.0.1", g.bootstrap_port or 8998
                p = g.disagg_prefill_dp_rank
                if p is None:
                    dp, follows = await self.client.prefill_shape(host, port, deadline)
                    p = 0 if dp == 1 else (room % dp if follows else -1)
                await self.client.wait_kv(host, port, room, p, deadline)
        except TimeoutError:
            waited = self.now() - req.arrival_s
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
        assert self.decode is not None
        if req.finished:
            return
        self.decode.unreserve(req.rank, req.prompt_tokens + 1)
        self.metrics.transfer_failed.labels(**self.metrics.rank(req.rank)).inc()
        self._fail(req, 500, self._decode_transfer_failed(req, msg))

    def _kv_arrived(self, req: Req) -> None:
        assert self.decode is not None
        n = req.prompt_tokens
        if req.gen.max_new_tokens <= 1:  # the prefill's token is the whole answer
            self.decode.unreserve(req.rank, n + 1)
            self._first_token(req)
            self._finish(req)
            return
        req.stage = "decode"
        self.decode.add(DecodeJob(req.num, req.rank, n + 1, req.gen.max_new_tokens - 1))
        self._wake.set()
        self._changed()

    # --- aborts -----------------------------------------------------------------------------------
    def abort(self, req: Req, message: str = "Abort in waiting queue") -> None:
        """Take a request out of the engine (client gone or `/abort_request`); no-op once finished."""
        if req.finished:
            return
        if req.task is not None and not req.task.done():
            req.task.cancel()
        if req.stage == "bootstrap":
            self._bootstrap_queue(req, -1)
        elif req.stage == "transfer" and self.decode is not None and self.settings.mode == "decode":
            self.decode.unreserve(req.rank, req.prompt_tokens + 1)
        if req.stage in ("bootstrap", "prefill") and self.registry is not None and not req.fake_bootstrap:
            assert req.gen.bootstrap_room is not None
            self.registry.complete(
                req.gen.bootstrap_room, req.rank, {"status": "failed", "message": "Aborted by AbortReq."}
            )
        if req.stage == "prefill":
            assert self.prefill is not None
            if self.prefill.busy():
                self._pending_aborts.append(("prefill", req.num))
            else:
                self.prefill.abort(req.num)
        elif req.stage == "decode":
            assert self.decode is not None
            self._running.pop(req.num, None)
            if self.decode.busy():
                self._pending_aborts.append(("decode", req.num))
            else:
                self.decode.abort(req.num)
        self.metrics.num_aborted.labels(**self.metrics.base).inc()
        self._close_req(req, {"type": "abort", "message": message})

    def abort_rid(self, rid: str | None, *, abort_all: bool = False) -> int:
        """`/abort_request`: abort by id, or everything; returns how many were aborted."""
        targets = list(self.reqs.values()) if abort_all else [r for r in (self.reqs.get(rid or ""),) if r]
        for req in targets:
            self.abort(req, "Abort by AbortReq.")
        return len(targets)

    def _apply_pending_aborts(self) -> None:
        for kind, num in self._pending_aborts:
            if kind == "prefill" and self.prefill is not None:
                self.prefill.abort(num)
            elif kind == "decode" and self.decode is not None:
                self.decode.abort(num)
        self._pending_aborts.clear()

    def flush_cache(self) -> bool:
        """SGLang `/flush_cache`: only when nothing is running or waiting."""
        if self.reqs:
            return False
        if self.prefill is not None:
            self.prefill.flush_cache()
        return True

    # --- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                if self.prefill is not None and self.prefill.has_work():
                    await self._prefill_step()
                elif self.decode is not None and self.decode.has_work() and await self._decode_step():
                    pass
                else:
                    self._busy = False
                    self._step_end = None
                    self._snapshot_due = True
                    self._wake.clear()
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine loop crashed; failing every open request")
            self.crashed = exc
            for req in list(self.reqs.values()):
                self._fail(req, 500, f"engine emulator crashed: {exc!r}")
            raise

    async def _sleep(self, modelled_s: float) -> float:
        """Sleep out one step; returns its wall duration. A step that follows the previous one back
        to back starts when that one was due to end, so the loop's own work between steps does not
        stretch the engine's timeline (it runs late only when that work outlasts a step)."""
        now = self.now()
        prev = self._step_end
        if prev is not None and now - prev >= CATCH_UP_S:
            self._note_lag(now - prev)
        start = prev if prev is not None and 0.0 <= now - prev < CATCH_UP_S else now
        end = start + modelled_s * self.settings.time_factor
        await asyncio.sleep(max(0.0, end - now))
        self._step_end = end
        return self.now() - start

    def _note_lag(self, lag_s: float) -> None:
        """The loop's own work (HTTP, streams) kept a step from starting on time: the engine's timeline
        stretched by `lag_s`. Counted in `/server_info` (`emulator.lag_s`), logged now and then."""
        self.lag_s += lag_s
        self.lagged_steps += 1
        if self.lagged_steps in (1, 10) or self.lagged_steps % 1000 == 0:
            log.warning(
                "engine loop is %.0f ms behind the modelled timeline (%d late steps, %.1f s in all): "
                "too much HTTP work per step for this time factor; raise --time-factor or --stream-interval",
                lag_s * 1e3,
                self.lagged_steps,
                self.lag_s,
            )

    async def _prefill_step(self) -> None:
        eng = self.prefill
        assert eng is not None
        modelled = eng.start_step(self.now())
        self._busy = True
        self._publish()
        wall = await self._sleep(modelled)
        rec = eng.finish_step()
        self._busy = False
        self.prefill_steps += 1
        self.steps.append(StepTiming("prefill", modelled, wall))
        busy_us = modelled * self.settings.time_factor * 1e6
        for r, t in enumerate(rec.rank_tokens):
            if t:
                self._prefill_tokens[r] += t
                self._prefill_busy_us[r] += busy_us
        self._apply_pending_aborts()
        for job in rec.finished:
            req = self._by_num.get(job.rid)
            if req is not None and not req.finished:
                self._prefill_done(req, job.cached)

    def _prefill_done(self, req: Req, cached: int) -> None:
        r, n = req.rank, req.prompt_tokens
        req.cached_tokens = cached
        self._prompt_total[r] += n
        self._cached_total[r] += cached
        if self.settings.mode == "prefill":
            req.stage = "transfer"
            req.transfer_start_s = self.now()
            self._inflight_reqs[r] += 1
            self._inflight_tokens[r] += n
            delay = 0.0 if req.fake_bootstrap else self.cost.kv_transfer_s(n) * self.settings.time_factor
            asyncio.get_running_loop().call_later(delay, self._transfer_done, req)
            return
        assert self.decode is not None
        self._first_token(req)
        if req.gen.max_new_tokens <= 1:
            self._finish(req)
            return
        req.stage = "decode"
        self.decode.reserve(r, n + 1)
        self.decode.add(DecodeJob(req.num, r, n + 1, req.gen.max_new_tokens - 1))

    def _transfer_done(self, req: Req) -> None:
        r, n = req.rank, req.prompt_tokens
        self._inflight_reqs[r] -= 1
        self._inflight_tokens[r] -= n
        if not req.fake_bootstrap:
            assert self.registry is not None and req.gen.bootstrap_room is not None
            result = {
                "status": "done",
                "prompt_tokens": n,
                "cached_tokens": req.cached_tokens,
                "output_ids": tokens.output_ids(1),
            }
            self.registry.complete(req.gen.bootstrap_room, r, result)
            modelled_s = self.cost.kv_transfer_s(n)
            self._kv_ms = (self.now() - req.transfer_start_s) * 1e3
            self._kv_gbps = n * self.cost.kv_bytes_per_token() / modelled_s / 1e9
            self.metrics.kv_transfer_latency_ms.labels(**self.metrics.rank(r)).observe(self._kv_ms)
        self._changed()
        if req.finished:
            return
        self._first_token(req)
        self._finish(req, {"type": "length", "length": 0})

    async def _decode_step(self) -> bool:
        eng = self.decode
        assert eng is not None
        modelled = eng.start_step(self.now())
        if modelled <= 0:
            return False
        self._busy = True
        step = eng.running
        assert step is not None
        for num in step.first_token:
            req = self._by_num.get(num)
            if req is None:
                continue
            self._running[num] = req
            if req.output_tokens == 0:
                self._first_token(req)
        batch = eng.batch.tolist()
        self._decode_count += 1
        s = self.settings
        if self._decode_count % s.load_snapshot_publish_interval == 0:
            self._publish(gauges=self._decode_count % s.decode_log_interval == 0)
        elif self._decode_count % s.decode_log_interval == 0:
            self.metrics.set_gauges(self._compute_loads())
        self._snapshot_due = False
        wall = await self._sleep(modelled)
        rec = eng.finish_step()
        self._busy = False
        self.decode_steps += 1
        self.steps.append(StepTiming("decode", modelled, wall))
        step_us = modelled * s.time_factor * 1e6
        for r, b in enumerate(batch):
            if b:
                m = self._moments[r]
                m[0] += 1
                m[1] += b
                m[2] += step_us
                m[3] += b * b
                m[4] += b * step_us
                m[5] += b
                self._generated[r] += b
        every = s.stream_interval
        for req in self._running.values():
            req.output_tokens += 1
            if req.gen.stream and (every == 1 or req.output_tokens % every == 0):
                req.changed.set()
        self._apply_pending_aborts()
        for num in rec.finished:
            req = self._running.pop(num, None)
            if req is not None and not req.finished:
                self._finish(req)
        return True

    # --- request outcomes -------------------------------------------------------------------------
    def _first_token(self, req: Req) -> None:
        req.output_tokens = max(req.output_tokens, 1)
        req.first_token_s = self.now()
        self.metrics.ttft.labels(**self.metrics.base).observe(req.first_token_s - req.arrival_s)
        req.changed.set()

    def _finish(self, req: Req, reason: dict[str, Any] | None = None) -> None:
        m, base = self.metrics, self.metrics.base
        m.prompt_tokens.labels(**base).inc(req.prompt_tokens)
        m.generation_tokens.labels(**base).inc(req.output_tokens)
        m.cached_tokens.labels(**base, cache_source="device").inc(req.cached_tokens)
        m.num_requests.labels(**base).inc()
        now = self.now()
        m.e2e.labels(**base).observe(now - req.arrival_s)
        if req.first_token_s is not None and req.output_tokens > 1:
            m.itl.labels(**base).observe((now - req.first_token_s) / (req.output_tokens - 1))
        self._close_req(req, reason or {"type": "length", "length": req.output_tokens})

    def _fail(self, req: Req, status: int, message: str, *, quiet: bool = False) -> None:
        if req.finished:
            return
        if req.task is not None and not req.task.done() and req.task is not asyncio.current_task():
            req.task.cancel()
        req.error = RequestError(status, message)
        if not quiet:
            log.warning("request %s failed (%d): %s", req.rid, status, message)
        self.metrics.num_aborted.labels(**self.metrics.base).inc()
        self._close_req(req, {"type": "abort", "message": message, "status_code": status})

    def _close_req(self, req: Req, reason: dict[str, Any]) -> None:
        req.finish_reason = reason
        req.finished_s = self.now()
        req.stage = "done"
        self.reqs.pop(req.rid, None)
        self._by_num.pop(req.num, None)
        req.done.set()
        req.changed.set()
        self._changed()

    # --- load snapshots ---------------------------------------------------------------------------
    def _changed(self) -> None:
        if not self._busy:
            self._snapshot_due = True

    def _publish(self, *, gauges: bool = True) -> None:
        published = time.time()  # noqa: TID251 (IO edge: SGLang stamps each rank's snapshot in wall time)
        self._snapshot = [{**entry, "timestamp": published} for entry in self._compute_loads()]
        self._snapshot_due = False
        if gauges:
            self.metrics.set_gauges(self._snapshot)

    def loads(self) -> list[dict[str, Any]]:
        """The published per-rank load snapshot (`/v1/loads` entries), refreshed when idle."""
        if self._snapshot_due or not self._snapshot:
            self._publish()
        return self._snapshot

    def render_metrics(self) -> bytes:
        if self._snapshot_due:
            self._publish()
        return self.metrics.render()

    def _throughput(self) -> list[float]:
        now = self.now()
        if self._thr_mark is None:
            self._thr_mark = (now, list(self._generated))
        t0, g0 = self._thr_mark
        if now - t0 >= 0.5:
            self._thr = [(g - h) / (now - t0) for g, h in zip(self._generated, g0, strict=True)]
            self._thr_mark = (now, list(self._generated))
        return self._thr

    def _compute_loads(self) -> list[dict[str, Any]]:
        s, cap = self.settings, self.kv_capacity
        p, d = self.prefill, self.decode
        p_loads = p.loads() if p is not None else None
        d_loads = d.loads() if d is not None else None
        thr = self._throughput()
        weights_gb = round(self.cost.weights_per_gpu_bytes(self.ep_size) / 1e9, 2)
        kv_gb = round(cap * self.cost.kv_bytes_per_token() / 1e9, 2)
        out = []
        for r in range(self.dp):
            running = waiting = uncached = used = waiting_seq = queue_len = 0
            if p is not None and p_loads is not None:
                q = p.queues[r]
                queue_len += len(q)
                waiting += len(q) + self._boot_reqs[r]
                uncached += p_loads[r].num_waiting_uncached_tokens + self._boot_tokens[r]
                used += sum(j.done for j in q if j.remaining >= 0) + self._inflight_tokens[r]
                waiting_seq += p.queued_tokens[r] + self._boot_tokens[r]
            if d is not None and d_loads is not None:
                running += d_loads[r].num_running_reqs
                waiting += d_loads[r].num_waiting_reqs
                used += d_loads[r].num_used_tokens
                queue_len += len(d.waiting[r])
            prompt = self._prompt_total[r]
            out.append(
                {
                    "dp_rank": r,
                    "num_running_reqs": running,
                    "num_waiting_reqs": waiting,
                    "num_waiting_uncached_tokens": uncached,
                    "num_used_tokens": used,
                    "num_total_tokens": used + waiting_seq,
                    "max_total_num_tokens": cap,
                    "max_running_requests": s.max_running_per_rank,
                    "token_usage": round(used / cap, 4),
                    "gen_throughput": round(thr[r], 2),
                    "cache_hit_rate": round(self._cached_total[r] / prompt, 4) if prompt else 0.0,
                    "utilization": 0.0,
                    "total_prefill_uncached_tokens": self._prefill_tokens[r],
                    "total_prefill_busy_us": int(self._prefill_busy_us[r]),
                    "decode_moments": list(self._moments[r]),
                    "memory": {
                        "weight_gb": weights_gb,
                        "kv_cache_gb": kv_gb,
                        "graph_gb": 0.0,
                        "token_capacity": cap,
                    },
                    "disaggregation": {
                        "mode": s.mode,
                        "prefill_bootstrap_queue_reqs": self._boot_reqs[r],
                        "prefill_inflight_queue_reqs": self._inflight_reqs[r],
                        "decode_prealloc_queue_reqs": 0,
                        "decode_transfer_queue_reqs": d.reserved[r] if d is not None else 0,
                        "decode_retracted_queue_reqs": 0,
                        "kv_transfer_speed_gb_s": round(self._kv_gbps, 3),
                        "kv_transfer_latency_ms": round(self._kv_ms, 3),
                    },
                    "queues": {
                        "waiting": queue_len,
                        "grammar": 0,
                        "paused": 0,
                        "retracted": 0,
                        "prealloc_ready": 0,
                    },
                }
            )
        return out
