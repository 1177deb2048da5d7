"""Immediate-dispatch rank pickers and their factory."""

from __future__ import annotations

import random

import pytest
from sbs.scheduler.core import policies
from sbs.settings import scheduling


def picker(name: str, seed: int = 0) -> policies.RankPicker:
    return policies.make_picker(scheduling.policy_settings(name), random.Random(seed))


def test_round_robin_cycles_over_live_ranks() -> None:
    rr = picker("round_robin")
    assert [rr.pick([3, 5, 7], [0] * 8) for _ in range(5)] == [3, 5, 7, 3, 5]


def test_least_load_takes_the_fewest_outstanding_tokens_lowest_index_on_ties() -> None:
    ll = picker("least_load")
    assert ll.pick([0, 1, 2, 3], [30, 10, 10, 20]) == 1


def test_power_of_two_never_takes_the_worse_of_its_two_samples() -> None:
    load = [5, 0, 9, 3, 7, 1]
    p2 = picker("power_of_two", seed=3)
    worst = max(range(6), key=load.__getitem__)
    assert all(p2.pick(range(6), load) != worst for _ in range(200))


def test_random_is_reproducible_for_a_seed() -> None:
    a, b = picker("random", seed=11), picker("random", seed=11)
    assert [a.pick(range(64), []) for _ in range(20)] == [b.pick(range(64), []) for _ in range(20)]


@pytest.mark.parametrize("name", ["sbs", "sglang"])
def test_policies_without_a_picker_are_refused_with_the_valid_names(name: str) -> None:
    with pytest.raises(ValueError, match="round_robin, random, least_load, power_of_two"):
        picker(name)
