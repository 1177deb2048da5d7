"""Approximate per-rank prefix-cache index, built from the scheduler's own dispatches.

Each DP rank keeps a radix cache of the prompts it prefilled. The scheduler cannot see it directly, so
it remembers which prefix blocks (`hash_ids`, one per `block_tokens` tokens) it sent to which rank, in
an LRU bounded by the rank's KV capacity, like sglang-router's approximate tree. The index only ever
gives *credit* (fewer tokens to compute); a wrong guess costs prediction accuracy, not correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from sbs.scheduler.core.types import InstanceSpec


class PrefixIndex:
    """Which ranks (flat indices) hold which prefix blocks."""

    def __init__(self, num_ranks: int, capacity_blocks: Sequence[int]) -> None:
        if len(capacity_blocks) != num_ranks:
            raise ValueError(f"capacity_blocks has {len(capacity_blocks)} entries, expected {num_ranks}")
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(num_ranks)]
        self._capacity = list(capacity_blocks)
        self._holders: dict[int, set[int]] = {}

    @classmethod
    def for_instances(cls, specs: Sequence[InstanceSpec], block_tokens: int) -> PrefixIndex:
        """An index over every DP rank of `specs` (flat, in order), each bounded by its KV capacity."""
        caps = [s.kv_capacity_tokens // block_tokens for s in specs for _ in range(s.dp_size)]
        return cls(len(caps), caps)

    def insert(self, rank: int, hash_ids: Iterable[int]) -> None:
        """Record that `rank` now caches these blocks (most recently used)."""
        lru = self._lru[rank]
        for h in hash_ids:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self._holders.setdefault(h, set()).add(rank)
        while len(lru) > self._capacity[rank]:
            old, _ = lru.popitem(last=False)
            holders = self._holders.get(old)
            if holders is not None:
                holders.discard(rank)
                if not holders:
                    del self._holders[old]

    def matched_blocks(self, hash_ids: Sequence[int], ranks: range) -> dict[int, int]:
        """Leading blocks of `hash_ids` cached on each rank in `ranks` (ranks with no match omitted)."""
        if not hash_ids:
            return {}
        first = self._holders.get(hash_ids[0])
        if not first:
            return {}
        live = {r for r in first if r in ranks}
        matched: dict[int, int] = {}
        depth = 1
        while live:
            for r in live:
                matched[r] = depth
            if depth == len(hash_ids):
                break
            nxt = self._holders.get(hash_ids[depth])
            if not nxt:
                break
            live &= nxt
            depth += 1
        return matched

    def cached_tokens(
        self, hash_ids: Sequence[int], ranks: range, block_tokens: int, prompt_tokens: int
    ) -> dict[int, int]:
        """Per rank in `ranks` caching a prefix: the prompt's tokens it caches (at most all but one, as
        an engine always computes the last)."""
        matched = self.matched_blocks(hash_ids, ranks)
        return {r: cached_of(blocks, block_tokens, prompt_tokens) for r, blocks in matched.items()}


def cached_of(blocks: int, block_tokens: int, prompt_tokens: int) -> int:
    """A prompt's tokens that `blocks` cached leading blocks cover (at most all but one: an engine
    always computes the last)."""
    return min(blocks * block_tokens, prompt_tokens - 1)
