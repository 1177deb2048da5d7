"""What SBS's timer asks of all prefill instances on every event (the `sbs_timing` rules folded over
them: the earliest release, the hold, the first suspect time), kept from one change of the instances'
state to the next (`ClusterState.revision`), so an event that changes no instance costs O(1), not
O(instances)."""

from __future__ import annotations

import math

from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.state import ClusterState
from sbs.settings.scheduling import BatchingSettings


class ReleaseClock:
    """Folds over `state.instances`, recomputed when `state.revision` moved (`fresh`): each instance's
    own terms only when it changed (`PrefillInstanceState.take_changed`)."""

    __slots__ = (
        "_busy",
        "_busy_at",
        "_idle",
        "_idle_at",
        "_rev",
        "_suspect_at",
        "batching",
        "hold_s",
        "interval_s",
        "overrun",
        "prefill_usable",
        "state",
        "suspect_at",
    )

    def __init__(self, state: ClusterState, batching: BatchingSettings, suspect_overrun: float) -> None:
        self.state = state
        self.batching = batching
        self.overrun = suspect_overrun
        self._rev = -1
        self.hold_s = 0.0
        """`sbs_timing.hold_s` over the instances."""
        self.interval_s = 0.0
        """`sbs_timing.interval_s` over the instances."""
        self.prefill_usable = True
        """Whether some prefill instance is available."""
        self.suspect_at = math.inf
        """The earliest `sbs_timing.suspect_after`: `mark_suspects` marks none up to this time."""
        n = len(state.instances)
        self._suspect_at = [math.inf] * n
        # Per instance, its release time with no idle_from (`release_time(idle_from=-inf)`), kept apart
        # for the idle ones (available, nothing planned: their release time is max(this, idle_from)) and
        # the others (inf in the other list).
        self._busy_at = [math.inf] * n
        self._idle_at = [math.inf] * n
        self._busy = self._idle = math.inf

    def fresh(self) -> ReleaseClock:
        """This clock, recomputed first if an instance changed since."""
        if self._rev != self.state.revision.n:
            self._refresh()
        return self

    def release_min(self, idle_from: float) -> float:
        """The earliest `sbs_timing.release_time` over the instances, exactly (as the same float): the
        idle ones' is max(idle_from, their minimum), as max and min commute exactly in floats."""
        return min(self._busy, max(idle_from, self._idle))

    def due(self, now: float, idle_from: float, skip: set[int]) -> int | None:
        """The instance not in `skip` whose `sbs_timing.release_time` has come by `now` and whose step
        ends first (ties: the lowest index), from the folded terms (call on a `fresh` clock)."""
        instances = self.state.instances
        best: int | None = None
        best_end = math.inf
        for i, (busy, idle) in enumerate(zip(self._busy_at, self._idle_at, strict=True)):
            if (busy <= now or max(idle_from, idle) <= now) and i not in skip:
                end = instances[i].busy_until_s
                if best is None or end < best_end:
                    best, best_end = i, end
        return best

    def _refresh(self) -> None:
        instances = self.state.instances
        b = self.batching
        self.hold_s = sbs_timing.hold_s(instances, b)
        self.interval_s = sbs_timing.interval_s(instances, b)
        self.prefill_usable = any(st.available for st in instances)
        every = self._rev < 0
        for i, st in enumerate(instances):
            if st.take_changed() or every:
                self._suspect_at[i] = sbs_timing.suspect_after(st, self.overrun)
                r = sbs_timing.release_time(st, b=b, idle_from=-math.inf)
                idle = st.available and not st.planned
                self._busy_at[i] = math.inf if idle else r
                self._idle_at[i] = r if idle else math.inf
        self.suspect_at = min(self._suspect_at)
        self._busy = min(self._busy_at)
        self._idle = min(self._idle_at)
        self._rev = self.state.revision.n
