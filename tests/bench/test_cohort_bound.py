"""`sbs.bench.cohort_bound`: the lockstep time balance of long prompts, unaligned and in cohorts."""

from __future__ import annotations

import numpy as np
import pytest
from sbs.bench import cohort_bound
from sbs.sim.cluster import PRESETS

COST = PRESETS["ds3-h800"].cost_model()


def test_chunks_cover_the_prompt_and_their_pairs_telescope() -> None:
    plan = cohort_bound.chunk_plan(40_000, 16_384)
    assert [n for n, _ in plan] == [16_384, 16_384, 7_232]
    assert sum(p for _, p in plan) == pytest.approx(40_000.0**2)


def test_equal_prompts_balance_whatever_the_arrangement() -> None:
    d, w = cohort_bound.run_ranks(COST, [[40_000, 40_000]] * 4, 16_384, 32)
    assert w / d == pytest.approx(1.0)


def test_pools_group_every_prompt_once_with_the_oldest_first() -> None:
    lengths = list(np.random.default_rng(1).integers(16_000, 64_001, 100))
    groups = cohort_bound.pool_groups(lengths, 20, 8)
    assert sorted(t for g in groups for t in g) == sorted(lengths)
    assert all(len(g) <= 8 for g in groups) and groups[0][0] == lengths[0]


def test_bigger_pools_align_more_and_sorting_bounds_them() -> None:
    lengths = np.random.default_rng(0).integers(16_000, 64_001, 640).tolist()
    d, w = cohort_bound.run_ranks(COST, [lengths[r::32] for r in range(32)], 16_384, 32)
    fifo = w / d
    groups = [cohort_bound.pool_groups(lengths, p, 32) for p in (32, 64, 256)]
    pooled = [cohort_bound.cohorts(COST, g, 16_384, 32) for g in groups]
    srt = sorted(lengths)
    bound = cohort_bound.cohorts(COST, [srt[i : i + 32] for i in range(0, 640, 32)], 16_384, 32)
    assert fifo < 0.6 and pooled == sorted(pooled) and pooled[-1] <= bound and bound > 0.9


def test_bad_arguments_name_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cohort_bound.main(["--lengths", "64000"])
    assert "--lengths" in capsys.readouterr().err
