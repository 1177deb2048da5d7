"""Workload shaping: rate/load scaling, truncation, synthetic arrival processes, observed samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sbs.sim import workload
from sbs.sim.loaders import lengths
from sbs.sim.loaders.lengths import LengthTable
from sbs.sim.trace import Trace, build_trace

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"
SHAREGPT = TRACES / "sharegpt_lengths_sarathi" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def _trace() -> Trace:
    return build_trace(
        "t",
        [0.0, 1.0, 3.0, 4.0],
        [100, 200, 300, 400],
        [1, 2, 3, 4],
        [(1,), (1, 2), (3,), ()],
        block_tokens=512,
    )


def _arrivals(trace: Trace) -> np.ndarray:
    return np.array([r.arrival_s for r in trace.requests])


def _gap_cv(trace: Trace) -> float:
    gaps = np.diff(_arrivals(trace))
    return float(gaps.std() / gaps.mean())


def test_rate_scaled_divides_timestamps_and_keeps_the_rest():
    trace = _trace()
    fast = workload.rate_scaled(trace, 2.0)
    assert _arrivals(fast).tolist() == [0.0, 0.5, 1.5, 2.0]
    assert fast.mean_rate_rps == pytest.approx(2 * trace.mean_rate_rps)
    assert [(r.prompt_tokens, r.output_tokens, r.hash_ids) for r in fast.requests] == [
        (r.prompt_tokens, r.output_tokens, r.hash_ids) for r in trace.requests
    ]
    assert fast.block_tokens == 512
    assert _arrivals(trace).tolist() == [0.0, 1.0, 3.0, 4.0]  # input untouched
    assert _arrivals(workload.rate_scaled(trace, 0.5)).tolist() == [0.0, 2.0, 6.0, 8.0]


def test_load_scaled_hits_the_target_prompt_load():
    trace = _trace()
    assert trace.prompt_tokens_per_s == 250.0
    scaled = workload.load_scaled(trace, 1_000.0)
    assert scaled.prompt_tokens_per_s == pytest.approx(1_000.0)
    assert scaled.duration_s == pytest.approx(1.0)
    assert workload.load_scaled(trace, 50.0).prompt_tokens_per_s == pytest.approx(50.0)


def test_load_scaled_gives_the_kept_window_its_load_on_an_uneven_trace():
    # A light first half (one 100-token request a second), then a heavy one (ten a second).
    arrivals = [float(i) for i in range(100)] + [100.0 + 0.1 * i for i in range(1000)]
    trace = build_trace("uneven", arrivals, [100] * 1100, [1] * 1100)
    target = 400.0  # the mean is 1100 / 2 = 550 tok/s before scaling
    window = 40.0
    whole = workload.truncated(workload.load_scaled(trace, target), window)
    assert sum(r.prompt_tokens for r in whole.requests) / window < 0.5 * target  # the mean misleads
    scaled = workload.load_scaled(trace, target, window_s=window)
    kept = workload.truncated(scaled, window)
    assert sum(r.prompt_tokens for r in kept.requests) / window == pytest.approx(target, rel=0.01)
    # A window the scaled trace does not fill is repeated later: its mean is the load.
    assert workload.load_scaled(trace, target, window_s=1e4).prompt_tokens_per_s == pytest.approx(target)


def test_load_scaled_refuses_a_trace_without_a_span():
    with pytest.raises(ValueError, match="spans 0 s"):
        workload.load_scaled(build_trace("t", [5.0, 5.0], [1, 1], [1, 1]), 100.0)


def test_truncated_keeps_arrivals_before_the_cut():
    trace = _trace()
    assert _arrivals(workload.truncated(trace, 3.0)).tolist() == [0.0, 1.0]
    assert _arrivals(workload.truncated(trace, 3.0001)).tolist() == [0.0, 1.0, 3.0]
    assert len(workload.truncated(trace, 100.0)) == 4
    assert workload.truncated(trace, 3.0).block_tokens == 512


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "2"], ids=repr)
def test_scaling_arguments_are_validated(bad):
    trace = _trace()
    with pytest.raises(ValueError, match=r"^factor must be a positive number"):
        workload.rate_scaled(trace, bad)
    with pytest.raises(ValueError, match=r"^target_prompt_tokens_per_s must be a positive number"):
        workload.load_scaled(trace, bad)
    with pytest.raises(ValueError, match=r"^duration_s must be a positive number"):
        workload.truncated(trace, bad)


def test_synthetic_is_deterministic_per_seed():
    a = workload.synthetic(
        rate_rps=20, duration_s=100, seed=4, lengths=LengthTable("l", (1, 2, 3), (4, 5, 6))
    )
    b = workload.synthetic(
        rate_rps=20, duration_s=100, seed=4, lengths=LengthTable("l", (1, 2, 3), (4, 5, 6))
    )
    c = workload.synthetic(
        rate_rps=20, duration_s=100, seed=5, lengths=LengthTable("l", (1, 2, 3), (4, 5, 6))
    )
    assert a == b
    assert _arrivals(a)[:20].tolist() != _arrivals(c)[:20].tolist()


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_synthetic_honours_rate_and_cv(cv):
    trace = workload.synthetic(rate_rps=10, duration_s=3_000, seed=1, cv=cv, lengths=(100, 10))
    assert len(trace) == pytest.approx(30_000, rel=0.05 * max(cv, 1))
    assert trace.duration_s < 3_000
    assert _gap_cv(trace) == pytest.approx(cv, rel=0.1)


def test_synthetic_cv_zero_is_evenly_spaced():
    trace = workload.synthetic(rate_rps=4, duration_s=10, seed=0, cv=0, lengths=(100, 10))
    assert _arrivals(trace).tolist() == pytest.approx([i * 0.25 for i in range(40)])


def test_synthetic_fixed_lengths():
    trace = workload.synthetic(rate_rps=5, duration_s=10, seed=0, lengths=(123, 45))
    assert {(r.prompt_tokens, r.output_tokens) for r in trace.requests} == {(123, 45)}
    assert trace.block_tokens is None


def test_synthetic_draws_pairs_from_a_trace_without_hashes():
    trace = workload.synthetic(rate_rps=50, duration_s=20, seed=0, lengths=_trace())
    assert {(r.prompt_tokens, r.output_tokens) for r in trace.requests} == {
        (100, 1),
        (200, 2),
        (300, 3),
        (400, 4),
    }
    assert all(r.hash_ids == () for r in trace.requests)
    assert trace.block_tokens is None


def test_synthetic_with_sharegpt_lengths():
    if not SHAREGPT.exists():
        pytest.skip(f"shared trace data not found at {SHAREGPT} (expected ../shared/traces beside the repo)")
    table = lengths.load(SHAREGPT)
    trace = workload.synthetic(rate_rps=20, duration_s=1_000, seed=2, lengths=table)
    prompts = np.array([r.prompt_tokens for r in trace.requests])
    assert prompts.mean() == pytest.approx(2_340, rel=0.05)
    assert trace.prompt_tokens_per_s == pytest.approx(20 * 2_340, rel=0.07)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate_rps": 0}, "^rate_rps must be"),
        ({"duration_s": -5}, "^duration_s must be"),
        ({"cv": -1}, "^cv must be"),
        ({"seed": -1}, "^seed must be"),
        ({"seed": 1.5}, "^seed must be"),
        ({"lengths": (0, 5)}, "^lengths must be"),
        ({"lengths": [100, 5]}, "^lengths must be"),
        ({"lengths": build_trace("e", [], [], [])}, "^lengths: trace 'e' has no requests"),
    ],
    ids=["rate", "duration", "cv", "seed", "float_seed", "zero_prompt", "list_lengths", "empty_trace"],
)
def test_synthetic_arguments_are_validated(kwargs, match):
    args = {"rate_rps": 1.0, "duration_s": 10.0, "seed": 0, "lengths": (10, 10)} | kwargs
    with pytest.raises(ValueError, match=match):
        workload.synthetic(**args)


def _burst_counts(trace: Trace, period_s: float, burst_s: float) -> tuple[int, int]:
    phase = _arrivals(trace) % period_s
    return int((phase < burst_s).sum()), int((phase >= burst_s).sum())


def test_bursty_on_off_has_no_arrivals_between_bursts():
    trace = workload.bursty(
        base_rate_rps=0, burst_rate_rps=50, period_s=60, burst_s=10, duration_s=600, seed=3, lengths=(100, 10)
    )
    on, off = _burst_counts(trace, 60, 10)
    assert off == 0
    assert on == pytest.approx(50 * 10 * 10, rel=0.05)


def test_bursty_rates_inside_and_outside_bursts():
    trace = workload.bursty(
        base_rate_rps=5,
        burst_rate_rps=40,
        period_s=100,
        burst_s=20,
        duration_s=5_000,
        seed=8,
        cv=2.0,
        lengths=(100, 10),
    )
    on, off = _burst_counts(trace, 100, 20)
    assert on == pytest.approx(40 * 20 * 50, rel=0.1)
    assert off == pytest.approx(5 * 80 * 50, rel=0.1)
    assert trace.mean_rate_rps == pytest.approx((40 * 20 + 5 * 80) / 100, rel=0.1)


def test_bursty_is_deterministic_per_seed():
    args = {"base_rate_rps": 2, "burst_rate_rps": 20, "period_s": 30, "burst_s": 5, "duration_s": 300}
    a = workload.bursty(**args, seed=1, lengths=(10, 10))
    assert a == workload.bursty(**args, seed=1, lengths=(10, 10))
    assert _arrivals(a).tolist() != _arrivals(workload.bursty(**args, seed=2, lengths=(10, 10))).tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_rate_rps": -1}, "^base_rate_rps must be"),
        ({"burst_rate_rps": 0}, "^burst_rate_rps must be"),
        ({"period_s": 0}, "^period_s must be"),
        ({"burst_s": 0}, "^burst_s must be a positive"),
        ({"burst_s": 40}, r"^burst_s must be <= period_s \(30\)"),
        ({"duration_s": 0}, "^duration_s must be"),
    ],
    ids=["base", "burst_rate", "period", "burst", "burst_longer_than_period", "duration"],
)
def test_bursty_arguments_are_validated(kwargs, match):
    args = {
        "base_rate_rps": 1.0,
        "burst_rate_rps": 10.0,
        "period_s": 30.0,
        "burst_s": 5.0,
        "duration_s": 60.0,
        "seed": 0,
        "lengths": (10, 10),
    } | kwargs
    with pytest.raises(ValueError, match=match):
        workload.bursty(**args)


# -- synthetic_from_observed -----------------------------------------------------------------------


def test_synthetic_from_observed_keeps_rate_and_pairs() -> None:
    prompts, outputs = [100, 2000, 3000], [10, 200, 0]
    t = workload.synthetic_from_observed(20.0, prompts, outputs, duration_s=60.0, seed=3)
    assert 18.0 <= t.mean_rate_rps <= 22.0
    pairs = {(r.prompt_tokens, r.output_tokens) for r in t.requests}
    assert pairs <= {(100, 10), (2000, 200), (3000, 1)}  # paired, 0 output → 1
    assert t == workload.synthetic_from_observed(20.0, prompts, outputs, duration_s=60.0, seed=3)
    assert t != workload.synthetic_from_observed(20.0, prompts, outputs, duration_s=60.0, seed=4)


def test_synthetic_from_observed_draws_unpaired_samples_independently() -> None:
    t = workload.synthetic_from_observed(
        50.0, np.array([100, 200]), np.array([5, 6, 7]), duration_s=60.0, seed=0, cv=2.0
    )
    assert {r.prompt_tokens for r in t.requests} == {100, 200}
    assert {r.output_tokens for r in t.requests} == {5, 6, 7}
    assert "independent" in t.name


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rate_per_s": 0.0}, "rate_rps"),
        ({"prompt_lengths": []}, "prompt_lengths"),
        ({"prompt_lengths": [100, 0]}, "prompt_lengths must be >= 1"),
        ({"output_lengths": [1.5]}, "output_lengths must hold whole"),
        ({"seed": -1}, "seed"),
        ({"duration_s": float("nan")}, "duration_s"),
    ],
    ids=["rate", "empty", "zero_prompt", "fractional", "seed", "duration"],
)
def test_synthetic_from_observed_rejects_bad_arguments(kwargs: dict, fragment: str) -> None:
    args = {
        "rate_per_s": 1.0,
        "prompt_lengths": [100],
        "output_lengths": [10],
        "duration_s": 10.0,
        "seed": 0,
    } | kwargs
    with pytest.raises(ValueError, match=fragment):
        workload.synthetic_from_observed(**args)
