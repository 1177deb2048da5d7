"""The scheduler's side of a discrete-event loop: the event heap, and how decisions leave the core.

`CoreLoop` is shared by the simulator (`Simulation`) and the scheduling core's test `FakeCluster`, so
both play the core the same way: events pop in (time, creation order), a round's dispatches reach
each prefill instance as one message `transit_s` later, and the scheduler is woken by one timer at its
`next_deadline()`, never earlier than 1 µs after now. The owner handles every other kind of event.

Several scheduler replicas (`sim/replicas.py`) share one `EventHeap`, so creation order stays global;
each replica's `CoreLoop` maps its scheduler's prefill indices (its partition) back to the cluster's
and tags its timer with its own index.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from sbs.scheduler.core.events import Event
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Decision, Dispatch

TIMER = 0
"""Kind of the scheduler's wake-up; the owner passes it to `on_timer` (payload: the loop's `timer_tag`)."""
DISPATCH = 1
"""Kind of a message of dispatches to one prefill instance (payload: `list[Dispatch]`)."""
FIRST_FREE_KIND = 2
"""The owner's own event kinds start here."""

MIN_TIMER_STEP_S = 1e-6
"""A deadline at or before now fires this long after now, so the clock always advances."""


class EventHeap:
    """A heap of (time, sequence, kind, payload); the sequence number breaks time ties in creation order."""

    __slots__ = ("heap", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, object]] = []
        """Pop it with `heapq.heappop`."""
        self.seq = 0

    def push(self, t: float, kind: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))


class CoreLoop:
    """A `Scheduler` fed from an event heap (its own, or one shared with other replicas' loops)."""

    def __init__(
        self,
        scheduler: Scheduler,
        transit_s: float,
        *,
        events: EventHeap | None = None,
        prefill_ids: Sequence[int] | None = None,
        timer_tag: object = None,
    ) -> None:
        self.scheduler = scheduler
        self.transit_s = transit_s
        """Scheduler → engine delay of a dispatch message."""
        self.events = events or EventHeap()
        self.heap = self.events.heap
        """Pop it with `heapq.heappop`; the sequence number breaks time ties in creation order."""
        self.prefill_ids = list(prefill_ids) if prefill_ids is not None else None
        """The cluster's index of the scheduler's prefill instance i (None: the same index)."""
        self.timer_tag = timer_tag
        """Payload of this loop's `TIMER` events (which replica to wake)."""
        self._timer_at = math.inf

    def push(self, t: float, kind: int, payload: object = None) -> None:
        self.events.push(t, kind, payload)

    def handle(self, event: Event | None, t: float) -> list[Decision]:
        """`event` (None: a wake-up) into the scheduler at `t`; its dispatches and next wake-up are queued.

        Returns the decisions, dispatches with the cluster's prefill index."""
        decisions = self.scheduler.handle(event, t)
        if decisions:
            ids = self.prefill_ids
            if ids is not None:
                decisions = [_renumbered(d, ids) for d in decisions]
            batches: dict[int, list[Dispatch]] = {}
            for d in decisions:
                if isinstance(d, Dispatch):
                    batches.setdefault(d.prefill_instance, []).append(d)
            for batch in batches.values():  # a released batch reaches its engine as one message
                self.events.push(t + self.transit_s, DISPATCH, batch)
        dl = self.scheduler.next_deadline()
        if dl is not None:
            dl = max(dl, t + MIN_TIMER_STEP_S)
            if dl < self._timer_at:
                self._timer_at = dl
                self.events.push(dl, TIMER, self.timer_tag)
        return decisions

    def on_timer(self, t: float) -> list[Decision]:
        """A popped `TIMER` event: wake the scheduler."""
        self._timer_at = math.inf
        return self.handle(None, t)


def _renumbered(d: Decision, ids: Sequence[int]) -> Decision:
    """A dispatch with its instance's cluster index; other decisions as they are."""
    if isinstance(d, Dispatch):
        return d._replace(prefill_instance=ids[d.prefill_instance])
    return d
