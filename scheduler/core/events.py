"""Events into the scheduling core: the caller (simulator or service) feeds each with `now` to
`Scheduler.handle(event, now)`; `None` stands for the mere passage of time."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbs.scheduler.core.types import RankLoad, Request, Role


@dataclass(frozen=True, slots=True)
class RequestArrived:
    request: Request


@dataclass(frozen=True, slots=True)
class StepCompleted:
    """A prefill instance finished a forward step (tier-2 report).

    `started_s`/`duration_s` are the engine's own timing of the step; `finished_rids` the requests
    whose prefill completed in it. Only steps that finished requests are reported (SGLang's answers
    are all there is), so steps between two reports may have gone unseen. `next_step_queued` tells
    whether the engine had more work queued when the step ended (it starts the next step at once).
    """

    instance: int
    started_s: float
    duration_s: float
    finished_rids: tuple[int, ...] = ()
    next_step_queued: bool = False
    admission_s: float = 0.0
    """The longest dispatch → schedulable lag (transit and PD bootstrap) measured among these
    requests (0: none measured)."""
    timed: bool = True
    """False: `started_s` is only a lower bound (`step_report.step_start`): the duration is not one
    step's and does not update the instance's step averages."""


@dataclass(frozen=True, slots=True)
class LoadReported:
    """Tier-3 snapshot of one instance (all its ranks), taken by the engine at `snapshot_s`."""

    role: Role
    instance: int
    snapshot_s: float
    loads: tuple[RankLoad, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """The decode side finished (or aborted) a request: its decode rank is freed.

    `finished_s` is the engine's time of it when known; snapshots taken after it already exclude it.
    """

    rid: int
    finished_s: float | None = None


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """Health of an instance changed (failed probe, recovered)."""

    role: Role
    instance: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """The client gave up (deadline, disconnect): a buffered request leaves the buffer without
    taking a batch slot; a dispatched one frees its ranks as if finished."""

    rid: int


Event = RequestArrived | StepCompleted | LoadReported | RequestFinished | EngineHealth | RequestCancelled
