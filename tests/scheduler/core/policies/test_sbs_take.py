"""`take_in_order`: the requests a release offers to water-filling, against a one-by-one reference."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies.sbs import take_in_order
from sbs.scheduler.core.policies.sbs_timing import StepBudget, item_cost_s

MODEL = PrefillCapacityModel(0.01, 1e-4, 1e-8)
CHUNK = 2000


def reference_take(tokens: list[int], budget: StepBudget, min_count: int) -> list[int]:
    """The selection loop spelled out: in order, skipping what the budget refuses, until full."""
    take: list[int] = []
    taken, cost = 0, 0.0
    for i, t in enumerate(tokens):
        if (taken >= budget.token_room or cost >= budget.cost_room_s) and len(take) >= min_count:
            break
        c = MODEL.per_token_s * min(t, CHUNK) + MODEL.per_pair_s * min(t, CHUNK) ** 2
        refused = t <= budget.min_tokens or (budget.max_tokens is not None and t > budget.max_tokens)
        if refused or (take and budget.level_s is not None and c > budget.level_s):
            continue
        take.append(i)
        taken += min(t, CHUNK)
        cost += c
    return take


budgets = st.builds(
    StepBudget,
    token_room=st.integers(-100, 50_000),
    cost_room_s=st.one_of(st.just(math.inf), st.floats(0.0, 5.0)),
    level_s=st.none() | st.floats(0.0, 0.3),
    min_tokens=st.sampled_from([0, 0, 1000]),
    max_tokens=st.sampled_from([None, None, 1500]),
)


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=200), budgets, st.integers(1, 64))
def test_matches_the_one_by_one_loop(tokens: list[int], budget: StepBudget, min_count: int) -> None:
    assert list(take_in_order(tokens, budget, min_count, MODEL, CHUNK)) == reference_take(
        tokens, budget, min_count
    )


def test_the_head_of_the_queue_comes_back_as_a_range() -> None:
    no_level = StepBudget(token_room=8, cost_room_s=math.inf, level_s=None)
    assert take_in_order([5, 5, 5, 5], no_level, 1, MODEL, CHUNK) == range(2)
    assert take_in_order([5, 5, 5, 5], no_level, 3, MODEL, CHUNK) == range(3)
    level = StepBudget(token_room=12, cost_room_s=math.inf, level_s=item_cost_s(MODEL, 5, CHUNK))
    assert take_in_order([9, 2, 9, 3], level, 1, MODEL, CHUNK) == [0, 1, 3]


def test_a_request_above_the_level_is_skipped_but_never_the_first() -> None:
    level = StepBudget(token_room=10_000, cost_room_s=math.inf, level_s=item_cost_s(MODEL, 500, CHUNK))
    assert list(take_in_order([800, 400, 900, 500], level, 1, MODEL, CHUNK)) == [0, 1, 3]


@given(st.lists(st.integers(1, 3000), max_size=200), budgets, st.integers(1, 64))
def test_arrays_lists_and_python_ints_take_the_same(
    tokens: list[int], budget: StepBudget, min_count: int
) -> None:
    """The numpy passes over a list or an int64 array, and the Python passes (`_take_lists`, for sizes
    beyond int64), take the same positions, a prefix as a `range` in all three."""
    from sbs.scheduler.core.policies.sbs_take import _take_lists

    python = _take_lists(tokens, budget, min_count, MODEL, CHUNK)
    for got in (
        take_in_order(tokens, budget, min_count, MODEL, CHUNK),
        take_in_order(np.array(tokens, np.int64), budget, min_count, MODEL, CHUNK),
    ):
        assert got == python and type(got) is type(python)
        assert all(type(i) is int for i in got)


def test_sizes_beyond_int64_take_in_python() -> None:
    no_level = StepBudget(token_room=8, cost_room_s=math.inf, level_s=None)
    tokens = [5, 1 << 70, 5]  # the long one counts as a chunk and fills the room
    assert take_in_order(tokens, no_level, 1, MODEL, CHUNK) == range(2)
    assert reference_take(tokens, no_level, 1) == [0, 1]
