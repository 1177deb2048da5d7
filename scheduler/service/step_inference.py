"""Prefill step completions from prefill answers (SGLang sends no step events).

With `--enable-metrics` (the operator always sets it) SGLang 0.5.23 puts its scheduler's time stats
in each answer's `meta_info`: `forward_entry_time` (the start of the step that ran the request's first
chunk) and `prefill_finished_time` (the end of the step that finished it), Unix seconds stamped once
per batch. Answers whose `prefill_finished_time` lie within `SAME_STEP_S` of each other are one step;
`step_report.step_start` says when it began (the simulator applies the same rule). The step reaches the
pool as `StepCompleted` on the loop's clock; answers of a step already reported add their requests to
it (the core recognises the repeated end).

Each stamped answer also times its request's admission: it became schedulable at `forward_entry_time
- queue_time` (SGLang starts that wait when the PD bootstrap completes), so dispatch → schedulable is
measured, and the step's longest such lag goes with it (`StepCompleted.admission_s`). A busy SGLang
engine moves bootstrapped requests to its waiting queue only between steps, so an admission within
`POLL_S` after a step end says only "by then" and is not used.

Without the stamps, answers of one engine arriving within `step_merge_s` of each other are taken as one
step, which started when the previous inferred step ended (or when its last request was sent).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from sbs.scheduler.core.events import StepCompleted
from sbs.scheduler.core.step_report import SAME_STEP_S, step_start
from sbs.scheduler.service.engine_registry import Engine
from sbs.scheduler.service.engine_watch import wall_clock
from sbs.scheduler.service.jobs import Job

if TYPE_CHECKING:
    from sbs.scheduler.service.dispatcher import Dispatcher

POLL_S = 0.01
"""An admission this soon after a step end was seen at the engine's poll between steps."""
_RECENT_ENDS = 8

Stamps = tuple[float, float, float]
"""(`forward_entry_time`, `prefill_finished_time` (Unix seconds), `queue_time` (-1: absent)) of one
answer."""
_Answer = tuple[int, float, int, Stamps | None, bool]
"""(rid, send time, pool generation, stamps, whether its prompt fits in one chunk)."""
_Step = tuple[float, float, list[_Answer], float, bool]
"""(start, end, answers, longest admission lag, timed) of one reported step, on the loop's clock."""


class StepInference:
    """Per prefill engine: the requests sent and not yet answered, and the answers being merged."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._sent: dict[str, dict[tuple[int, int], tuple[float, int]]] = {}
        """Prefill engine key → (rid, attempt) → (send time, pool generation), until it answers."""
        self._done: dict[str, list[_Answer]] = {}
        self._end: dict[str, float] = {}
        self._ends: dict[str, deque[float]] = {}
        """Per engine: the latest stamped step ends, on the loop's clock (to spot polled admissions)."""

    def prefill_sent(self, job: Job, engine: Engine) -> None:
        """The prefill side of `job`'s current attempt was sent to `engine`."""
        sent = self._sent.setdefault(engine.key, {})
        sent[(job.rid, job.attempts)] = (self._d.now(), job.generation)

    def prefill_answered(
        self, job: Job, engine: Engine, attempt: int, ok: bool, stamps: Stamps | None = None
    ) -> None:
        """The prefill side of one attempt ended: `ok` when the engine answered that its prefill is
        done (one more completion of a step, timed by `stamps` when the answer had them), else failed
        or cancelled."""
        entry = self._sent.get(engine.key, {}).pop((job.rid, attempt), None)
        if entry is None or not ok:
            return
        if job.attempts == attempt:
            job.prefilled = True
        pending = self._done.setdefault(engine.key, [])
        one_chunk = engine.spec is not None and job.request.prompt_tokens <= engine.spec.chunk_tokens
        pending.append((job.rid, *entry, stamps, one_chunk))
        if len(pending) == 1:
            self._d.call_later(self._d.settings.engines.step_merge_s, self._flush, engine, self._d.now())

    def _flush(self, engine: Engine, end: float) -> None:
        """Report the step(s) of `engine` whose answers were collected since `end`."""
        done = self._done.pop(engine.key, [])
        if not done:
            return
        found = self._d.pools.of(engine)
        if all(a[3] is not None for a in done):
            steps = self._stamped_steps(engine.key, done)
        else:
            steps = [self._merged_step(engine.key, done, end)]
        if found is None:
            return
        pool, i = found
        for started, stop, answers, admission, timed in steps:
            rids = tuple(a[0] for a in answers if a[2] == pool.generation)
            queued = self._queued(engine.key, stop, answers)
            duration = max(stop - started, 1e-6)
            self._d.feed(pool, StepCompleted(i, started, duration, rids, queued, admission, timed))

    def _merged_step(self, key: str, done: list[_Answer], end: float) -> _Step:
        """One step ending at the first answer, from the answers' arrival alone."""
        started = max(self._end.get(key, -math.inf), max(a[1] for a in done))
        self._end[key] = end
        return started, end, done, 0.0, True

    def _stamped_steps(self, key: str, done: list[_Answer]) -> list[_Step]:
        """The answers grouped by the step that finished them, on the loop's clock, oldest first."""
        shift = wall_clock() - self._d.now()
        done.sort(key=lambda a: a[3][1])  # type: ignore[index]
        groups: list[list[_Answer]] = []
        for a in done:
            if groups and a[3][1] - groups[-1][0][3][1] <= SAME_STEP_S:  # type: ignore[index]
                groups[-1].append(a)
            else:
                groups.append([a])
        ends = self._ends.setdefault(key, deque(maxlen=_RECENT_ENDS))
        steps: list[_Step] = []
        for group in groups:
            previous = self._end.get(key, -math.inf)
            stop = group[0][3][1] - shift  # type: ignore[index]
            entries = [a[3][0] - shift for a in group if a[4]]  # type: ignore[index]
            entry = min(max(entries), stop) if entries else -math.inf  # (a longer prompt began earlier)
            admission = self._admission(group, shift, ends)
            if stop <= previous + SAME_STEP_S:  # more answers of a step already reported: only the end
                stop = previous if stop >= previous - SAME_STEP_S else stop  # (an older one: as stamped)
                steps.append((stop - 1e-6, stop, group, admission, False))
                continue
            self._end[key] = stop
            ends.append(stop)
            start, timed = step_start(entry, previous, stop)
            steps.append((start, stop, group, admission, timed))
        return steps

    @staticmethod
    def _admission(group: list[_Answer], shift: float, ends: deque[float]) -> float:
        """The longest dispatch → schedulable lag among `group`'s answers that time it (0: none)."""
        longest = 0.0
        for _, sent, _, (entry, _, queued), _ in group:  # type: ignore[misc]
            if queued < 0:
                continue
            admitted = entry - queued - shift
            if any(0.0 <= admitted - end <= POLL_S for end in ends):
                continue  # seen at a poll between steps: says only "by then"
            longest = max(longest, admitted - sent)
        return longest

    def _queued(self, key: str, stop: float, answers: list[_Answer]) -> bool:
        """Whether the engine had more prefill work when the step ended. Stamped: a request sent by
        then and not answered (a chunked prompt continuing, a request waiting; or one the step
        finished whose answer is still on its way, which the core unlearns when it comes); unstamped:
        any request not answered."""
        sent = self._sent.get(key)
        if not sent:
            return False
        if answers[0][3] is None:
            return True
        return any(s <= stop for s, _ in sent.values())
