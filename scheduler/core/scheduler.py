"""The scheduling core: `decisions = sched.handle(event, now)`; `sched.next_deadline()` says when to
call back. Pure and deterministic: no IO, no clock, randomness from a seeded `random.Random`.

Every event first updates the shared model of the cluster (`state.ClusterState`: step reports, load
snapshots, finished requests, health); then the policy (`policies`) decides: SBS buffers and releases
per prefill instance, the immediate baselines dispatch each request as it arrives. A prompt longer
than any decode rank's KV capacity is rejected before either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sbs.scheduler.core import carry, policies
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import (
    EngineHealth,
    Event,
    LoadReported,
    RequestArrived,
    RequestCancelled,
    RequestFinished,
    StepCompleted,
)
from sbs.scheduler.core.state import ClusterState, Flight, PrefillInstanceState, RankCounters, SchedulerStats
from sbs.scheduler.core.types import Decision, InstanceSpec, Reject, Request
from sbs.settings import scheduling


class Scheduler:
    """One scheduler over a fixed set of prefill and decode instances."""

    def __init__(
        self,
        prefill: Sequence[InstanceSpec],
        decode: Sequence[InstanceSpec],
        *,
        settings: scheduling.SchedulerSettings,
        capacity: PrefillCapacityModel,
        block_tokens: int | None = None,
    ) -> None:
        if not prefill or not decode:
            raise ValueError("a scheduler needs at least one prefill and one decode instance")
        self.settings = settings
        self.block_tokens = block_tokens
        self.state = ClusterState(
            prefill,
            decode,
            capacity=capacity,
            transit_s=settings.sync.transit_s,
            step_alpha=policies.step_alpha(settings),
            chunk_sync=isinstance(settings.policy, scheduling.StaggeredPolicy) and settings.policy.chunk_sync,
        )
        self.policy = policies.make_policy(settings, self.state, block_tokens=block_tokens)
        self.max_prompt_tokens = max(s.kv_capacity_tokens for s in self.state.decode_specs) - 1

    # -- the state, for callers that report or export it ------------------------------------------

    @property
    def buffer(self) -> Mapping[int, Request]:
        """Requests the policy holds, oldest first."""
        return self.policy.buffer

    @property
    def flights(self) -> dict[int, Flight]:
        return self.state.flights

    @property
    def instances(self) -> list[PrefillInstanceState]:
        return self.state.instances

    @property
    def prefill(self) -> RankCounters:
        return self.state.prefill

    @property
    def decode(self) -> RankCounters:
        return self.state.decode

    @property
    def stats(self) -> SchedulerStats:
        return self.state.stats

    @property
    def prefill_specs(self) -> list[InstanceSpec]:
        return self.state.prefill_specs

    # -- entry points ---------------------------------------------------------------------------

    def handle(self, event: Event | None, now: float) -> list[Decision]:
        """Apply one event (or just the passage of time, `event=None`) and return the decisions."""
        out: list[Decision] = []
        state = self.state
        match event:
            case RequestArrived(request=req):
                if req.prompt_tokens > self.max_prompt_tokens:
                    state.stats.rejected += 1
                    return [
                        Reject(
                            req.rid,
                            f"prompt of {req.prompt_tokens} tokens exceeds the largest decode rank's KV "
                            f"capacity ({self.max_prompt_tokens + 1} tokens)",
                        )
                    ]
                out = self.policy.arrive(req, now)
            case StepCompleted():
                state.on_step(event, now)
            case LoadReported():
                state.on_loads(event, now)
            case RequestFinished(rid=rid, finished_s=at):
                state.on_finished(rid, now, at)
            case RequestCancelled(rid=rid):
                state.stats.cancelled += 1
                if not self.policy.cancel(rid):
                    state.on_finished(rid, now, None)
            case EngineHealth(role=role, instance=i, healthy=ok):
                state.set_health(role, i, ok)
            case None:
                pass
        released = self.policy.tick(now)
        return out + released if out else released

    def next_deadline(self) -> float | None:
        """When the caller must call `handle(None, t)` next, or None if only events can help."""
        return self.policy.next_deadline()

    def rebuilt(
        self, prefill: Sequence[InstanceSpec], decode: Sequence[InstanceSpec], now: float
    ) -> Scheduler:
        """A scheduler over a new membership that keeps what this one knows (`carry`): the beliefs about
        the instances in both, the flights, and the buffered requests in their order, all but those now
        longer than every decode rank's capacity (the caller submits those again to have them rejected).
        Nothing is released before the caller's next `handle`; this scheduler is left as it was."""
        new = Scheduler(
            prefill,
            decode,
            settings=self.settings,
            capacity=self.state.capacity,
            block_tokens=self.block_tokens,
        )
        carry.carry_state(self.state, new.state)
        for req in self.buffer.values():
            if req.prompt_tokens <= new.max_prompt_tokens:
                held = new.policy.arrive(req, now)
                assert not held, "only a buffering policy holds requests, and it holds them again"
        if isinstance(self.policy, policies.StaggeredBatching) and isinstance(new.policy, type(self.policy)):
            new.policy.short.adopt(self.policy.short)  # the lane costs' short-prompt arrival rate
        return new
