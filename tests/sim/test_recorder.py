"""`sbs.sim.recorder`: the token-weighted percentile behind `itl_p99_s`, and the summary around it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sbs.sim.recorder import SUMMARY_KEYS, Recorder, weighted_percentile


def test_weighted_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(weighted_percentile([], [], 99))
    assert math.isnan(weighted_percentile(np.array([]), np.array([]), 50))


def test_weighted_percentile_counts_each_value_weight_times() -> None:
    # 0.1 s once, 0.2 s three times, 0.5 s six times: 10 tokens in all.
    values, weights = [0.5, 0.1, 0.2], [6, 1, 3]
    assert weighted_percentile(values, weights, 10) == 0.1
    assert weighted_percentile(values, weights, 40) == 0.2
    assert weighted_percentile(values, weights, 41) == 0.5
    assert weighted_percentile(values, weights, 99) == 0.5
    assert weighted_percentile(values, weights, 0) == 0.1


def test_weighted_percentile_is_the_expanded_samples_lower_percentile() -> None:
    rng = np.random.default_rng(7)
    values = rng.exponential(0.05, size=200)
    weights = rng.integers(1, 9, size=200)
    expanded = np.repeat(values, weights)
    for q in (50, 90, 99):
        assert weighted_percentile(values, weights, q) == np.percentile(expanded, q, method="inverted_cdf")


def test_weighted_percentile_without_weight_is_the_plain_percentile() -> None:
    assert weighted_percentile([3.0, 1.0, 2.0], [0, 0, 0], 50) == pytest.approx(2.0)


def test_summary_without_decode_steps_has_no_itl() -> None:
    rec = Recorder(1)
    rec.arrival[0], rec.dispatched[0], rec.first_token[0], rec.finished[0] = 0.0, 0.0, 1.0, 2.0
    rec.prompt[0], rec.output[0] = 100, 5
    out = rec.summary(slo_ttft_s=2.0, slo_tpot_s=1.0)
    assert set(out) == set(SUMMARY_KEYS)
    assert out["completed"] == 1 and out["ttft_mean_s"] == 1.0
    assert math.isnan(out["itl_p99_s"])
    rec.on_decode_step(0.02, 4, 1, 4)
    rec.on_decode_step(0.03, 1, 1, 1)
    assert rec.summary(slo_ttft_s=2.0, slo_tpot_s=1.0)["itl_p99_s"] == 0.03


def test_time_balance_is_weighted_by_step_duration() -> None:
    rec = Recorder(1)
    rec.arrival[0], rec.dispatched[0], rec.first_token[0], rec.finished[0] = 0.0, 0.0, 1.0, 2.0
    rec.prompt[0], rec.output[0] = 100, 5
    assert rec.summary(slo_ttft_s=2.0, slo_tpot_s=1.0)["prefill_time_balance"] == 1.0  # no step
    rec.on_prefill_step([100, 0], 1000, 3.0, 0.5)
    rec.on_prefill_step([100, 100], 1000, 1.0, 1.0)
    assert rec.summary(slo_ttft_s=2.0, slo_tpot_s=1.0)["prefill_time_balance"] == pytest.approx(0.625)
