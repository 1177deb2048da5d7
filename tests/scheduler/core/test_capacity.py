"""PrefillCapacityModel: per-rank cost, lockstep step time, causal-attention pairs."""

from __future__ import annotations

import pytest
from sbs.scheduler.core.capacity import PrefillCapacityModel

MODEL = PrefillCapacityModel(fixed_s=0.01, per_token_s=1e-4, per_pair_s=1e-8)


def test_idle_rank_costs_nothing() -> None:
    assert MODEL.rank_cost_s(0, 0.0) == 0.0


def test_rank_cost_is_fixed_plus_linear_plus_pairs() -> None:
    assert MODEL.rank_cost_s(100, 1e4) == pytest.approx(0.01 + 1e-2 + 1e-4)


def test_step_is_slowest_rank() -> None:
    assert MODEL.step_s([10, 0, 300], [100.0, 0.0, 9e4]) == MODEL.rank_cost_s(300, 9e4)


def test_step_of_no_ranks_is_zero() -> None:
    assert MODEL.step_s([], []) == 0.0


def test_step_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="rank_pairs"):
        MODEL.step_s([1, 2], [1.0])


def test_pairs_count_new_queries_behind_prefix() -> None:
    assert PrefillCapacityModel.pairs(0, 10) == 100.0
    assert PrefillCapacityModel.pairs(30, 10) == 40**2 - 30**2
    assert PrefillCapacityModel.pairs(5, 0) == 0.0


def test_chunks_add_up_to_whole_prompt_pairs() -> None:
    whole = PrefillCapacityModel.pairs(0, 1000)
    chunks = PrefillCapacityModel.pairs(0, 300) + PrefillCapacityModel.pairs(300, 700)
    assert chunks == whole


def test_negative_coefficients_are_rejected() -> None:
    with pytest.raises(ValueError, match="per_token_s=-1"):
        PrefillCapacityModel(0.0, -1.0, 0.0)
