"""The scheduler's model of the cluster: optimistic accounting corrected by engine reports.

Three tiers (the paper's multi-tier synchronisation):
1. every dispatch updates the local copy at once, so decisions within a round see each other;
2. prefill step completions (`StepCompleted`) correct the predicted free time of an instance and feed
   the step-time and prediction-error averages;
3. periodic per-rank snapshots (`LoadReported`, SGLang's `/v1/loads`) replace the counters; deltas the
   scheduler applied after the snapshot was taken (minus a transit margin) are re-applied on top, so a
   snapshot never erases dispatches the engine had not seen yet.
A prefill instance that overruns its prediction by far, or an unhealthy one, is suspect and skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sbs.scheduler.core.types import InstanceSpec, RankLoad

_LOG_LIMIT = 4096


@dataclass(slots=True)
class Carry:
    """The rest of a chunked prompt, committed to one rank for the following steps."""

    rid: int
    rank: int
    remaining: int
    done: int
    """Tokens of the prompt already prefilled (the prefix the next chunk attends to)."""


@dataclass(slots=True)
class PrefillInstanceState:
    """What the scheduler believes about one prefill instance."""

    spec: InstanceSpec
    offset: int
    """Flat index of rank 0 of this instance among all prefill ranks."""
    busy_until_s: float = 0.0
    planned: deque[tuple[float, float]] = field(default_factory=deque)
    """(sent at, predicted duration) of the steps sent and not yet reported complete, running first."""
    carries: dict[int, Carry] = field(default_factory=dict)
    """rank → chunked prompt continuing on it."""
    step_ewma_s: float = 0.0
    error_ewma: float = 1.0
    """Running ratio actual / predicted step time; multiplies new predictions."""
    healthy: bool = True
    suspect: bool = False
    last_heard_s: float = 0.0
    deferred_until_s: float = 0.0
    """Not offered buffered work before this time (everything waits for cache affinity elsewhere)."""
    unpinned_tokens: int = 0
    """Outstanding tokens sent without a rank (the engine's own DP balancer places them)."""

    @property
    def available(self) -> bool:
        return self.healthy and not self.suspect

    def idle(self, now: float) -> bool:
        return not self.planned and self.busy_until_s <= now

    def planned_total_s(self) -> float:
        return sum(p for _, p in self.planned)

    def committed_next(self) -> dict[int, tuple[int, float, Carry]]:
        """Per rank, the chunk each carry puts into the next step: (tokens, prefix done, carry)."""
        chunk = self.spec.chunk_tokens
        return {r: (min(c.remaining, chunk), float(c.done), c) for r, c in self.carries.items()}


class RankCounters:
    """Per-rank (count, tokens) counters of one role, reconciled with engine snapshots."""

    def __init__(self, specs: list[InstanceSpec], transit_s: float) -> None:
        self.offsets: list[int] = []
        n = 0
        for spec in specs:
            self.offsets.append(n)
            n += spec.dp_size
        self.count = [0] * n
        self.tokens = [0] * n
        self._transit_s = transit_s
        # Bounded: without snapshots the log would grow forever; older entries are long seen.
        self._log: list[deque[tuple[float, int, int, int]]] = [deque(maxlen=_LOG_LIMIT) for _ in specs]

    def add(
        self, instance: int, rank: int, count: int, tokens: int, now: float, *, seen_at: float | None = None
    ) -> None:
        """Apply a delta. `seen_at` is when the engine's state reflects it: for a completion, the engine's
        own time of it; for a dispatch (default) the send time plus the transit margin."""
        i = self.offsets[instance] + rank
        self.count[i] += count
        self.tokens[i] += tokens
        self._log[instance].append(
            (now + self._transit_s if seen_at is None else seen_at, rank, count, tokens)
        )

    def add_many(
        self, instances: Sequence[int], ranks: Sequence[int], count: int, tokens: Sequence[int], now: float
    ) -> None:
        """`add` for a batch of dispatches sent at `now` (one decision round)."""
        seen = now + self._transit_s
        counts, toks, offsets, logs = self.count, self.tokens, self.offsets, self._log
        for instance, rank, t in zip(instances, ranks, tokens, strict=True):
            i = offsets[instance] + rank
            counts[i] += count
            toks[i] += t
            logs[instance].append((seen, rank, count, t))

    def reconcile(self, instance: int, snapshot_s: float, loads: tuple[RankLoad, ...], tokens_of) -> None:
        """Replace the instance's counters with a snapshot plus the deltas it cannot have seen."""
        log = deque((e for e in self._log[instance] if e[0] > snapshot_s), maxlen=_LOG_LIMIT)
        self._log[instance] = log
        base = self.offsets[instance]
        for load in loads:
            i = base + load.dp_rank
            self.count[i] = load.num_running_reqs + load.num_waiting_reqs
            self.tokens[i] = tokens_of(load)
        for _, rank, count, tokens in log:
            self.count[base + rank] += count
            self.tokens[base + rank] += tokens
