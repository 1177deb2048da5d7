"""`CoreLoop`: how the simulator (and the core's `FakeCluster`) hand decisions on and wake the core."""

from __future__ import annotations

import heapq

from sbs.scheduler.core.types import Dispatch, Reject
from sbs.sim.core_loop import DISPATCH, FIRST_FREE_KIND, TIMER, CoreLoop


class StubScheduler:
    """Answers each `handle` with the next scripted decisions and reports a fixed deadline."""

    def __init__(self, *rounds: list, deadline: float | None = None) -> None:
        self.rounds = list(rounds)
        self.deadline = deadline
        self.seen: list[tuple[object, float]] = []

    def handle(self, event: object, now: float) -> list:
        self.seen.append((event, now))
        return self.rounds.pop(0) if self.rounds else []

    def next_deadline(self) -> float | None:
        return self.deadline


def dispatch(rid: int, instance: int) -> Dispatch:
    return Dispatch(rid, instance, 0, 0, 0)


def drain(loop: CoreLoop) -> list[tuple[float, int, object]]:
    out = []
    while loop.heap:
        t, _, kind, payload = heapq.heappop(loop.heap)
        out.append((t, kind, payload))
    return out


def test_a_rounds_dispatches_reach_each_instance_as_one_message() -> None:
    d0, d1, d2 = dispatch(0, 1), dispatch(1, 0), dispatch(2, 1)
    sched = StubScheduler([d0, d1, Reject(3, "full"), d2])
    loop = CoreLoop(sched, transit_s=0.25)  # type: ignore[arg-type]
    decisions = loop.handle("event", 1.0)
    assert decisions == [d0, d1, Reject(3, "full"), d2]
    assert sched.seen == [("event", 1.0)]
    assert drain(loop) == [(1.25, DISPATCH, [d0, d2]), (1.25, DISPATCH, [d1])]


def test_one_timer_at_the_deadline_never_before_a_microsecond_from_now() -> None:
    sched = StubScheduler(deadline=0.5)
    loop = CoreLoop(sched, transit_s=0.0)  # type: ignore[arg-type]
    loop.handle(None, 1.0)  # a deadline already past fires just after now
    sched.deadline = 2.0
    loop.handle(None, 1.0)  # later than the pending timer: no second one
    assert drain(loop) == [(1.0 + 1e-6, TIMER, None)]
    loop.on_timer(1.0 + 1e-6)  # fired: the next deadline gets a timer again
    assert drain(loop) == [(2.0, TIMER, None)]
    assert sched.seen[-1] == (None, 1.0 + 1e-6)


def test_ties_pop_in_creation_order() -> None:
    loop = CoreLoop(StubScheduler(), transit_s=0.0)  # type: ignore[arg-type]
    for kind, name in ((FIRST_FREE_KIND + 2, "c"), (FIRST_FREE_KIND, "a"), (FIRST_FREE_KIND + 1, "b")):
        loop.push(3.0, kind, name)
    loop.push(1.0, FIRST_FREE_KIND, "first")
    assert [p for _, _, p in drain(loop)] == ["first", "c", "a", "b"]
