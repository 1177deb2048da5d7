"""The `oracle` policy: the simulator's clairvoyant reference for SBS (simulator only).

It is SBS's staggered batching (`sbs.StaggeredBatching`: release just before an instance frees,
water-filled over its DP ranks, IQR decode) given what no live scheduler has:
- exact step times: the simulator reports each prefill step's true duration (jitter included) the
  moment it starts (`step_started`), and every report without delay, so an instance's free time is
  known rather than predicted;
- the arrivals of the next `horizon_s` (`Foresight`, handed over by the simulator);
and it releases shortest predicted prefill first (`OraclePolicy.batching`: the order that minimises
the mean wait), where SBS caps how far a long prompt is put back.

With the foresight it holds an instance back for imminent requests (`hold_until`): when everything
buffered is longer than a chunk, the step a release would start now is a full chunk long, and a short
request arriving before it ends waits for all of it, unless another instance frees first. The release
is put off to such an arrival when the waits it saves exceed the delay it costs the buffered requests,
and only when no backlog waits (idling would then cost capacity). Horizon 0 is SBS with exact step
times and the shortest-first order.

It stays sans-IO: the simulator hands it the future (`attach`) and the step times; the live service
refuses the name (`sbs.settings.service.ServiceSettings`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.policies.sbs import StaggeredBatching
from sbs.scheduler.core.state import ClusterState
from sbs.scheduler.core.types import Decision, Request
from sbs.settings.scheduling import OraclePolicy


class Foresight:
    """The arrivals a clairvoyant policy may see: those at most `horizon_s` after now."""

    def __init__(self, requests: Sequence[Request], horizon_s: float) -> None:
        self._requests = list(requests)
        self._times = [r.arrival_s for r in self._requests]
        if any(a > b for a, b in zip(self._times, self._times[1:], strict=False)):
            raise ValueError("Foresight needs the requests in arrival order")
        self.horizon_s = horizon_s

    def upcoming(self, now: float, until: float) -> Sequence[Request]:
        """Requests arriving after `now`, up to `until` and at most `horizon_s` ahead."""
        lo = bisect_right(self._times, now)
        hi = bisect_right(self._times, min(until, now + self.horizon_s))
        return self._requests[lo:hi]


class Clairvoyant(StaggeredBatching):
    """SBS with exact step times, shortest-first releases and a look `horizon_s` into the arrivals."""

    def __init__(
        self, state: ClusterState, settings: OraclePolicy, *, block_tokens: int | None, suspect_overrun: float
    ) -> None:
        super().__init__(state, settings, block_tokens=block_tokens, suspect_overrun=suspect_overrun)
        self.foresight: Foresight | None = None
        self.transit_s = 0.0
        """Scheduler → engine delay of a dispatch (the simulator's, exactly)."""
        self.holds = 0
        """Releases put off for an imminent request."""

    def attach(self, foresight: Foresight | None, transit_s: float) -> None:
        """The simulator's hook: the arrivals it may see, and the true dispatch transit."""
        self.foresight = foresight
        self.transit_s = transit_s

    def step_started(self, instance: int, start_s: float, duration_s: float) -> None:
        """The simulator's hook: instance `instance` started a step of exactly `duration_s` at `start_s`.

        The oldest planned step that reached the engine is this one; a step nobody released (a chunked
        prompt continuing, or one started before a release in transit arrived) is recorded first."""
        st = self.state.instances[instance]
        planned = st.planned
        if not planned or planned[0][0] + self.transit_s > start_s:
            planned.appendleft((start_s, duration_s))
        rest = sum(p for _, p in list(planned)[1:])
        st.busy_until_s = start_s + duration_s + rest

    def _release_to(self, p: int, now: float, reason: str) -> list[Decision]:
        if reason != "max_hold" and self.foresight is not None and self.foresight.horizon_s > 0:
            until = self.hold_until(p, now)
            if until is not None:
                self.holds += 1
                self.state.instances[p].deferred_until_s = until
                return []
        return super()._release_to(p, now, reason)

    def hold_until(self, p: int, now: float) -> float | None:
        """When to release to `p` instead of now (None: now).

        Only when everything buffered is longer than a chunk and fits in one step (no backlog, whose
        wait the idle time would lengthen), and `p` has no prompt in progress: the step released
        now, at `start` (the instance's exact free time), is then at least a full fresh chunk long.
        A prompt of at most a chunk arriving at a_j before that step ends would start at the sooner
        of its end and the next other instance's free time (g_j). Holding the release until a saves
        each such arrival up to a `min(end, g_j) - a`, and costs every buffered request (a - start).
        (With short prompts buffered, the level rules may release something else than the model
        assumes: measured, holds there cost more than they saved.)"""
        assert self.foresight is not None
        state = self.state
        st = state.instances[p]
        chunk = st.spec.chunk_tokens
        if len(self.buffer) > st.spec.dp_size or st.carries or self._queue_tokens[0] <= chunk:
            return None
        start = max(st.busy_until_s, now)
        end = start + sbs_timing.full_chunk_s(state.capacity, chunk)
        upcoming = [r for r in self.foresight.upcoming(start, end) if r.prompt_tokens <= chunk]
        if not upcoming:
            return None
        others = [max(o.busy_until_s, now) for i, o in enumerate(state.instances) if i != p and o.available]
        other_free = min(others, default=float("inf"))
        delayed = len(self.buffer)
        best, best_at, gains = 0.0, None, 0.0
        for count, r in enumerate(upcoming, start=1):
            gains += min(end, max(other_free, r.arrival_s))  # Σ min(end, g_j) over the arrivals so far
            gain = gains - count * r.arrival_s - delayed * (r.arrival_s - start)
            if gain > best:
                best, best_at = gain, r.arrival_s
        return best_at
