"""The real-time engine: the simulator's engine models (`sbs.sim.engine`) driven by an asyncio loop.

One `Runtime` per engine instance. Which requests run, in what chunks, how long a step takes, when a
decode joins the batch and when KV is full are decided by the same `PrefillEngine` / `DecodeEngine`
the simulator uses; the runtime adds what a live engine has on top. This module holds the runtime
itself: admission (SGLang's checks and error messages), the in-engine DP balancer, request outcomes
(first token, finish, failure, abort) and the lifecycle. Its parts: `EngineLoop` (engine_loop.py,
the paced steps), `PdTransfer` (pd_transfer.py, the PD handshake and KV transfer) and `LoadBook`
(load_snapshot.py, load counters, snapshots and gauges). Request stages: see `request_state`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import deque
from typing import Any

from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.sim.costmodel import CostModel, CostParams
from sbs.sim.emulator import tokens
from sbs.sim.emulator.engine_loop import EngineLoop, StepTiming
from sbs.sim.emulator.load_snapshot import LoadBook
from sbs.sim.emulator.pd_transfer import PdTransfer
from sbs.sim.emulator.request_state import Req
from sbs.sim.emulator.requests import GenRequest, RequestError, check_length
from sbs.sim.emulator.settings import EngineSettings
from sbs.sim.emulator.sglang_metrics import EngineMetrics
from sbs.sim.engine import DecodeEngine, PrefillEngine, PrefillJob

log = logging.getLogger(__name__)


PRIORITY_DISABLED = (
    "Using priority is disabled for this server. Please send a new request without a priority."
)
"""SGLang's answer (503) to a `priority` under `--abort-on-priority-when-disabled`."""


class EngineConfigError(ValueError):
    """The settings are valid one by one but describe an engine that cannot exist."""


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
                priority=s.priority_order,
            )
            self.prefill.ep_size = self.ep_size
        if s.mode != "prefill":
            self.decode = DecodeEngine(
                spec,
                self.cost,
                jitter_cv=s.jitter_cv,
                rng=random.Random(s.seed + 1),
                priority=s.priority_order,
            )
            self.decode.ep_size = self.ep_size
        self.metrics = EngineMetrics(s)
        self.pd = PdTransfer(self)
        self.registry = self.pd.registry
        """The bootstrap rooms a PD prefill's bootstrap server answers from (None elsewhere)."""
        self.book = LoadBook(self)
        self.loop = EngineLoop(self)

        self.reqs: dict[str, Req] = {}
        self.by_num: dict[int, Req] = {}
        self._num = 0
        self._rr = 0
        self.wake = asyncio.Event()
        """Set when work arrives for an idle loop."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.crashed: BaseException | None = None
        # what the loop records of its steps
        self.prefill_steps = 0
        self.decode_steps = 0
        self.lag_s = 0.0
        """Wall time by which the engine's timeline fell behind the cost model (loop overloaded)."""
        self.lagged_steps = 0
        self.steps: deque[StepTiming] = deque(maxlen=1024)
        """Recent steps (modelled and wall duration), newest last."""

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self.loop.run(), name=f"sbs-engine-{self.settings.mode}")

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def close(self) -> None:
        self._closing = True
        if self.reqs:
            log.info("shutting down: failing %d open requests with 503", len(self.reqs))
        for req in list(self.reqs.values()):
            self.fail(req, 503, "The server is shutting down.", quiet=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # already logged by the loop
                pass
        await self.pd.close()

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
        refuse_priority = s.abort_on_priority_when_disabled and not s.enable_priority_scheduling
        if gen.priority is not None and refuse_priority:  # else an unused priority is ignored
            raise RequestError(503, PRIORITY_DISABLED)
        self._num += 1
        req = Req(gen, rid, self._num, self.now())
        self.reqs[rid] = req
        self.by_num[req.num] = req
        if s.mode == "decode":
            self.pd.submit_decode(req, routed)
        elif s.mode == "prefill":
            self.pd.submit_prefill(req, routed)
        else:
            self.enqueue_prefill(req, routed if routed is not None else self.balance(req))
        return req

    def balance(self, req: Req) -> int:
        """The in-engine DP balancer (SGLang's DP controller) for a request without a rank."""
        method = self.settings.resolved_balance
        room = req.gen.bootstrap_room
        if method == "follow_bootstrap_room" and room is not None:
            return room % self.dp
        if method in ("total_requests", "total_tokens") and self.prefill is not None:
            q, qt, book = self.prefill.queues, self.prefill.queued_tokens, self.book
            if method == "total_requests":
                return min(range(self.dp), key=lambda r: (len(q[r]) + book.boot_reqs[r], r))
            return min(
                range(self.dp), key=lambda r: (qt[r] + book.boot_tokens[r] + book.inflight_tokens[r], r)
            )
        self._rr += 1
        return (self._rr - 1) % self.dp

    def enqueue_prefill(self, req: Req, rank: int) -> None:
        assert self.prefill is not None
        s = self.settings
        req.rank = rank
        req.stage = "prefill"
        req.waiting_s = self.now()
        hashes = (
            () if s.disable_radix_cache else tokens.block_hashes(req.gen.prompt_ids, s.prefix_block_tokens)
        )
        self.prefill.submit(PrefillJob(req.num, req.prompt_tokens, hashes, priority=req.gen.priority), rank)
        self.wake.set()
        self.book.changed()

    # --- aborts -----------------------------------------------------------------------------------
    def abort(self, req: Req, message: str = "Abort in waiting queue") -> None:
        """Take a request out of the engine (client gone or `/abort_request`); no-op once finished."""
        if req.finished:
            return
        if req.task is not None and not req.task.done():
            req.task.cancel()
        self.pd.abort(req)
        self.loop.drop(req)
        self.metrics.num_aborted.labels(**self.metrics.base).inc()
        self._close_req(req, {"type": "abort", "message": message})

    def abort_rid(self, rid: str | None, *, abort_all: bool = False) -> int:
        """`/abort_request`: abort by id, or everything; returns how many were aborted."""
        targets = list(self.reqs.values()) if abort_all else [r for r in (self.reqs.get(rid or ""),) if r]
        for req in targets:
            self.abort(req, "Abort by AbortReq.")
        return len(targets)

    def flush_cache(self) -> bool:
        """SGLang `/flush_cache`: only when nothing is running or waiting."""
        if self.reqs:
            return False
        if self.prefill is not None:
            self.prefill.flush_cache()
        return True

    # --- request outcomes -------------------------------------------------------------------------
    def first_token(self, req: Req) -> None:
        req.output_tokens = max(req.output_tokens, 1)
        req.first_token_s = self.now()
        self.metrics.ttft.labels(**self.metrics.base).observe(req.first_token_s - req.arrival_s)
        req.changed.set()

    def finish(self, req: Req, reason: dict[str, Any] | None = None) -> None:
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

    def fail(self, req: Req, status: int, message: str, *, quiet: bool = False) -> None:
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
        self.by_num.pop(req.num, None)
        req.done.set()
        req.changed.set()
        self.book.changed()

    # --- load snapshots ---------------------------------------------------------------------------
    def loads(self) -> list[dict[str, Any]]:
        """The published per-rank load snapshot (`/v1/loads` entries), refreshed when idle."""
        return self.book.current()

    def render_metrics(self) -> bytes:
        return self.book.render_metrics()
