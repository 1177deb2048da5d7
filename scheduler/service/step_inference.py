"""Inferring prefill step completions from prefill answers (SGLang reports no step events).

Prefill answers of one engine arriving within `step_merge_s` of each other are one forward step,
which started when the previous inferred step ended (or when its last request was sent); it is fed
to the engine's pool as `StepCompleted`, with whether more prefill work was still outstanding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sbs.scheduler.core.events import StepCompleted
from sbs.scheduler.service.engine_registry import Engine
from sbs.scheduler.service.jobs import Job

if TYPE_CHECKING:
    from sbs.scheduler.service.dispatcher import Dispatcher


class StepInference:
    """Per prefill engine: the requests sent and not yet answered, and the answers being merged."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._sent: dict[str, dict[tuple[int, int], tuple[float, int]]] = {}
        """Prefill engine key → (rid, attempt) → (send time, pool generation), until it answers."""
        self._done: dict[str, list[tuple[int, float, int]]] = {}
        self._end: dict[str, float] = {}

    def prefill_sent(self, job: Job, engine: Engine) -> None:
        """The prefill side of `job`'s current attempt was sent to `engine`."""
        sent = self._sent.setdefault(engine.key, {})
        sent[(job.rid, job.attempts)] = (self._d.now(), job.generation)

    def prefill_answered(self, job: Job, engine: Engine, attempt: int, ok: bool) -> None:
        """The prefill side of one attempt ended: `ok` when the engine answered that its prefill is
        done (one more completion of an inferred step), else failed or cancelled."""
        entry = self._sent.get(engine.key, {}).pop((job.rid, attempt), None)
        if entry is None or not ok:
            return
        if job.attempts == attempt:
            job.prefilled = True
        pending = self._done.setdefault(engine.key, [])
        pending.append((job.rid, *entry))
        if len(pending) == 1:
            self._d.call_later(self._d.settings.engines.step_merge_s, self._flush, engine, self._d.now())

    def _flush(self, engine: Engine, end: float) -> None:
        """Infer one prefill step of `engine` from the answers collected since `end`."""
        done = self._done.pop(engine.key, [])
        if not done:
            return
        started = max(self._end.get(engine.key, -math.inf), max(s for _, s, _ in done))
        self._end[engine.key] = end
        found = self._d.pools.of(engine)
        if found is None:
            return
        pool, i = found
        queued = bool(self._sent.get(engine.key))
        rids = tuple(rid for rid, _, generation in done if generation == pool.generation)
        self._d.feed(pool, StepCompleted(i, started, max(end - started, 1e-6), rids, queued))
