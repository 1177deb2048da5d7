"""Scheduling pools: one sans-IO core per engine revision, rebuilt when the revision's membership
changes.

Prefill and decode engines are paired only within a revision, so each revision's resolved engines
form a `Pool` with its own `Scheduler`; with several scheduler replicas, only the prefill engines
this replica owns (`replicas`). A change of membership (an engine added, removed or re-shaped, or a
change of owners) rebuilds the core from the old one (`Scheduler.rebuilt`): what it knows about the
engines in both memberships, the requests in flight and the buffered requests move over, and the pool
keeps its generation (the jobs' flights are in the new core). A revision that loses its last prefill
or decode hands its buffered requests to another pool, or fails them with a retryable error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import RequestArrived
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Reject, Role
from sbs.scheduler.service.engine_registry import Engine
from sbs.scheduler.service.jobs import JobState

if TYPE_CHECKING:
    from sbs.scheduler.service.dispatcher import Dispatcher

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Pool:
    """The engines of one revision and the core scheduling them."""

    revision: str
    prefill: list[Engine]
    decode: list[Engine]
    core: Scheduler
    generation: int
    """Which core lineage accounts a job (`Job.generation`): kept across rebuilds, which carry the old
    core's flights and buffer over; a new pool gets a new one."""
    index: dict[str, int] = field(default_factory=dict)
    """Engine key → instance index in its role's list."""
    outstanding: int = 0
    last_release_s: float | None = None

    def member(self, engine: Engine) -> int | None:
        i = self.index.get(engine.key)
        role_list = self.prefill if engine.role is Role.PREFILL else self.decode
        return i if i is not None and i < len(role_list) and role_list[i] is engine else None

    def usable(self) -> bool:
        return any(e.usable for e in self.prefill) and any(e.usable for e in self.decode)

    def usable_prefill_ranks(self) -> int:
        return sum(e.spec.dp_size for e in self.prefill if e.usable and e.spec)


class Pools:
    """The pools by revision, and their rebuilds."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self.by_revision: dict[str, Pool] = {}
        self._generation = 0
        self._retired_stats: Counter[str] = Counter()
        cap = dispatcher.settings.capacity
        self.capacity = PrefillCapacityModel(cap.fixed_s, cap.per_token_s, cap.per_pair_s)

    def ready(self) -> bool:
        """At least one prefill and one decode of the same revision are usable."""
        return any(p.usable() for p in self.by_revision.values())

    def current(self, pool: Pool) -> bool:
        """`pool` has not been rebuilt or retired since it was handed out."""
        return self.by_revision.get(pool.revision) is pool

    def of(self, engine: Engine) -> tuple[Pool, int] | None:
        """The pool `engine` is a member of, and its instance index there."""
        pool = self.by_revision.get(engine.record.revision)
        i = pool.member(engine) if pool is not None else None
        return None if pool is None or i is None else (pool, i)

    def choose(self, exclude: Pool | None = None) -> Pool | None:
        """The usable pool with the fewest outstanding requests per usable prefill rank."""
        if len(self.by_revision) == 1:  # the usual case: nothing to compare
            pool = next(iter(self.by_revision.values()))
            return None if pool is exclude or not pool.usable() else pool
        best: tuple[float, str] | None = None
        chosen = None
        for rev, pool in self.by_revision.items():
            if pool is exclude or not pool.usable():
                continue
            key = ((pool.outstanding + 1) / max(pool.usable_prefill_ranks(), 1), rev)
            if best is None or key < best:
                best, chosen = key, pool
        return chosen

    def rebuild_all(self) -> None:
        """Rebuild every revision's core whose membership changed (e.g. the prefill instances this
        replica owns)."""
        for revision in set(self._d.registry.revisions()) | set(self.by_revision):
            self.rebuild(revision)

    def core_stats(self) -> Counter[str]:
        """The cores' counters, retired cores included."""
        out = Counter(self._retired_stats)
        for pool in self.by_revision.values():
            out.update(_stats(pool.core))
        return out

    def rebuild(self, revision: str) -> None:
        """(Re)build the core of one revision when its membership changed."""
        d = self._d
        prefill = d.owned_prefill(d.registry.members(revision, Role.PREFILL))
        decode = d.registry.members(revision, Role.DECODE)
        pool = self.by_revision.get(revision)
        if pool is not None and pool.prefill == prefill and pool.decode == decode:
            return
        if pool is not None:
            self._retired_stats.update(_stats(pool.core))
        if not prefill or not decode:
            if pool is not None:
                del self.by_revision[revision]
                self._rehome(pool)
            return
        s = d.settings
        specs = [e.spec for e in prefill if e.spec], [e.spec for e in decode if e.spec]
        if pool is None:
            self._generation += 1
            generation = self._generation
            core = Scheduler(
                *specs,
                settings=s.scheduler,
                capacity=self.capacity,
                block_tokens=s.estimate.prefix_block_tokens or None,
            )
        else:
            generation = pool.generation  # the old core's flights and buffer are in the new one
            core = pool.core.rebuilt(*specs, d.now())
        index = {e.key: i for i, e in enumerate(prefill)} | {e.key: i for i, e in enumerate(decode)}
        new = Pool(revision, prefill, decode, core, generation, index)
        self.by_revision[revision] = new
        log.info(
            "pool %r: %d prefill, %d decode engines, policy %s (generation %d)",
            revision,
            len(prefill),
            len(decode),
            s.scheduler.policy.type,
            generation,
        )
        for role, members in ((Role.PREFILL, prefill), (Role.DECODE, decode)):
            for i, e in enumerate(members):
                core.state.set_health(role, i, e.usable)  # the registry's word, set before any release
        if pool is not None:
            new.outstanding = pool.outstanding
            new.last_release_s = pool.last_release_s
            self._carry_jobs(pool, new)
        d.feed(new, None)
        d.wake()

    def _carry_jobs(self, old: Pool, new: Pool) -> None:
        """The jobs of `old` belong to `new`, whose core carries their flights and buffered requests
        (`Scheduler.rebuilt`); a buffered one it does not carry is submitted again."""
        d = self._d
        for job in list(d.jobs.values()):
            if job.pool is not old:
                continue
            job.pool = new
            if job.state is JobState.DISPATCHED and job.rid not in new.core.flights:
                job.generation = -1  # both its engines left: its flight is in no core
            elif (
                job.state is JobState.BUFFERED and not job.decision.done() and job.rid not in new.core.buffer
            ):
                d.feed(new, RequestArrived(job.request))

    def _rehome(self, retired: Pool) -> None:
        """A pool lost its last prefill or decode: its buffered requests go to another pool, or fail."""
        d = self._d
        for job in list(d.jobs.values()):
            if job.pool is not retired:
                continue
            target = self.choose()
            if job.state is not JobState.BUFFERED:
                if target is not None:
                    d.move(job, target)
                    job.generation = -1  # its flight is not in the target's core
                continue
            if target is None:
                if not job.decision.done():
                    job.decision.set_result(
                        Reject(job.rid, "no usable engines of any revision", retryable=True)
                    )
                continue
            d.move(job, target)
            d.feed(target, RequestArrived(job.request))


def _stats(core: Scheduler) -> dict[str, int]:
    st = core.stats
    return {k: getattr(st, k) for k in st.__slots__}  # type: ignore[attr-defined]
