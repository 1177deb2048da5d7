"""The scheduler's side of a discrete-event loop: the event heap, and how decisions leave the core.

`CoreLoop` is shared by the simulator (`Simulation`) and the scheduling core's test `FakeCluster`, so
both play the core the same way: events pop in (time, creation order), a round's dispatches reach
each prefill instance as one message `transit_s` later, and the scheduler is woken by one timer at its
`next_deadline()`, never earlier than 1 µs after now. The owner handles every other kind of event.
"""

from __future__ import annotations

import heapq
import math

from sbs.scheduler.core.events import Event
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Decision, Dispatch

TIMER = 0
"""Kind of the scheduler's wake-up; the owner passes it to `on_timer`."""
DISPATCH = 1
"""Kind of a message of dispatches to one prefill instance (payload: `list[Dispatch]`)."""
FIRST_FREE_KIND = 2
"""The owner's own event kinds start here."""

MIN_TIMER_STEP_S = 1e-6
"""A deadline at or before now fires this long after now, so the clock always advances."""


class CoreLoop:
    """An event heap of (time, sequence, kind, payload) and a `Scheduler` fed from it."""

    def __init__(self, scheduler: Scheduler, transit_s: float) -> None:
        self.scheduler = scheduler
        self.transit_s = transit_s
        """Scheduler → engine delay of a dispatch message."""
        self.heap: list[tuple[float, int, int, object]] = []
        """Pop it with `heapq.heappop`; the sequence number breaks time ties in creation order."""
        self._seq = 0
        self._timer_at = math.inf

    def push(self, t: float, kind: int, payload: object = None) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, payload))

    def handle(self, event: Event | None, t: float) -> list[Decision]:
        """`event` (None: a wake-up) into the scheduler at `t`; its dispatches and next wake-up are queued."""
        decisions = self.scheduler.handle(event, t)
        batches: dict[int, list[Dispatch]] = {}
        for d in decisions:
            if isinstance(d, Dispatch):
                batches.setdefault(d.prefill_instance, []).append(d)
        for batch in batches.values():  # a released batch reaches its engine as one message
            self.push(t + self.transit_s, DISPATCH, batch)
        dl = self.scheduler.next_deadline()
        if dl is not None:
            dl = max(dl, t + MIN_TIMER_STEP_S)
            if dl < self._timer_at:
                self._timer_at = dl
                self.push(dl, TIMER)
        return decisions

    def on_timer(self, t: float) -> list[Decision]:
        """A popped `TIMER` event: wake the scheduler."""
        self._timer_at = math.inf
        return self.handle(None, t)
