"""Object views of the allocators, for tests: requests and ranks as small frozen values in, one
value out. The product calls the list functions (`water_fill_lists`, `assign_decode_lists`)
directly; these wrappers only make test cases readable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.decode_alloc import DecodePlan, assign_decode_lists
from sbs.scheduler.core.prefill_alloc import PrefillColumns, water_fill_lists
from sbs.scheduler.core.types import RankRef


@dataclass(frozen=True, slots=True)
class PrefillItem:
    """One request waiting for prefill.

    `tokens` are the prompt tokens still to prefill (before any cache credit);
    `cached_tokens_by_rank` optionally maps a rank index (into `ranks`) to the prompt tokens already
    cached there.
    """

    rid: int
    tokens: int
    cached_tokens_by_rank: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"prefill item {self.rid}: tokens must be >= 1, got {self.tokens}")


@dataclass(frozen=True, slots=True)
class RankSlot:
    """One DP rank of the chosen prefill instance, at the start of the step being planned."""

    committed_tokens: int = 0
    """Tokens already committed to this step (continuation of a chunked prompt)."""
    committed_pairs: float = 0.0
    """Attention pairs of the committed tokens."""
    available: bool = True
    """False: suspect or unhealthy rank; it gets nothing."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one request runs in this step."""

    rid: int
    rank: int
    """Index into `ranks`."""
    step_tokens: int
    """Tokens processed in this step."""
    remaining_tokens: int
    """Carried over to following steps on the same rank (chunked prefill); 0 if whole."""
    cached_tokens: int
    """Prefix-cache credit applied (prefix already on this rank)."""


@dataclass(frozen=True, slots=True)
class PrefillPlan:
    """The result of `water_fill`: placements in priority order, per-rank totals including committed work."""

    placements: tuple[Placement, ...]
    unplaced: tuple[int, ...]
    """Rids not placed, in their original priority order."""
    rank_tokens: tuple[int, ...]
    rank_cost_s: tuple[float, ...]
    rank_available: tuple[bool, ...] = ()
    """Which ranks could take work; empty means all."""

    @property
    def step_s(self) -> float:
        """Predicted lockstep duration: the slowest rank's cost."""
        return max(self.rank_cost_s, default=0.0)

    def _available_tokens(self) -> list[int]:
        if not self.rank_available:
            return list(self.rank_tokens)
        return [t for t, ok in zip(self.rank_tokens, self.rank_available, strict=True) if ok]

    def utilization(self, chunk_tokens: int) -> float:
        """Chunk utilisation: tokens on available ranks / (available ranks * chunk_tokens); 0.0 if none."""
        tokens = self._available_tokens()
        if not tokens or chunk_tokens <= 0:
            return 0.0
        return sum(tokens) / (len(tokens) * chunk_tokens)

    def imbalance(self) -> float:
        """max/mean of tokens over available ranks; 1.0 when there is no work (or no available rank)."""
        tokens = self._available_tokens()
        total = sum(tokens)
        if total <= 0:
            return 1.0
        return max(tokens) * len(tokens) / total


def as_plan(cols: PrefillColumns) -> PrefillPlan:
    """`water_fill_lists`' columns as a `PrefillPlan`."""
    placements = tuple(
        map(Placement, cols.rids, cols.ranks, cols.step_tokens, cols.remaining_tokens, cols.cached_tokens)
    )
    return PrefillPlan(
        placements,
        tuple(cols.unplaced),
        tuple(cols.rank_tokens),
        tuple(cols.rank_cost_s),
        tuple(cols.rank_available),
    )


def water_fill(
    items: Sequence[PrefillItem],
    ranks: Sequence[RankSlot],
    *,
    chunk_tokens: int,
    model: PrefillCapacityModel,
    allow_chunking: bool = True,
) -> PrefillPlan:
    """Select items in priority order for one step and pack them onto DP ranks (see module docstring)."""
    credits = [it.cached_tokens_by_rank for it in items]
    cols = water_fill_lists(
        [it.rid for it in items],
        [it.tokens for it in items],
        [r.committed_tokens for r in ranks],
        [r.committed_pairs for r in ranks],
        [r.available for r in ranks],
        credits=credits if any(credits) else None,
        chunk_tokens=chunk_tokens,
        model=model,
        allow_chunking=allow_chunking,
    )
    return as_plan(cols)


@dataclass(frozen=True, slots=True)
class DecodeItem:
    """One request to place on a decode rank."""

    rid: int
    kv_tokens: int
    """KV the request will hold on its decode rank (prompt + expected share of output)."""

    def __post_init__(self) -> None:
        if self.kv_tokens < 0:
            raise ValueError(f"decode item {self.rid}: kv_tokens must be >= 0, got {self.kv_tokens}")


@dataclass(frozen=True, slots=True)
class DecodeRankLoad:
    """The scheduler's view of one decode DP rank at the start of the round."""

    ref: RankRef
    batch: int
    """B_i: requests running + waiting/in transfer on the rank."""
    kv_tokens: int
    """K_i: KV tokens allocated on the rank."""
    kv_capacity_tokens: int
    max_running: int = 0
    """Cap on B_i; 0 = unlimited."""
    available: bool = True


def assign_decode(
    items: Sequence[DecodeItem],
    ranks: Sequence[DecodeRankLoad],
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
) -> DecodePlan:
    """Place one admission round of decode requests (see module docstring)."""
    return assign_decode_lists(
        [it.rid for it in items],
        [it.kv_tokens for it in items],
        [r.batch for r in ranks],
        [r.kv_tokens for r in ranks],
        [r.kv_capacity_tokens for r in ranks],
        [r.max_running for r in ranks],
        [r.available for r in ranks],
        [r.ref for r in ranks],
        iqr_k=iqr_k,
        min_candidates=min_candidates,
    )
