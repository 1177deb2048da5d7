"""water_fill (PBAA): selection, LPT packing, chunking, cache credit, and its makespan bounds."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core import prefill_kernel
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.prefill_alloc import water_fill_lists

from tests.scheduler.core.alloc_objects import (
    Placement,
    PrefillItem,
    PrefillPlan,
    RankSlot,
    as_plan,
    water_fill,
)

LINEAR = PrefillCapacityModel(fixed_s=0.0, per_token_s=1.0, per_pair_s=0.0)
REALISTIC = PrefillCapacityModel(fixed_s=0.004, per_token_s=2.5e-5, per_pair_s=1.5e-10)


def pairs(prefix: int, new: int) -> int:
    return (prefix + new) ** 2 - prefix**2


def reference_water_fill(
    items: Sequence[PrefillItem],
    ranks: Sequence[RankSlot],
    *,
    chunk_tokens: int,
    model: PrefillCapacityModel,
    allow_chunking: bool = True,
) -> PrefillPlan:
    """The documented semantics, written out naively: O(n * m), no heap."""
    a, b = model.per_token_s, model.per_pair_s
    tok = [r.committed_tokens for r in ranks]
    prs = [r.committed_pairs for r in ranks]
    room = [max(chunk_tokens - r.committed_tokens, 0) if r.available else 0 for r in ranks]

    def credit(it: PrefillItem, j: int) -> int:
        cache = it.cached_tokens_by_rank or {}
        return min(max(cache.get(j, 0), 0), it.tokens - 1) if ranks[j].available else 0

    def has_credit(it: PrefillItem) -> bool:
        return max((credit(it, j) for j in range(len(ranks))), default=0) > 0

    def credited(it: PrefillItem) -> set[int]:
        """Ranks its credit names with a positive amount, available or not."""
        cache = it.cached_tokens_by_rank or {}
        return {j for j, c in cache.items() if min(max(c, 0), it.tokens - 1) > 0}

    admitted, used = [], 0
    for i, it in enumerate(items):
        if used >= sum(room):
            break
        c = max((credit(it, j) for j in range(len(ranks))), default=0)
        if allow_chunking or it.tokens - c <= max(room, default=0):
            admitted.append((-(a * (it.tokens - c) + b * (it.tokens**2 - c * c)), i))
            used += min(it.tokens - c, chunk_tokens)  # a chunked item takes one rank's room at most
    placed: dict[int, Placement] = {}
    order = [i for _, i in sorted(admitted)]
    for pos, i in enumerate(order):
        it, t = items[i], items[i].tokens
        fits = []
        for j in range(len(ranks)):
            c = credit(it, j)
            if room[j] > 0 and room[j] >= t - c:
                fits.append((a * (tok[j] + t - c) + b * (prs[j] + t * t - c * c), j, c))
        if fits:
            _, j, c = min(fits)
            placed[i] = Placement(it.rid, j, t - c, 0, c)
            tok[j], prs[j], room[j] = tok[j] + t - c, prs[j] + t * t - c * c, room[j] - (t - c)
        elif allow_chunking and max(room, default=0) > 0:
            # Most room; ties: a rank no later cached item is credited on (unless its own), then lowest.
            claimed = {j for k in order[pos + 1 :] if has_credit(items[k]) for j in credited(items[k])}
            own = credited(it) if has_credit(it) else set()
            ties = [j for j in range(len(ranks)) if room[j] == max(room)]
            j = min(ties, key=lambda j: (j in claimed and j not in own, j))
            c, step = credit(it, j), room[j]
            placed[i] = Placement(it.rid, j, step, t - c - step, c)
            tok[j], prs[j], room[j] = tok[j] + step, prs[j] + pairs(c, step), 0
    return PrefillPlan(
        placements=tuple(placed[i] for i in sorted(placed)),
        unplaced=tuple(it.rid for i, it in enumerate(items) if i not in placed),
        rank_tokens=tuple(tok),
        rank_cost_s=tuple(model.rank_cost_s(t, p) for t, p in zip(tok, prs, strict=True)),
        rank_available=tuple(r.available for r in ranks),
    )


# ---------------------------------------------------------------------------------------------
# Strategies: small instances, integer-valued coefficients so the heap and the naive reference
# compare costs exactly (float rounding could otherwise break a near-tie differently).


@st.composite
def instances(draw: st.DrawFn, *, cache: bool = True) -> dict:
    chunk = draw(st.integers(1, 64))
    m = draw(st.integers(0, 6))
    ranks = []
    for _ in range(m):
        committed = draw(st.integers(0, chunk + 5))
        ranks.append(RankSlot(committed, float(committed * committed), draw(st.booleans()) or m == 1))
    n = draw(st.integers(0, 14))
    items = []
    for rid in draw(st.permutations(range(100, 100 + n))):
        tokens = draw(st.integers(1, 3 * chunk))
        credit = None
        if cache and m and draw(st.booleans()):
            keys = draw(st.sets(st.integers(0, m - 1), min_size=1, max_size=m))
            credit = {j: draw(st.integers(-1, tokens + 3)) for j in keys}
        items.append(PrefillItem(rid, tokens, credit))
    model = PrefillCapacityModel(
        float(draw(st.sampled_from([0, 3]))),
        float(draw(st.sampled_from([0, 1, 2]))),
        float(draw(st.sampled_from([0, 1]))),
    )
    return {
        "items": items,
        "ranks": ranks,
        "chunk_tokens": chunk,
        "model": model,
        "allow_chunking": draw(st.booleans()),
    }


@settings(max_examples=300, deadline=None)
@given(instances())
def test_matches_naive_reference(case: dict) -> None:
    assert water_fill(**case) == reference_water_fill(**case)


@settings(max_examples=200, deadline=None)
@given(instances())
def test_plan_invariants(case: dict) -> None:
    items, ranks, chunk = case["items"], case["ranks"], case["chunk_tokens"]
    plan = water_fill(**case)
    rids = [p.rid for p in plan.placements] + list(plan.unplaced)
    assert sorted(rids) == sorted(it.rid for it in items)  # every item exactly once
    order = {it.rid: i for i, it in enumerate(items)}
    assert [order[r] for r in plan.unplaced] == sorted(order[r] for r in plan.unplaced)
    assert [order[p.rid] for p in plan.placements] == sorted(order[p.rid] for p in plan.placements)
    by_rid = {it.rid: it for it in items}
    step_on = [0] * len(ranks)
    chunked_on = [0] * len(ranks)
    for p in plan.placements:
        assert ranks[p.rank].available
        assert p.step_tokens >= 1
        assert p.step_tokens + p.remaining_tokens + p.cached_tokens == by_rid[p.rid].tokens
        step_on[p.rank] += p.step_tokens
        if p.remaining_tokens:
            assert case["allow_chunking"]
            chunked_on[p.rank] += 1
    assert max(chunked_on, default=0) <= 1
    for j, r in enumerate(ranks):
        assert plan.rank_tokens[j] == r.committed_tokens + step_on[j]
        if step_on[j]:
            assert plan.rank_tokens[j] <= chunk
    assert water_fill(**case) == plan  # deterministic


@settings(max_examples=100, deadline=None)
@given(instances(), st.randoms(use_true_random=False))
def test_realistic_model_is_deterministic_and_within_chunk(case: dict, rnd: random.Random) -> None:
    case["model"] = PrefillCapacityModel(rnd.random(), rnd.random(), rnd.random() * 1e-3)
    plan = water_fill(**case)
    assert plan == water_fill(**case)
    for j, r in enumerate(case["ranks"]):
        if plan.rank_tokens[j] > r.committed_tokens:
            assert plan.rank_tokens[j] <= case["chunk_tokens"]


# ---------------------------------------------------------------------------------------------
# Behaviour by example.


def test_equal_prompts_spread_evenly() -> None:
    plan = water_fill(
        [PrefillItem(i, 100) for i in range(8)], [RankSlot()] * 4, chunk_tokens=1000, model=LINEAR
    )
    assert plan.rank_tokens == (200, 200, 200, 200)
    assert plan.imbalance() == 1.0
    assert plan.utilization(1000) == pytest.approx(0.2)


def test_largest_first_balances_where_arrival_order_would_not() -> None:
    # In arrival order, list scheduling would put 3+3 | 1+1+... ; LPT evens the ranks out.
    items = [PrefillItem(i, t) for i, t in enumerate([1, 1, 1, 1, 1, 1, 3, 3])]
    plan = water_fill(items, [RankSlot()] * 2, chunk_tokens=100, model=LINEAR)
    assert plan.rank_tokens == (6, 6)


def test_committed_work_counts_against_the_rank() -> None:
    ranks = [RankSlot(committed_tokens=500, committed_pairs=500.0**2), RankSlot()]
    plan = water_fill([PrefillItem(1, 300), PrefillItem(2, 200)], ranks, chunk_tokens=1000, model=LINEAR)
    assert {p.rid: p.rank for p in plan.placements} == {1: 1, 2: 1}
    assert plan.rank_tokens == (500, 500)


def test_selection_stops_once_the_instance_is_full() -> None:
    # 5 x 400 fill the 2 x 1000 room; packing leaves 200 + 200, so the fifth is chunked on rank 0 and
    # rank 1 keeps 200 free (selection does not top up after packing).
    items = [PrefillItem(i, 400) for i in range(10)]
    plan = water_fill(items, [RankSlot()] * 2, chunk_tokens=1000, model=LINEAR)
    assert plan.placements[-1] == Placement(4, 0, 200, 200, 0)
    assert plan.rank_tokens == (1000, 800)
    assert plan.unplaced == tuple(range(5, 10))
    assert plan.utilization(1000) == 0.9


def test_long_prompt_is_chunked_on_the_rank_with_most_room() -> None:
    ranks = [RankSlot(committed_tokens=700), RankSlot(committed_tokens=200), RankSlot(committed_tokens=900)]
    plan = water_fill([PrefillItem(7, 5000)], ranks, chunk_tokens=1000, model=LINEAR)
    assert plan.placements == (Placement(7, 1, 800, 4200, 0),)
    assert plan.rank_tokens == (700, 1000, 900)


def test_oversized_prompt_without_chunking_does_not_block_the_queue() -> None:
    items = [PrefillItem(1, 5000), PrefillItem(2, 300)]
    plan = water_fill(items, [RankSlot()] * 2, chunk_tokens=1000, model=LINEAR, allow_chunking=False)
    assert [p.rid for p in plan.placements] == [2]
    assert plan.unplaced == (1,)


def test_at_most_one_chunk_per_rank() -> None:
    items = [PrefillItem(i, 1500) for i in range(4)]
    plan = water_fill(items, [RankSlot()] * 2, chunk_tokens=1000, model=LINEAR)
    assert sorted(p.rank for p in plan.placements) == [0, 1]
    assert plan.unplaced == (2, 3)


def test_cache_credit_pulls_a_prompt_to_the_rank_holding_its_prefix() -> None:
    ranks = [RankSlot(committed_tokens=300), RankSlot()]
    item = PrefillItem(1, 1000, {0: 900})
    plan = water_fill([item], ranks, chunk_tokens=2000, model=LINEAR)
    assert plan.placements == (Placement(1, 0, 100, 0, 900),)
    assert plan.rank_tokens == (400, 0)


def test_cache_credit_is_applied_when_the_least_loaded_rank_holds_the_prefix() -> None:
    item = PrefillItem(1, 1000, {0: 250})
    plan = water_fill([item], [RankSlot(), RankSlot()], chunk_tokens=2000, model=LINEAR)
    assert plan.placements == (Placement(1, 0, 750, 0, 250),)


def test_fully_cached_prompt_still_recomputes_one_token() -> None:
    plan = water_fill([PrefillItem(1, 64, {0: 64})], [RankSlot()], chunk_tokens=100, model=LINEAR)
    assert plan.placements == (Placement(1, 0, 1, 0, 63),)


def test_cache_credit_lets_a_prompt_fit_a_nearly_full_rank() -> None:
    ranks = [RankSlot(committed_tokens=900), RankSlot(committed_tokens=950)]
    plan = water_fill([PrefillItem(1, 500, {1: 480})], ranks, chunk_tokens=1000, model=LINEAR)
    assert plan.placements == (Placement(1, 1, 20, 0, 480),)


def test_a_chunk_leaves_a_free_rank_to_the_prompt_cached_there() -> None:
    """LPT places a cached prompt last (its cost is small): the long prompts chunked before it take the
    free ranks without a later item's cache first (seen on Mooncake: a 28k-token prompt with 27k cached
    on rank 1 was recomputed whole on rank 3, because a 32k-token prompt's chunk took rank 1)."""
    items = [PrefillItem(1, 32_000), PrefillItem(2, 17_000), PrefillItem(3, 28_600, {1: 27_648})]
    plan = water_fill(items, [RankSlot()] * 4, chunk_tokens=16_384, model=REALISTIC)
    by_rid = {p.rid: p for p in plan.placements}
    assert (by_rid[3].rank, by_rid[3].cached_tokens, by_rid[3].step_tokens) == (1, 27_648, 952)
    assert {by_rid[1].rank, by_rid[2].rank} == {0, 2}


def test_credit_for_an_unknown_rank_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"rank 5, expected 0\.\.1"):
        water_fill([PrefillItem(1, 10, {5: 4})], [RankSlot()] * 2, chunk_tokens=100, model=LINEAR)


def test_unavailable_rank_gets_nothing() -> None:
    ranks = [RankSlot(available=False), RankSlot(), RankSlot(available=False, committed_tokens=10)]
    plan = water_fill([PrefillItem(i, 10, {0: 9}) for i in range(5)], ranks, chunk_tokens=100, model=LINEAR)
    assert {p.rank for p in plan.placements} == {1}
    assert plan.rank_tokens == (0, 50, 10)
    assert plan.utilization(100) == 0.5
    assert plan.imbalance() == 1.0


def test_no_ranks_places_nothing() -> None:
    plan = water_fill([PrefillItem(1, 10)], [], chunk_tokens=100, model=LINEAR)
    assert plan.placements == () and plan.unplaced == (1,)
    assert plan.step_s == 0.0 and plan.utilization(100) == 0.0 and plan.imbalance() == 1.0


def test_step_is_the_slowest_rank_including_committed_work() -> None:
    ranks = [RankSlot(committed_tokens=100, committed_pairs=1e4), RankSlot()]
    plan = water_fill([PrefillItem(1, 50)], ranks, chunk_tokens=1000, model=REALISTIC)
    assert plan.rank_cost_s == (REALISTIC.rank_cost_s(100, 1e4), REALISTIC.rank_cost_s(50, 2500.0))
    assert plan.step_s == max(plan.rank_cost_s)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="tokens must be >= 1, got 0"):
        PrefillItem(3, 0)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        water_fill([], [RankSlot()], chunk_tokens=0, model=LINEAR)


# ---------------------------------------------------------------------------------------------
# Makespan: brute force on small uncapped instances, and a comparison with round robin.


def brute_force_step_s(items: Sequence[int], ranks: Sequence[RankSlot], model: PrefillCapacityModel) -> float:
    best = math.inf
    for assign in itertools.product(range(len(ranks)), repeat=len(items)):
        tok = [r.committed_tokens for r in ranks]
        prs = [r.committed_pairs for r in ranks]
        for t, j in zip(items, assign, strict=True):
            tok[j] += t
            prs[j] += t * t
        best = min(best, model.step_s(tok, prs))
    return best


bound_cases = st.tuples(
    st.lists(st.integers(1, 60), max_size=7),
    st.integers(1, 3),
    st.lists(st.integers(0, 60), min_size=3, max_size=3),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1e-2),
)


@settings(max_examples=300, deadline=None)
@given(bound_cases)
def test_within_list_scheduling_bound_of_optimum(case: tuple) -> None:
    """step <= OPT + (1 - 1/m) * max item cost, with committed loads (see prefill_alloc docstring)."""
    tokens, m, committed, fixed, a, b = case
    model = PrefillCapacityModel(fixed, a, b)
    ranks = [RankSlot(c, float(c * c)) for c in committed[:m]]
    items = [PrefillItem(i, t) for i, t in enumerate(tokens)]
    plan = water_fill(items, ranks, chunk_tokens=10**6, model=model)
    assert plan.unplaced == ()
    opt = brute_force_step_s(tokens, ranks, model)
    max_cost = max((a * t + b * t * t for t in tokens), default=0.0)
    assert plan.step_s <= opt + (1 - 1 / m) * max_cost + 1e-9


@settings(max_examples=300, deadline=None)
@given(bound_cases)
def test_within_lpt_bound_of_optimum_without_committed_work(case: tuple) -> None:
    """Graham: LPT <= (4/3 - 1/(3m)) * OPT when all ranks start empty."""
    tokens, m, _, fixed, a, b = case
    model = PrefillCapacityModel(fixed, a, b)
    ranks = [RankSlot()] * m
    plan = water_fill(
        [PrefillItem(i, t) for i, t in enumerate(tokens)], ranks, chunk_tokens=10**6, model=model
    )
    opt = brute_force_step_s(tokens, ranks, model)
    assert plan.step_s <= (4 / 3 - 1 / (3 * m)) * opt + 1e-9


def chat_prompts(rng: random.Random, n: int) -> list[int]:
    """Chat-trace-like prompt lengths: lognormal, mean ~1.2k tokens, tail clipped at 14k."""
    mu = math.log(1200) - 0.5
    return [min(max(int(rng.lognormvariate(mu, 1.0)), 16), 14_000) for _ in range(n)]


def test_beats_round_robin_on_random_batches() -> None:
    rng = random.Random(20240601)
    wins = ties = 0
    ratios = []
    cases = 200
    for _ in range(cases):
        m = rng.choice([4, 8, 16])
        tokens = chat_prompts(rng, rng.randrange(m, 6 * m))
        ranks = [
            RankSlot(c, float(c * c)) for c in (rng.choice([0, 0, rng.randrange(4000)]) for _ in range(m))
        ]
        items = [PrefillItem(i, t) for i, t in enumerate(tokens)]
        plan = water_fill(items, ranks, chunk_tokens=10**6, model=REALISTIC)
        tok = [r.committed_tokens for r in ranks]
        prs = [r.committed_pairs for r in ranks]
        for i, t in enumerate(tokens):
            tok[i % m] += t
            prs[i % m] += t * t
        rr = REALISTIC.step_s(tok, prs)
        wins += plan.step_s < rr
        ties += plan.step_s == rr
        ratios.append(plan.step_s / rr)
    assert wins + ties >= 0.97 * cases
    assert sum(ratios) / cases < 0.8


@settings(max_examples=300, deadline=None)
@given(instances())
def test_lists_entry_matches_water_fill(case: dict) -> None:
    items, ranks = case.pop("items"), case.pop("ranks")
    credits = [it.cached_tokens_by_rank for it in items]
    cols = water_fill_lists(
        [it.rid for it in items],
        [it.tokens for it in items],
        [r.committed_tokens for r in ranks],
        [r.committed_pairs for r in ranks],
        [r.available for r in ranks],
        credits=credits,
        **case,
    )
    plan = water_fill(items, ranks, **case)
    assert as_plan(cols) == plan
    assert cols.step_s == plan.step_s
    if all(r.available for r in ranks) and not any(credits):
        args = ([it.rid for it in items], [it.tokens for it in items])
        ranks_cols = ([r.committed_tokens for r in ranks], [r.committed_pairs for r in ranks])
        cols = water_fill_lists(*args, *ranks_cols, **case)
        assert as_plan(cols) == plan
        if cols.ranks_a is not None:  # the int64 columns, where the compiled packing placed every item
            assert cols.uncached_a is not None
            assert cols.ranks_a.tolist() == cols.ranks
            assert cols.uncached_a.tolist() == [
                s + r for s, r in zip(cols.step_tokens, cols.remaining_tokens, strict=True)
            ]


def test_lists_entry_rejects_bad_tokens() -> None:
    with pytest.raises(ValueError, match="prefill item 4: tokens must be >= 1, got 0"):
        water_fill_lists([4], [0], [0], [0.0], chunk_tokens=8, model=LINEAR)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 3000) | st.sampled_from([100, 4096]), max_size=120),
    st.lists(st.integers(0, 5000) | st.sampled_from([0, 4096]), min_size=1, max_size=40),
    st.sampled_from([LINEAR, REALISTIC, PrefillCapacityModel(0.0, 0.0, 0.0)]),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_compiled_packing_is_the_python_packing(
    sizes: list[int], committed: list[int], model: PrefillCapacityModel, chunking: bool, rnd: random.Random
) -> None:
    """Without cache credit `water_fill_lists` packs with `prefill_kernel`; its choices (ties included)
    are those of the pure-Python packing, which handles credit."""
    from sbs.scheduler.core.prefill_alloc import _pack, _pack_compiled

    chunk = 4096
    pairs_ = [float(t * t) for t in committed]
    avail = [rnd.random() < 0.9 for _ in committed]
    room = [max(chunk - t, 0) if ok else 0 for t, ok in zip(committed, avail, strict=True)]
    a, b = model.per_token_s, model.per_pair_s
    compiled = _pack_compiled(sizes, committed, pairs_, room, a, b, chunking)
    assert compiled is not None
    tok, prs = list(committed), list(pairs_)
    python = _pack(
        range(len(sizes)), sizes, [0] * len(sizes), None, tok, prs, list(room), avail, a, b, False, chunking
    )
    assert compiled[:3] == python[:3]
    assert compiled[3] == tok and compiled[4] == prs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 4096), st.integers(1, 100_000))
def test_head_count_is_the_running_sum_search(sizes: list[int], chunk: int, room: int) -> None:
    """`prefill_kernel.head_count`: the first items whose sum (each at most a chunk) reaches the room."""
    a = np.array(sizes, np.int64)
    need = np.minimum(a, chunk).cumsum()
    assert prefill_kernel.head_count(a, chunk, room) == min(int(need.searchsorted(room, "left")) + 1, len(a))
