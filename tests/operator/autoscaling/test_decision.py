"""Pure autoscaling decisions: signals from scheduler metrics, stabilisation, cool-down, ratio, budget."""

from __future__ import annotations

import math

import pytest
from sbs.operator.autoscaling import decision, policy_api

BOUNDS = (0.1, 0.5, 1.0, 2.0, math.inf)


def hist(counts: tuple[float, ...]) -> decision.Histogram:
    return decision.Histogram(tuple(zip(BOUNDS, counts, strict=True)))


def policy(**kw: object) -> policy_api.AutoscalingPolicySpec:
    base = {
        "prefill": {"minGroups": 1, "maxGroups": 6},
        "decode": {"minGroups": 1, "maxGroups": 3},
        "slo": {"ttftP90Seconds": 1.0},
        "signals": {"queueWaitP90Seconds": 0.5},
        "ratio": {"minPrefillPerDecode": 1.0, "maxPrefillPerDecode": 2.0},
        "behaviour": {"scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 60,
                      "cooldownSeconds": 30, "maxStepGroups": 2},
        **kw,
    }  # fmt: skip
    return policy_api.AutoscalingPolicySpec.model_validate(base)


def obs(ttft: float | None, wait: float | None, samples: int = 100) -> decision.Observation:
    return decision.Observation(ttft, wait, 10.0, samples)


def test_histogram_quantile_matches_prometheus() -> None:
    h = hist((10, 50, 90, 100, 100))
    assert h.quantile(0.5) == pytest.approx(0.5)
    assert h.quantile(0.9) == pytest.approx(1.0)
    assert h.quantile(0.95) == pytest.approx(1.5)
    assert hist((0, 0, 0, 0, 0)).quantile(0.9) is None
    assert hist((0, 0, 0, 0, 10)).quantile(0.9) == 2.0  # beyond the last finite bound


def test_parse_metrics_and_window_deltas() -> None:
    text = "\n".join([
        "# HELP sbs_ttft_seconds x", '# TYPE sbs_ttft_seconds histogram',
        'sbs_ttft_seconds_bucket{le="0.1"} 5', 'sbs_ttft_seconds_bucket{le="+Inf"} 10',
        "sbs_ttft_seconds_count 10",
        'sbs_queue_wait_seconds_bucket{le="0.1"} 8', 'sbs_queue_wait_seconds_bucket{le="+Inf"} 10',
        'sbs_requests_accepted_total{endpoint="/generate"} 4',
        'sbs_requests_accepted_total{endpoint="/v1/completions"} 6',
    ])  # fmt: skip
    first = decision.parse_metrics(text, 100.0)
    assert first.accepted == 10 and first.ttft.count == 10
    later = decision.parse_metrics(text.replace("} 10", "} 30").replace("} 6", "} 26"), 110.0)
    o = decision.Observation.between(first, later)
    assert o.samples == 20 and o.request_rate == pytest.approx(2.0)


def test_pressure_scales_prefill_up_by_the_ratio_within_the_step_and_decode_follows_the_band() -> None:
    out = decision.recommend(2, 1, obs(ttft=1.8, wait=0.1), policy())
    assert out.prefill == 4 and out.decode == 2  # ceil(2 × 1.8), capped at +2; decode ≥ 4 / 2
    assert "TTFT p90" in out.reason
    assert decision.recommend(2, 1, obs(ttft=0.3, wait=0.9), policy()).prefill == 4  # queue wait 1.8 × target
    assert decision.recommend(6, 3, obs(ttft=9, wait=9), policy()).prefill == 6  # max groups


def test_low_load_and_no_traffic_scale_down_by_one() -> None:
    assert decision.recommend(3, 2, obs(0.1, 0.05), policy()).prefill == 2
    assert decision.recommend(3, 2, obs(None, None, samples=0), policy()).reason == "no traffic"
    assert decision.recommend(3, 2, obs(0.7, 0.1), policy()).prefill == 3  # between: hold


def test_scale_down_waits_for_stabilisation_and_cooldown() -> None:
    spec, mem = policy(), decision.Memory()
    up = decision.decide(2, 1, obs(1.5, 0.1), spec, mem, 0.0, gpus_per_group=(16, 16), budget_left=None)
    assert (up.prefill, up.decode) == (3, 2) and mem.last_change == 0.0
    held = [decision.decide(3, 2, obs(0.1, 0.0), spec, mem, t, gpus_per_group=(16, 16), budget_left=None)
            for t in (10.0, 40.0, 55.0)]  # fmt: skip
    assert all((h.prefill, h.decode) == (3, 2) for h in held)  # the t=0 recommendation (3) is in the window
    down = decision.decide(3, 2, obs(0.1, 0.0), spec, mem, 61.0, gpus_per_group=(16, 16), budget_left=None)
    assert (down.prefill, down.decode) == (2, 2)


def test_scale_up_stabilisation_delays_a_short_spike() -> None:
    spec = policy(behaviour={"scaleUpStabilizationSeconds": 20, "scaleDownStabilizationSeconds": 0})
    mem = decision.Memory()
    assert (
        decision.decide(2, 1, obs(3, 0), spec, mem, 0.0, gpus_per_group=(8, 8), budget_left=None).prefill == 2
    )
    assert (
        decision.decide(2, 1, obs(3, 0), spec, mem, 10.0, gpus_per_group=(8, 8), budget_left=None).prefill
        == 2
    )
    assert (
        decision.decide(2, 1, obs(3, 0), spec, mem, 21.0, gpus_per_group=(8, 8), budget_left=None).prefill
        == 4
    )


def test_the_gpu_budget_caps_scale_ups_counting_desired_groups() -> None:
    spec, mem = policy(), decision.Memory()
    out = decision.decide(2, 1, obs(5, 0), spec, mem, 0.0, gpus_per_group=(32, 72), budget_left=40)
    assert (out.prefill, out.decode) == (3, 1) and "GPU budget" in out.reason
    none = decision.decide(
        2, 1, obs(5, 0), spec, decision.Memory(), 0.0, gpus_per_group=(32, 72), budget_left=0
    )
    assert (none.prefill, none.decode) == (2, 1)


def test_policy_rules_name_the_field() -> None:
    with pytest.raises(ValueError, match="maxGroups"):
        policy(prefill={"minGroups": 4, "maxGroups": 2})


def test_tpot_scales_decode_within_the_band_and_prefill_is_left_to_its_own_signals() -> None:
    spec = policy(slo={"ttftP90Seconds": 1.0, "tpotP90Seconds": 0.05},
                  ratio={"minPrefillPerDecode": 0.5, "maxPrefillPerDecode": 2.0})  # fmt: skip
    tpot = lambda v: decision.Observation(0.5, 0.1, 10.0, 100, tpot_p90_s=v)  # noqa: E731
    out = decision.recommend(2, 1, tpot(0.08), spec)  # TPOT at 1.6 × target
    assert (out.prefill, out.decode) == (2, 2) and "TPOT p90 0.08 s > 0.05 s" in out.reason
    assert decision.recommend(2, 2, tpot(0.5), spec).decode == 3  # 10 × target: capped by maxGroups (3)
    assert decision.recommend(1, 1, tpot(0.5), spec).decode == 2  # the band: 1 prefill takes <= 2 decode
    assert decision.recommend(2, 2, tpot(0.01), spec).decode == 1  # low: down by one
    assert decision.recommend(2, 2, tpot(0.03), spec).decode == 2  # between: hold
    assert decision.recommend(2, 2, tpot(None), spec).decode == 2  # no streamed counts: hold
    assert decision.recommend(2, 2, obs(None, None, samples=0), spec).decode == 1  # no traffic


def test_the_window_tpot_is_the_p90_of_the_new_samples() -> None:
    def text(fast: int, slow: int) -> str:
        return "\n".join([
            f'sbs_tpot_seconds_bucket{{le="0.01"}} {fast}',
            f'sbs_tpot_seconds_bucket{{le="0.1"}} {fast + slow}',
            f'sbs_tpot_seconds_bucket{{le="+Inf"}} {fast + slow}',
            f'sbs_queue_wait_seconds_bucket{{le="+Inf"}} {fast + slow}',
        ])  # fmt: skip

    first = decision.parse_metrics(text(100, 0), 0.0)
    later = decision.parse_metrics(text(100, 50), 10.0)  # only slow requests in the window
    assert decision.Observation.between(first, later).tpot_p90_s == pytest.approx(0.091)
