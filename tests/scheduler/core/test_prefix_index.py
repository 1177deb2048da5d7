"""PrefixIndex: leading-block matches per rank and per-rank LRU eviction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core.prefix_index import PrefixIndex


def index(ranks: int = 4, capacity: int = 100) -> PrefixIndex:
    return PrefixIndex(ranks, [capacity] * ranks)


def test_capacity_list_must_match_ranks() -> None:
    with pytest.raises(ValueError, match="3 entries, expected 4"):
        PrefixIndex(4, [10, 10, 10])


def test_empty_index_matches_nothing() -> None:
    assert index().matched_blocks((1, 2, 3), range(4)) == {}
    assert index().matched_blocks((), range(4)) == {}


def test_match_counts_leading_blocks_per_rank() -> None:
    idx = index()
    idx.insert(0, (1, 2, 3))
    idx.insert(2, (1, 2))
    idx.insert(3, (9, 2, 3))
    assert idx.matched_blocks((1, 2, 3, 4), range(4)) == {0: 3, 2: 2}


def test_match_stops_at_first_missing_block() -> None:
    idx = index()
    idx.insert(1, (1, 3))  # block 2 is missing: only the first block is a prefix
    assert idx.matched_blocks((1, 2, 3), range(4)) == {1: 1}


def test_match_is_limited_to_the_given_ranks() -> None:
    idx = index(ranks=8)
    idx.insert(1, (5, 6))
    idx.insert(6, (5, 6))
    assert idx.matched_blocks((5, 6), range(4, 8)) == {6: 2}


def test_lru_evicts_least_recently_used_blocks() -> None:
    idx = index(ranks=1, capacity=3)
    idx.insert(0, (1, 2, 3))
    idx.insert(0, (1,))  # touch 1: now 2 is the oldest
    idx.insert(0, (4,))
    assert idx.matched_blocks((1,), range(1)) == {0: 1}
    assert idx.matched_blocks((2,), range(1)) == {}
    assert idx.matched_blocks((3, 4), range(1)) == {0: 2}


def test_eviction_on_one_rank_keeps_other_holders() -> None:
    idx = index(ranks=2, capacity=1)
    idx.insert(0, (7,))
    idx.insert(1, (7,))
    idx.insert(0, (8,))  # evicts 7 from rank 0 only
    assert idx.matched_blocks((7,), range(2)) == {1: 1}


def test_zero_capacity_rank_holds_nothing() -> None:
    idx = PrefixIndex(2, [0, 5])
    idx.insert(0, (1, 2))
    idx.insert(1, (1, 2))
    assert idx.matched_blocks((1, 2), range(2)) == {1: 2}


@settings(max_examples=100, deadline=None)
@given(
    inserts=st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.integers(0, 6), min_size=1, max_size=5)), max_size=20
    ),
    query=st.lists(st.integers(0, 6), min_size=1, max_size=5),
)
def test_matches_agree_with_a_per_rank_lru_model(
    inserts: list[tuple[int, list[int]]], query: list[int]
) -> None:
    cap = 4
    idx = index(ranks=3, capacity=cap)
    model: list[list[int]] = [[], [], []]  # per rank, least recent first
    for rank, hashes in inserts:
        idx.insert(rank, hashes)
        for h in hashes:
            if h in model[rank]:
                model[rank].remove(h)
            model[rank].append(h)
        del model[rank][: max(0, len(model[rank]) - cap)]
    expected = {}
    for rank, held in enumerate(model):
        depth = 0
        while depth < len(query) and query[depth] in held:
            depth += 1
        if depth:
            expected[rank] = depth
    assert idx.matched_blocks(query, range(3)) == expected
