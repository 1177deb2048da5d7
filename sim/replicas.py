"""Scheduler replicas in one simulation: each is its own `Scheduler` core over a partition of the prefill
instances, and all of them share the decode instances.

This is the multi-replica design driven as the service would drive it:
- Ownership. The partition comes from `sbs.scheduler.core.ownership.assign`, keyed by instance name and
  weighted by DP size, over the members `replica-0` … `replica-{N-1}`.
- Arrivals. They are spread over the replicas the way a Kubernetes Service spreads connections:
  round robin, or at random per request. The replica that accepts a request schedules it onto the
  prefill instances it owns.
- Reports. A prefill instance's step reports and snapshots go only to its owner, renumbered to the
  owner's local index. Decode snapshots go to every replica. A finished request is reported to the
  replica that dispatched it. Between snapshots, each core knows only its own dispatches (its
  optimistic accounting).

With one replica, events reach the single core exactly as `Simulation` fed it before replicas
existed: same calls, same order.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from sbs.scheduler.core import ownership
from sbs.scheduler.core.events import Event, LoadReported, RequestArrived, RequestFinished, StepCompleted
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.state import SchedulerStats
from sbs.scheduler.core.types import Decision, InstanceSpec, Request, Role
from sbs.sim.core_loop import CoreLoop, EventHeap
from sbs.sim.errors import ClusterConfigError

SPREADS = ("round_robin", "random")
"""How arrivals are spread over replicas (Kubernetes Service: per connection, here per request)."""


def partition(prefill: Sequence[InstanceSpec], replicas: int) -> list[list[int]]:
    """Per replica, the cluster indices of the prefill instances it owns (`ownership.assign`)."""
    members = [f"replica-{k}" for k in range(replicas)]
    owners = ownership.assign([(s.name, s.dp_size) for s in prefill], members)
    parts = [[i for i, s in enumerate(prefill) if owners[s.name] == m] for m in members]
    empty = [members[k] for k, ids in enumerate(parts) if not ids]
    if empty:
        raise ClusterConfigError(
            f"{replicas} scheduler replicas over {len(prefill)} prefill instances leave "
            f"{', '.join(empty)} without one; use at most as many replicas as prefill instances"
        )
    return parts


class Replicas:
    """The scheduler side of a simulation: one `CoreLoop` per replica on a shared `EventHeap`."""

    def __init__(
        self,
        make_scheduler: Callable[[Sequence[InstanceSpec], int], Scheduler],
        prefill: Sequence[InstanceSpec],
        *,
        count: int,
        spread: str,
        transit_s: float,
        seed: int,
        requests: int,
    ) -> None:
        """`make_scheduler(owned prefill specs, replica index)` builds one replica's core."""
        if spread not in SPREADS:
            raise ClusterConfigError(f"replica spread must be one of {', '.join(SPREADS)}, got {spread!r}")
        self.events = EventHeap()
        if count == 1:
            self.cores = [CoreLoop(make_scheduler(prefill, 0), transit_s, events=self.events)]
            self.parts = [list(range(len(prefill)))]
        else:
            self.parts = partition(prefill, count)
            self.cores = [
                CoreLoop(
                    make_scheduler([prefill[i] for i in ids], k),
                    transit_s,
                    events=self.events,
                    prefill_ids=ids,
                    timer_tag=k,
                )
                for k, ids in enumerate(self.parts)
            ]
        self._local = {g: (k, local) for k, ids in enumerate(self.parts) for local, g in enumerate(ids)}
        self._spread = spread
        self._rng = random.Random(seed * 1000 + 900)
        self._next = 0
        self.accepted_by = bytearray(requests) if count > 1 else None
        """Per request id, the replica that accepted it (None with one replica)."""

    def arrive(self, req: Request, t: float) -> list[Decision]:
        """The Service hands `req` to one replica, which schedules it."""
        if self.accepted_by is None:
            return self.cores[0].handle(RequestArrived(req), t)
        if self._spread == "round_robin":
            k = self._next
            self._next = (k + 1) % len(self.cores)
        else:
            k = self._rng.randrange(len(self.cores))
        self.accepted_by[req.rid] = k
        return self.cores[k].handle(RequestArrived(req), t)

    def deliver(self, ev: Event, t: float) -> list[Decision]:
        """An engine report reaches the replica(s) it concerns."""
        if self.accepted_by is None:
            return self.cores[0].handle(ev, t)
        if isinstance(ev, RequestFinished):
            return self.cores[self.accepted_by[ev.rid]].handle(ev, t)
        if isinstance(ev, StepCompleted) or (isinstance(ev, LoadReported) and ev.role is Role.PREFILL):
            k, local = self._local[ev.instance]
            return self.cores[k].handle(dataclasses.replace(ev, instance=local), t)
        out: list[Decision] = []
        for core in self.cores:  # decode snapshots are shared
            out.extend(core.handle(ev, t))
        return out

    def on_timer(self, tag: object, t: float) -> list[Decision]:
        """A popped `TIMER` event (payload `tag`: the replica's index, None with one replica)."""
        return self.cores[tag if isinstance(tag, int) else 0].on_timer(t)

    def stats(self) -> dict[str, int]:
        """The replicas' `SchedulerStats`, summed."""
        out: dict[str, int] = {}
        for core in self.cores:
            st: SchedulerStats = core.scheduler.stats
            for key in st.__slots__:  # type: ignore[attr-defined]
                out[key] = out.get(key, 0) + getattr(st, key)
        return out
