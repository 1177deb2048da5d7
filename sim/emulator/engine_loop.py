"""`EngineLoop`: the engine's steps on the simulator's engine models, paced in real time.

The loop starts a step whenever there is work (a prefill queue first, else the decode batch), sleeps
the step's modelled duration × `time_factor`, then applies it: prefilled prompts go to the decode
batch (colocated) or on the wire (PD prefill), decode tokens to their requests. With SGLang's prefill
delayer on, each pass goes through the `DelayerGate` shared with the simulator (`sbs.sim.prefill_delayer`);
a held pass runs the decode batch, the started prompts' next chunks, or nothing (`idle_pass_ms`).
Aborts of jobs inside a running step wait for its end (`drop`). Back-to-back steps keep the engine's
timeline; when the loop's own work outlasts a step, the timeline stretches and the lag is counted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sbs.sim.emulator.request_state import Req
from sbs.sim.engine import DecodeJob
from sbs.sim.prefill_delayer import DelayerGate

if TYPE_CHECKING:
    from sbs.sim.emulator.engine_runtime import Runtime

log = logging.getLogger(__name__)

CATCH_UP_S = 0.05
"""Largest lag of the loop behind the engine's timeline that back-to-back steps absorb."""


@dataclass(frozen=True, slots=True)
class StepTiming:
    kind: str
    modelled_s: float
    wall_s: float


class EngineLoop:
    """The step loop of one `Runtime`; it records its steps and lag on the runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.time_factor = runtime.settings.time_factor
        self._running: dict[int, Req] = {}
        self._pending_aborts: list[tuple[str, int]] = []
        self._step_end: float | None = None
        s = runtime.settings
        self.delayer: DelayerGate | None = None
        if s.enable_prefill_delayer and runtime.prefill is not None:
            self.delayer = DelayerGate(s.dp_size, s.prefill_delayer_max_delay_passes,
                                       max_running_per_rank=s.max_running_per_rank)  # fmt: skip

    async def run(self) -> None:
        rt = self.rt
        try:
            while True:
                held = False
                if rt.prefill is not None and rt.prefill.has_work():
                    if await self._prefill_step():
                        continue
                    held = True  # the delayer holds every queued prompt this pass
                if rt.decode is not None and rt.decode.has_work() and await self._decode_step():
                    pass
                elif held:
                    await self._sleep_step("idle", rt.settings.idle_pass_ms / 1e3)
                else:
                    rt.book.idle()
                    self._step_end = None
                    rt.wake.clear()
                    await rt.wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine loop crashed; failing every open request")
            rt.crashed = exc
            for req in list(rt.reqs.values()):
                rt.fail(req, 500, f"engine emulator crashed: {exc!r}")
            raise

    async def _sleep(self, modelled_s: float) -> float:
        """Sleep out one step; returns its wall duration. A step that follows the previous one back
        to back starts when that one was due to end, so the loop's own work between steps does not
        stretch the engine's timeline (it runs late only when that work outlasts a step)."""
        now = self.rt.now()
        prev = self._step_end
        if prev is not None and now - prev >= CATCH_UP_S:
            self._note_lag(now - prev)
        start = prev if prev is not None and 0.0 <= now - prev < CATCH_UP_S else now
        end = start + modelled_s * self.time_factor
        await asyncio.sleep(max(0.0, end - now))
        self._step_end = end
        return self.rt.now() - start

    async def _sleep_step(self, kind: str, modelled_s: float) -> None:
        """Sleep out a step, then record it (the step is over: the load book may publish again)."""
        wall = await self._sleep(modelled_s)
        self.rt.book.busy = False
        self.rt.steps.append(StepTiming(kind, modelled_s, wall))

    def _note_lag(self, lag_s: float) -> None:
        """The loop's own work (HTTP, streams) kept a step from starting on time: the engine's timeline
        stretched by `lag_s`. Counted in `/server_info` (`emulator.lag_s`), logged now and then."""
        rt = self.rt
        rt.lag_s += lag_s
        rt.lagged_steps += 1
        if rt.lagged_steps in (1, 10) or rt.lagged_steps % 1000 == 0:
            log.warning(
                "engine loop is %.0f ms behind the modelled timeline (%d late steps, %.1f s in all): "
                "too much HTTP work per step for this time factor; raise --time-factor or --stream-interval",
                lag_s * 1e3,
                rt.lagged_steps,
                rt.lag_s,
            )

    async def _prefill_step(self) -> bool:
        """One prefill step; False when the prefill delayer held every queued prompt (no step)."""
        rt, book = self.rt, self.rt.book
        eng = rt.prefill
        assert eng is not None
        if self.delayer is None:
            modelled = eng.start_step(rt.now())
        else:  # a PD prefill has no decode batch: every rank reports none running
            running = rt.decode.batch.tolist() if rt.decode is not None else None
            modelled = self.delayer.start_step(eng, rt.now(), running)
        if modelled <= 0:
            return False
        book.busy = True
        book.publish()
        await self._sleep_step("prefill", modelled)
        rec = eng.finish_step()
        rt.prefill_steps += 1
        book.prefill_step(rec.rank_tokens, modelled * self.time_factor * 1e6)
        self._apply_pending_aborts()
        end = rt.now()  # one stamp per batch, as SGLang's
        for job in rec.finished:
            req = rt.by_num.get(job.rid)
            if req is not None and not req.finished:
                req.forward_entry_s, req.prefill_finished_s = job.entered_s, end
                self._prefill_done(req, job.cached)
        return True

    def _prefill_done(self, req: Req, cached: int) -> None:
        rt = self.rt
        r, n = req.rank, req.prompt_tokens
        req.cached_tokens = cached
        rt.book.prefill_done(r, n, cached)
        if rt.settings.mode == "prefill":
            rt.pd.start_transfer(req)
            return
        assert rt.decode is not None
        rt.first_token(req)
        if req.gen.max_new_tokens <= 1:
            rt.finish(req)
            return
        req.stage = "decode"
        rt.decode.reserve(r, n + 1)
        rt.decode.add(DecodeJob(req.num, r, n + 1, req.gen.max_new_tokens - 1, priority=req.gen.priority))

    async def _decode_step(self) -> bool:
        rt, book = self.rt, self.rt.book
        eng = rt.decode
        assert eng is not None
        modelled = eng.start_step(rt.now())
        if modelled <= 0:
            return False
        book.busy = True
        step = eng.running
        assert step is not None
        for num in step.first_token:
            req = rt.by_num.get(num)
            if req is None:
                continue
            self._running[num] = req
            if req.output_tokens == 0:
                rt.first_token(req)
        batch = eng.batch.tolist()
        book.decode_step_started()
        await self._sleep_step("decode", modelled)
        rec = eng.finish_step()
        rt.decode_steps += 1
        book.decode_step(batch, modelled * self.time_factor * 1e6)
        every = rt.settings.stream_interval
        for req in self._running.values():
            req.output_tokens += 1
            if req.gen.stream and (every == 1 or req.output_tokens % every == 0):
                req.changed.set()
        self._apply_pending_aborts()
        for num in rec.finished:
            req = self._running.pop(num, None)
            if req is not None and not req.finished:
                rt.finish(req)
        return True

    # --- aborts -----------------------------------------------------------------------------------
    def drop(self, req: Req) -> None:
        """Take an aborted request's job out of the engine model: now, or at the end of the step
        that holds it."""
        rt = self.rt
        if req.stage == "prefill":
            assert rt.prefill is not None
            if rt.prefill.busy():
                self._pending_aborts.append(("prefill", req.num))
            else:
                rt.prefill.abort(req.num)
        elif req.stage == "decode":
            assert rt.decode is not None
            self._running.pop(req.num, None)
            if rt.decode.busy():
                self._pending_aborts.append(("decode", req.num))
            else:
                rt.decode.abort(req.num)

    def _apply_pending_aborts(self) -> None:
        rt = self.rt
        for kind, num in self._pending_aborts:
            if kind == "prefill" and rt.prefill is not None:
                rt.prefill.abort(num)
            elif kind == "decode" and rt.decode is not None:
                rt.decode.abort(num)
        self._pending_aborts.clear()
