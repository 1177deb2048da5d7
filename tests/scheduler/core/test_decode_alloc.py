"""assign_decode (Algorithm 3): IQR mask over KV load, lexicographic (B, K) choice, virtual updates."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core.decode_alloc import DecodePlan, assign_decode_lists, assign_decode_ranks
from sbs.scheduler.core.types import RankRef

from tests.scheduler.core.alloc_objects import DecodeItem, DecodeRankLoad, assign_decode


def quantile(values: Sequence[int], p: float) -> float:
    """numpy's 'linear' quantile of ascending values, written out."""
    h = (len(values) - 1) * p
    lo = int(h)
    if lo + 1 < len(values):
        return values[lo] + (h - lo) * (values[lo + 1] - values[lo])
    return float(values[lo])


def reference_assign_decode(
    items: Sequence[DecodeItem],
    ranks: Sequence[DecodeRankLoad],
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
) -> DecodePlan:
    """Algorithm 3 written out naively: every request rescans every rank."""
    batch = [r.batch for r in ranks]
    kv = [r.kv_tokens for r in ranks]
    assignments, unplaced, masked = [], [], 0
    for it in sorted(items, key=lambda it: (-it.kv_tokens, it.rid)):
        cand = [
            j
            for j, r in enumerate(ranks)
            if r.available
            and kv[j] + it.kv_tokens <= r.kv_capacity_tokens
            and (r.max_running <= 0 or batch[j] < r.max_running)
        ]
        if not cand:
            unplaced.append(it.rid)
            continue
        if len(cand) >= min_candidates:
            ks = sorted(kv[j] for j in cand)
            q1, q3 = quantile(ks, 0.25), quantile(ks, 0.75)
            kept = [j for j in cand if kv[j] <= q3 + iqr_k * (q3 - q1)]
            if kept:
                masked += len(cand) - len(kept)
                cand = kept
        j = min(cand, key=lambda j: (batch[j], kv[j], ranks[j].ref, j))
        batch[j] += 1
        kv[j] += it.kv_tokens
        assignments.append((it.rid, ranks[j].ref))
    return DecodePlan(tuple(assignments), tuple(unplaced), masked)


def rank(
    i: int, batch: int = 0, kv: int = 0, cap: int = 10**6, max_running: int = 0, **kw: bool
) -> DecodeRankLoad:
    return DecodeRankLoad(RankRef(0, i), batch, kv, cap, max_running, **kw)


@st.composite
def rounds(draw: st.DrawFn) -> dict:
    m = draw(st.integers(0, 10))
    refs = draw(st.permutations([RankRef(i // 3, i % 3) for i in range(m)]))
    caps = draw(st.sampled_from([[100], [100, 150], [80, 100, 150]]))
    ranks = [
        DecodeRankLoad(
            ref,
            draw(st.integers(0, 5)),
            draw(st.sampled_from([0, 5, 10, 90]) | st.integers(0, 100)),
            draw(st.sampled_from(caps)),
            draw(st.integers(0, 6)),
            draw(st.booleans()) or draw(st.booleans()),
        )
        for ref in refs
    ]
    n = draw(st.integers(0, 16))
    items = [DecodeItem(rid, draw(st.integers(0, 60))) for rid in draw(st.permutations(range(n)))]
    return {
        "items": items,
        "ranks": ranks,
        "iqr_k": draw(st.sampled_from([0.0, 0.5, 1.5, -5.0])),
        "min_candidates": draw(st.integers(1, 5)),
    }


@settings(max_examples=400, deadline=None)
@given(rounds())
def test_matches_naive_reference(case: dict) -> None:
    assert assign_decode(**case) == reference_assign_decode(**case)


@settings(max_examples=200, deadline=None)
@given(rounds())
def test_plan_invariants(case: dict) -> None:
    items, ranks = case["items"], case["ranks"]
    plan = assign_decode(**case)
    assert sorted([rid for rid, _ in plan.assignments] + list(plan.unplaced)) == sorted(
        it.rid for it in items
    )
    by_ref = {r.ref: r for r in ranks}
    kv_of = {it.rid: it.kv_tokens for it in items}
    added_b = Counter(ref for _, ref in plan.assignments)
    added_k = Counter()
    for rid, ref in plan.assignments:
        added_k[ref] += kv_of[rid]
    for ref, n in added_b.items():
        r = by_ref[ref]
        assert r.available
        assert r.kv_tokens + added_k[ref] <= r.kv_capacity_tokens
        if r.max_running:
            assert r.batch + n <= r.max_running
    kvs = [kv_of[rid] for rid, _ in plan.assignments]
    assert kvs == sorted(kvs, reverse=True)
    assert assign_decode(**case) == plan  # deterministic


def test_quartiles_follow_numpy_linear_method() -> None:
    rng = np.random.default_rng(7)
    for n in range(1, 40):
        values = sorted(int(v) for v in rng.integers(0, 1000, n))
        for p in (0.25, 0.75):
            assert quantile(values, p) == pytest.approx(float(np.quantile(values, p, method="linear")))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 200), st.integers(0, 1000))
def test_identical_requests_on_identical_ranks_spread_batch_evenly(m: int, n: int, kv: int) -> None:
    ranks = [rank(i) for i in range(m)]
    plan = assign_decode([DecodeItem(rid, kv) for rid in range(n)], ranks)
    per_rank = Counter(ref for _, ref in plan.assignments)
    counts = [per_rank[r.ref] for r in ranks]
    assert max(counts) - min(counts) <= 1


def test_fewest_requests_wins_even_with_more_kv() -> None:
    """Lexicographic: batch size is never traded for KV load (absent outliers)."""
    ranks = [
        rank(0, batch=5, kv=100),
        rank(1, batch=4, kv=400),
        rank(2, batch=5, kv=100),
        rank(3, batch=5, kv=300),
    ]
    plan = assign_decode([DecodeItem(1, 10)], ranks)
    assert plan.assignments == ((1, RankRef(0, 1)),)


def test_kv_breaks_batch_ties_then_ref() -> None:
    ranks = [rank(3, batch=2, kv=50), rank(1, batch=2, kv=20), rank(0, batch=2, kv=20)]
    plan = assign_decode([DecodeItem(1, 1), DecodeItem(2, 1)], ranks, min_candidates=99)
    assert plan.assignments == ((1, RankRef(0, 0)), (2, RankRef(0, 1)))


def test_iqr_mask_avoids_a_kv_outlier() -> None:
    ranks = [rank(i, batch=5, kv=100 + i) for i in range(5)] + [rank(5, batch=0, kv=50_000)]
    plan = assign_decode([DecodeItem(1, 10)], ranks)
    assert plan.assignments == ((1, RankRef(0, 0)),)
    assert plan.masked_ranks == 1


def test_iqr_mask_is_skipped_below_min_candidates() -> None:
    ranks = [rank(0, batch=5, kv=100), rank(1, batch=5, kv=101), rank(2, batch=0, kv=50_000)]
    plan = assign_decode([DecodeItem(1, 10)], ranks)
    assert plan.assignments == ((1, RankRef(0, 2)),)
    assert plan.masked_ranks == 0


def test_mask_that_would_drop_everyone_keeps_all() -> None:
    ranks = [rank(i, batch=i, kv=100) for i in range(4)]
    plan = assign_decode([DecodeItem(1, 10)], ranks, iqr_k=-1.0)
    assert plan.assignments == ((1, RankRef(0, 0)),)
    assert plan.masked_ranks == 0


def test_later_requests_see_earlier_placements() -> None:
    ranks = [rank(0), rank(1)]
    plan = assign_decode([DecodeItem(1, 10), DecodeItem(2, 30), DecodeItem(3, 20)], ranks)
    assert plan.assignments == ((2, RankRef(0, 0)), (3, RankRef(0, 1)), (1, RankRef(0, 1)))


def test_requests_without_room_are_unplaced() -> None:
    ranks = [rank(0, kv=90, cap=100), rank(1, batch=2, max_running=2), rank(2, available=False)]
    plan = assign_decode([DecodeItem(1, 50), DecodeItem(2, 5)], ranks)
    assert plan.assignments == ((2, RankRef(0, 0)),)
    assert plan.unplaced == (1,)


def test_max_running_caps_a_rank_within_the_round() -> None:
    plan = assign_decode(
        [DecodeItem(i, 1) for i in range(5)], [rank(0, max_running=2), rank(1, max_running=1)]
    )
    assert Counter(ref.rank for _, ref in plan.assignments) == {0: 2, 1: 1}
    assert plan.unplaced == (3, 4)


def test_mixed_capacities_use_each_ranks_own_capacity() -> None:
    ranks = [rank(0, kv=0, cap=100), rank(1, batch=3, kv=0, cap=1000)] + [
        rank(i, batch=9, cap=1000) for i in (2, 3)
    ]
    plan = assign_decode([DecodeItem(1, 500), DecodeItem(2, 50)], ranks)
    assert plan.assignments == ((1, RankRef(0, 1)), (2, RankRef(0, 0)))


def test_negative_kv_is_rejected() -> None:
    with pytest.raises(ValueError, match="kv_tokens must be >= 0, got -1"):
        DecodeItem(1, -1)


def as_lists(items: Sequence[DecodeItem], ranks: Sequence[DecodeRankLoad]) -> tuple[list, ...]:
    return (
        [it.rid for it in items],
        [it.kv_tokens for it in items],
        [r.batch for r in ranks],
        [r.kv_tokens for r in ranks],
        [r.kv_capacity_tokens for r in ranks],
        [r.max_running for r in ranks],
        [r.available for r in ranks],
        [r.ref for r in ranks],
    )


@settings(max_examples=300, deadline=None)
@given(rounds())
def test_lists_entry_matches_assign_decode(case: dict) -> None:
    items, ranks = case["items"], case["ranks"]
    kw = {"iqr_k": case["iqr_k"], "min_candidates": case["min_candidates"]}
    expected = assign_decode(items, ranks, **kw)
    assert assign_decode_lists(*as_lists(items, ranks), **kw) == expected
    in_ref_order = sorted(ranks, key=lambda r: r.ref)
    assert assign_decode_lists(*as_lists(items, in_ref_order), refs_sorted=True, **kw) == expected


@st.composite
def skewed_rounds(draw: st.DrawFn) -> dict:
    """Many ranks of one capacity, a few KV outliers with small batches (the parked-rank path)."""
    m = draw(st.integers(4, 40))
    heavy = set(draw(st.lists(st.integers(0, m - 1), max_size=4)))
    ranks = [
        DecodeRankLoad(
            RankRef(i // 8, i % 8),
            draw(st.integers(0, 3)) if i in heavy else draw(st.integers(2, 8)),
            draw(st.integers(600, 900)) if i in heavy else draw(st.integers(0, 300)),
            1000,
            draw(st.sampled_from([0, 0, 6, 9])),
            draw(st.booleans()) or draw(st.booleans()) or draw(st.booleans()),
        )
        for i in range(m)
    ]
    items = [DecodeItem(rid, draw(st.integers(0, 400))) for rid in range(draw(st.integers(0, 60)))]
    return {"items": items, "ranks": ranks, "iqr_k": draw(st.sampled_from([0.0, 1.5, 3.0]))}


@settings(max_examples=300, deadline=None)
@given(skewed_rounds())
def test_parked_outliers_match_naive_reference(case: dict) -> None:
    expected = reference_assign_decode(**case)
    assert assign_decode(**case) == expected
    kw = {"iqr_k": case["iqr_k"]}
    assert assign_decode_lists(*as_lists(case["items"], case["ranks"]), refs_sorted=True, **kw) == expected


def test_lists_entry_leaves_its_inputs_alone() -> None:
    lists = as_lists([DecodeItem(1, 10), DecodeItem(2, 20)], [rank(0, batch=1, kv=5), rank(1, kv=7)])
    before = [list(x) for x in lists]
    assign_decode_lists(*lists)
    assert [list(x) for x in lists] == before


def test_lists_entry_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="kv_tokens must be >= 0, got -1"):
        assign_decode_lists([7], [-1], [0], [0], [10], [0], [True], [RankRef(0, 0)])
    with pytest.raises(ValueError, match="rank lists differ in length"):
        assign_decode_lists([], [], [0], [0, 1], [10], [0], [True], [RankRef(0, 0)])


@st.composite
def large_rounds(draw: st.DrawFn) -> dict:
    """Clusters of 16+ ranks of one capacity (the windowed fence and the level walk): K spread, clustered
    with outliers (small batches: they park) or on a few values (ties), some ranks near full KV or at
    their running cap, rounds of up to 300 requests from tiny to large."""
    rng = draw(st.randoms(use_true_random=False))
    m = rng.choice([16, 17, 24, 50, 100, 200])
    cap = rng.choice([1000, 5000, 100_000])
    style = rng.choice(["spread", "outliers", "few"])
    grain = rng.choice([1, 10, 100])
    ranks = []
    for i in range(m):
        if style == "spread":
            k = rng.randint(0, cap // 2)
        elif style == "outliers":
            k = rng.randint(cap // 10, cap // 5) if rng.random() > 0.1 else rng.randint(cap // 2, cap)
        else:
            k = rng.choice([0, cap // 10, cap // 5, cap // 3])
        batch = rng.randint(0, 2) if k > cap // 2 else rng.randint(0, 10)
        max_running = rng.choice([0, 0, 0, batch + rng.randint(1, 5)])
        ref = RankRef(i // 32, i % 32)
        ranks.append(DecodeRankLoad(ref, batch, k // grain * grain, cap, max_running, rng.random() < 0.95))
    top = rng.choice([cap // 100, cap // 20, cap // 3])
    n = rng.randint(0, 300)
    items = [
        DecodeItem(rid, rng.randint(0, top) // grain * grain) for rid in rng.sample(range(10 * n + 1), n)
    ]
    return {
        "items": items,
        "ranks": ranks,
        "iqr_k": rng.choice([0.0, 0.5, 1.5, 3.0, -1.0]),
        "min_candidates": rng.choice([1, 4, 4, 20, 60]),
    }


@settings(max_examples=300, deadline=None)
@given(large_rounds())
def test_large_rounds_match_naive_reference(case: dict) -> None:
    expected = reference_assign_decode(**case)
    assert assign_decode(**case) == expected
    items, ranks = case["items"], case["ranks"]
    kw = {"iqr_k": case["iqr_k"], "min_candidates": case["min_candidates"]}
    flat, masked = assign_decode_ranks(*as_lists(items, ranks)[:7], **kw)
    placed = [(it.rid, ranks[j].ref) for it, j in zip(items, flat, strict=True) if j >= 0]
    assert sorted(placed) == sorted(expected.assignments)
    assert sorted(it.rid for it, j in zip(items, flat, strict=True) if j < 0) == sorted(expected.unplaced)
    assert masked == expected.masked_ranks


@pytest.mark.parametrize("offset", [1 << 70, -(1 << 70)])
def test_loads_beyond_64_bits_match_naive_reference(offset: int) -> None:
    rng = np.random.default_rng(3)
    cap = max(offset, 0) + 10**7
    ranks = [
        DecodeRankLoad(RankRef(0, i), int(rng.integers(0, 5)), offset + int(rng.integers(0, 10**6)), cap)
        for i in range(40)
    ]
    items = [DecodeItem(rid, int(rng.integers(0, 10**5))) for rid in range(60)]
    plan = assign_decode(items, ranks)
    assert len(plan.assignments) == len(items)
    assert plan == reference_assign_decode(items, ranks)


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([0.0, 0.5, 1.5, -1.0]), st.integers(1, 30))
def test_compiled_one_capacity_placement_is_the_python_placement(
    rnd: random.Random, iqr_k: float, min_candidates: int
) -> None:
    """One capacity goes to `decode_kernel`; mixed capacities to the pure-Python heap placement, which
    handles one capacity too: both choose the same ranks, ties and masks included."""
    from sbs.scheduler.core import decode_alloc, decode_kernel

    m = rnd.choice([1, 5, 64, 300])
    cap = 10_000
    batch = [rnd.randint(0, 8) for _ in range(m)]
    kv = [rnd.choice([0, 100, 2_000, 9_000, rnd.randint(0, cap)]) for _ in range(m)]
    max_running = [rnd.choice([0, 0, b + rnd.randint(1, 3)]) for b in batch]
    needs = sorted(
        (rnd.choice([0, 50, 500, rnd.randint(0, 3_000)]) for _ in range(rnd.randint(0, 400))), reverse=True
    )
    n = len(needs)
    kernel_args = (
        np.arange(n),
        np.array(needs, np.int64),
        np.array(batch, np.int64),
        np.array(kv, np.int64),
        np.array(max_running, np.int64),
        cap,
        iqr_k,
        min_candidates,
    )
    compiled, masked = decode_kernel.place(*kernel_args)
    python = decode_alloc._mixed_capacities(needs, batch, kv, [cap] * m, max_running, iqr_k, min_candidates)
    assert (compiled.tolist(), masked) == python
    too_wide = (1 << 63) - 1  # the K field alone takes 63 bits (1 << 62 did not, with K > 0)
    assert decode_kernel.place(*kernel_args[:5], too_wide, *kernel_args[6:])[1] == -1


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([0.0, 1.5, -1.0]), st.integers(1, 30))
def test_uniform_ranks_fast_path_is_assign_decode_ranks(
    rnd: random.Random, iqr_k: float, min_candidates: int
) -> None:
    """`assign_decode_uniform` (all ranks available, one capacity) gives `assign_decode_ranks`' answer,
    or None where that would not place with every rank live (a rank at its running limit)."""
    from sbs.scheduler.core.decode_alloc import assign_decode_uniform

    m = rnd.choice([1, 5, 64, 300])
    cap = 10_000
    batch = [rnd.randint(0, 8) for _ in range(m)]
    kv = [rnd.choice([0, 100, 2_000, 9_000, rnd.randint(0, cap)]) for _ in range(m)]
    limit = rnd.choice([0, 9, 12, rnd.randint(1, 9)])
    max_running = [limit if rnd.random() < 0.9 else rnd.choice([0, 20]) for _ in range(m)]
    n = rnd.randint(1, 400)
    rids = rnd.sample(range(10 * n), n)
    kvs = [rnd.choice([0, 50, 500, rnd.randint(0, 3_000)]) for _ in range(n)]
    kw = {"iqr_k": iqr_k, "min_candidates": min_candidates}
    fast = assign_decode_uniform(rids, kvs, batch, kv, cap, np.array(max_running, np.int64), **kw)
    expected = assign_decode_ranks(rids, kvs, batch, kv, [cap] * m, max_running, [True] * m, **kw)
    every_live = (min(max_running) > 0 and max(batch) < min(max_running)) or not any(max_running)
    assert fast == (expected if every_live else None)


def test_uniform_fast_path_leaves_what_it_cannot_place_exactly() -> None:
    """Outside the kernel's domain `assign_decode_uniform` answers None (`assign_decode_ranks` decides)."""
    from sbs.scheduler.core.decode_alloc import assign_decode_uniform

    limits = np.zeros(3, np.int64)
    assert assign_decode_uniform([1, 2], [5, 6], [0, 1, 2], [0, 0, 0], 100, limits) == ([1, 0], 0)  # 6 first
    assert assign_decode_uniform([1, 2], [5, -1], [0, 1, 2], [0, 0, 0], 100, limits) is None
    assert assign_decode_uniform([1], [5], [0, 1, 2], [0, 1 << 53, 0], 1 << 54, limits) is None
    assert assign_decode_uniform([1], [5], [0, 1, 2], [0, 0, 0], 1 << 60, limits) is None
    assert assign_decode_uniform([1], [5], [0, 1, 2], [0, 0, 0], 100, np.array([3, 2, 3])) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, (1 << 53) - 1)), max_size=60),
    st.sampled_from([None, 0, 10, 1000]),
)
def test_the_placement_order_is_largest_kv_first_then_rid_then_position(
    items: list[tuple[int, int]], small: int | None
) -> None:
    """The compiled placement order is `np.lexsort((rids, -kv))` (stable), whether its packed one-sort
    key fits (small non-negative rids and sizes, duplicates included) or not (two sorts)."""
    from sbs.scheduler.core import decode_kernel

    if small is not None:  # mostly the packed path: ids and sizes in a small range, with repeats
        items = [(abs(r) % (small + 1), k % (small + 1)) for r, k in items]
    rids = np.array([r for r, _ in items], np.int64)
    kvs = np.array([k for _, k in items], np.int64)
    expected = np.lexsort((rids, -kvs)) if len(items) else np.empty(0, np.int64)
    assert decode_kernel._by_kv_then_rid(rids, kvs).tolist() == expected.tolist()
