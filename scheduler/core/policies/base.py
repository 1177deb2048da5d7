"""The two protocols of the scheduling policies.

- `Policy`: what the scheduler dispatches to. SBS (`sbs.StaggeredBatching`) and the immediate
  baselines (`immediate.ImmediateDispatch`, `sglang.EngineBalanced`) implement it over the shared
  `ClusterState`; the scheduler applies every report to that state first, then asks the policy.
- `RankPicker`: how an immediate baseline chooses one DP rank (one module per picker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sbs.scheduler.core.types import Decision, Request


class Policy(Protocol):
    """Decides where requests go, and when."""

    buffer: Mapping[int, Request]
    """Requests the policy holds (accepted, not yet dispatched), oldest first."""

    def arrive(self, req: Request, now: float) -> list[Decision]:
        """A request arrived (and fits a decode rank): dispatch it now, or hold it."""
        ...

    def cancel(self, rid: int) -> bool:
        """Drop a held request; False when the policy did not hold it."""
        ...

    def tick(self, now: float) -> list[Decision]:
        """After every event, and at `next_deadline()`: release what is due."""
        ...

    def next_deadline(self) -> float | None:
        """When `tick` must run next, or None if only events can change anything."""
        ...


class RankPicker(Protocol):
    """Chooses one of `live` (flat rank indices, never empty) given per-rank outstanding `load`."""

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int: ...
