"""The step-cost model: calibration literals, published anchors, shape and lock-step behaviour, speed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sbs.sim import calibrate, costmodel

CALIB_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "calibration"
needs_calib = pytest.mark.skipif(not CALIB_DIR.is_dir(), reason=f"{CALIB_DIR} not present")
DRIFT = 0.02


@pytest.fixture
def model() -> costmodel.CostModel:
    return costmodel.CostModel()


def _close(baked: float, fitted: float, name: str) -> None:
    assert abs(baked - fitted) <= DRIFT * abs(fitted), f"{name}: baked {baked!r}, refit gives {fitted!r}"


# --- calibration literals -------------------------------------------------------------------------


@needs_calib
def test_prefill_literals_match_the_eager_csv_fit() -> None:
    fit = calibrate.fit_prefill(CALIB_DIR / calibrate.EAGER_CSV)
    p = costmodel.CostParams()
    _close(p.prefill_attn_fixed_s, fit.attn_fixed_ms * 1e-3, "attn fixed")
    _close(p.prefill_attn_per_token_s, fit.attn_per_token_ms * 1e-3, "attn per token")
    _close(p.prefill_attn_per_pair_s, fit.attn_per_pair_ms * 1e-3, "attn per pair")
    _close(p.prefill_ffn_per_token_s, fit.ffn_per_token_ms * 1e-3, "ffn per token")
    _close(p.prefill_dense_ffn_per_token_s, fit.dense_ffn_per_token_ms * 1e-3, "dense ffn per token")
    assert max(fit.attn_max_rel_err, fit.ffn_max_rel_err, fit.dense_ffn_max_rel_err) < 0.12


@needs_calib
def test_decode_literals_match_the_cuda_graph_csv_fit() -> None:
    fit = calibrate.fit_decode(CALIB_DIR / calibrate.DECODE_CSV)
    p = costmodel.CostParams()
    _close(p.decode_attn_fixed_s, fit.attn_fixed_ms * 1e-3, "attn fixed")
    _close(p.decode_attn_per_req_s, fit.attn_per_req_ms * 1e-3, "attn per request")
    _close(p.decode_attn_naive_per_kv_token_s, fit.attn_per_kv_token_ms * 1e-3, "attn per KV token (naive)")
    _close(p.decode_ffn_fixed_s, fit.ffn_fixed_ms * 1e-3, "ffn fixed")
    _close(p.decode_ffn_per_expert_s, fit.ffn_per_expert_ms * 1e-3, "ffn per expert")
    _close(p.decode_ffn_per_req_s, fit.ffn_per_req_ms * 1e-3, "ffn per request")
    assert fit.attn_max_rel_err < 0.10
    assert fit.ffn_max_rel_err < 0.20


@needs_calib
def test_fp8_scale_matches_the_fp8_csv() -> None:
    _close(
        costmodel.CostParams().fp8_ffn_scale, calibrate.fit_fp8_scale(CALIB_DIR / calibrate.FP8_CSV), "fp8"
    )


H100_DIR = Path(__file__).resolve().parents[2] / "docs" / "calibration"


@needs_calib
def test_h100_measurements_confirm_the_h800_transfer() -> None:
    """The same layers measured on an H100 (H800 compute and HBM): prefill compute carries over from
    the H200 within 5 %; the HBM-ratio scaling of the decode fixed terms overstates them, by < 20 %."""
    rows = {r.name: r for r in calibrate.hardware_transfer(CALIB_DIR, H100_DIR)}
    assert len(rows) == 8
    for name, r in rows.items():
        if name.startswith(("prefill", "FP8")):
            assert abs(r.model_error) <= 0.05, (name, r)
        else:
            assert 0.0 <= r.model_error <= 0.20, (name, r)


def test_transfer_row_error_is_the_model_over_the_measured_ratio() -> None:
    r = calibrate.TransferRow("x", calib=2.0, target=2.5, model_ratio=1.5)
    assert r.ratio == pytest.approx(1.25)
    assert r.model_error == pytest.approx(0.2)


def test_hidden_fractions_are_the_solved_ones() -> None:
    hp, hd = calibrate.solve_hidden_fractions()
    p = costmodel.CostParams()
    assert p.prefill_a2a_hidden_fraction == pytest.approx(hp, abs=0.005)
    assert p.decode_a2a_hidden_fraction == pytest.approx(hd, abs=0.005)


def test_flashmla_is_much_faster_than_the_naive_csv_kernel(model: costmodel.CostModel) -> None:
    p = model.params
    flash = model.kv_bytes_per_token() / p.n_layers / (p.flashmla_bw_fraction * p.calib_hbm_bandwidth_Bps)
    assert 3 < p.decode_attn_naive_per_kv_token_s / flash < 10


# --- anchors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", costmodel.anchors(costmodel.CostModel()), ids=lambda a: a.name)
def test_published_anchor_within_its_tolerance(anchor: costmodel.Anchor) -> None:
    assert anchor.model_s == pytest.approx(anchor.published_s, rel=anchor.tolerance)


def test_decode_at_deepseek_deployment_ep144_is_near_55ms(model: costmodel.CostModel) -> None:
    t = model.decode_step_s(np.array([128] * 144), np.array([128 * 4096] * 144), ep_size=144)
    assert 0.050 < t < 0.060


def test_h200_decodes_faster_than_h800() -> None:
    b, kv = np.array([128]), np.array([128 * 4096])
    h800 = costmodel.CostModel(costmodel.CostParams.h800()).decode_step_s(b, kv, ep_size=128)
    h200 = costmodel.CostModel(costmodel.CostParams.h200()).decode_step_s(b, kv, ep_size=128)
    assert h200 < h800


def test_imperfect_eplb_slows_both_phases(model: costmodel.CostModel) -> None:
    skewed = costmodel.CostModel(dataclasses.replace(model.params, eplb_balancedness=0.8))
    assert skewed.prefill_step_s([8192], [8192.0**2], ep_size=32) > model.prefill_step_s(
        [8192], [8192.0**2], ep_size=32
    )
    b, kv = np.array([64]), np.array([64 * 4096])
    assert skewed.decode_step_s(b, kv, ep_size=72) > model.decode_step_s(b, kv, ep_size=72)


# --- shape --------------------------------------------------------------------------------------------


def test_attn_pairs_is_the_causal_square_difference() -> None:
    assert costmodel.CostModel.attn_pairs(0, 4096) == 4096.0**2
    assert costmodel.CostModel.attn_pairs(1000, 24) == 1024.0**2 - 1000.0**2
    assert costmodel.CostModel.attn_pairs(0, 0) == 0.0


def test_zero_work_costs_nothing(model: costmodel.CostModel) -> None:
    assert model.prefill_step_s([0] * 32, [0.0] * 32, ep_size=32) == 0.0
    assert model.prefill_step_s([], [], ep_size=32) == 0.0
    assert model.decode_step_s(np.zeros(144, dtype=int), np.zeros(144, dtype=int), ep_size=144) == 0.0


def test_prefill_is_monotonic_in_tokens_and_pairs(model: costmodel.CostModel) -> None:
    steps = [model.prefill_step_s([t], [float(t) ** 2], ep_size=32) for t in (1, 64, 512, 4096, 16_384)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    by_prefix = [
        model.prefill_step_s([1024], [model.attn_pairs(pre, 1024)], ep_size=32) for pre in (0, 4096, 32_768)
    ]
    assert by_prefix == sorted(by_prefix) and len(set(by_prefix)) == 3


def test_decode_is_monotonic_in_batch_and_kv(model: costmodel.CostModel) -> None:
    by_batch = [
        model.decode_step_s(np.array([b]), np.array([b * 2048]), ep_size=144) for b in (1, 16, 64, 128, 256)
    ]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 5
    by_kv = [
        model.decode_step_s(np.array([64]), np.array([k]), ep_size=144) for k in (0, 10**5, 10**6, 10**7)
    ]
    assert by_kv == sorted(by_kv) and len(set(by_kv)) == 4


def test_prefill_lockstep_one_heavy_rank_costs_as_much_as_all_heavy(model: costmodel.CostModel) -> None:
    heavy, light = 8192, 512
    one = model.prefill_step_s(
        [heavy] + [light] * 31, [float(heavy) ** 2] + [float(light) ** 2] * 31, ep_size=32
    )
    all_heavy = model.prefill_step_s([heavy] * 32, [float(heavy) ** 2] * 32, ep_size=32)
    assert one == pytest.approx(all_heavy)


def test_prefill_time_balance_is_the_ranks_work_over_the_slowest(model: costmodel.CostModel) -> None:
    """1.0 when the ranks match, 1/ranks when one works alone, the work ratio in between; the duration
    is `prefill_step_s`'s."""
    heavy, light = 8192, 512
    tokens, pairs = [heavy] * 4, [float(heavy) ** 2] * 4
    duration, balance = model.prefill_step(tokens, pairs, ep_size=32)
    assert duration == model.prefill_step_s(tokens, pairs, ep_size=32) and balance == pytest.approx(1.0)
    assert model.prefill_step([heavy, 0, 0, 0], [float(heavy) ** 2, 0.0, 0.0, 0.0], ep_size=32)[1] == (
        pytest.approx(0.25)
    )
    e = model.experts_per_rank(32)
    idle = model.prefill_rank_compute_s(0, 0.0, experts_per_rank=e)
    w_heavy = model.prefill_rank_compute_s(heavy, float(heavy) ** 2, experts_per_rank=e) - idle
    w_light = model.prefill_rank_compute_s(light, float(light) ** 2, experts_per_rank=e) - idle
    mixed = model.prefill_step([heavy, light], [float(heavy) ** 2, float(light) ** 2], ep_size=32)[1]
    assert mixed == pytest.approx((w_heavy + w_light) / (2 * w_heavy))
    assert model.prefill_step([0, 0], [0.0, 0.0], ep_size=32) == (0.0, 1.0)


def test_decode_lockstep_one_heavy_rank_costs_as_much_as_all_heavy(model: costmodel.CostModel) -> None:
    b = np.full(144, 32)
    kv = b * 1024
    b_one, kv_one = b.copy(), kv.copy()
    b_one[7], kv_one[7] = 200, 200 * 8192
    one = model.decode_step_s(b_one, kv_one, ep_size=144)
    all_heavy = model.decode_step_s(np.full(144, 200), np.full(144, 200 * 8192), ep_size=144)
    assert one == pytest.approx(all_heavy)
    assert one > model.decode_step_s(b, kv, ep_size=144)


def test_prefill_step_rejects_ragged_inputs(model: costmodel.CostModel) -> None:
    with pytest.raises(ValueError, match="one entry per rank"):
        model.prefill_step_s([1, 2], [1.0], ep_size=32)


def test_larger_ep_has_slower_decode_all_to_all(model: costmodel.CostModel) -> None:
    assert model.deepep_ll_s(8) < model.deepep_ll_s(32) < model.deepep_ll_s(128)
    assert model.deepep_ll_s(128) == pytest.approx(192e-6 + 369e-6)
    assert model.deepep_ll_s(1) == 0.0


# --- scheduler coefficients ------------------------------------------------------------------------


def _realistic_prefill_batches(seed: int) -> list[tuple[list[int], list[float]]]:
    """Per-rank chunks as a token-balancing scheduler would build them: 8–16k tokens per rank,
    prompts of 256–8k tokens, some with cached prefixes."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(50):
        tokens, pairs = [], []
        for _ in range(32):
            budget, t, a = int(rng.integers(8_192, 16_385)), 0, 0.0
            while t < budget:
                new = min(int(rng.integers(256, 8_193)), budget - t)
                prefix = int(rng.choice([0, 0, 1024, 4096]))
                t, a = t + new, a + costmodel.CostModel.attn_pairs(prefix, new)
            tokens.append(t)
            pairs.append(a)
        batches.append((tokens, pairs))
    return batches


@pytest.mark.parametrize("ep_size", [8, 32, 64])
def test_prefill_coefficients_approximate_the_step_within_5_percent(
    model: costmodel.CostModel, ep_size: int
) -> None:
    fixed, per_token, per_pair = model.prefill_coefficients(ep_size=ep_size)
    for tokens, pairs in _realistic_prefill_batches(ep_size):
        exact = model.prefill_step_s(tokens, pairs, ep_size=ep_size)
        approx = fixed + max(per_token * t + per_pair * a for t, a in zip(tokens, pairs, strict=True))
        assert approx == pytest.approx(exact, rel=0.05)


def test_prefill_coefficients_are_exact_for_a_single_rank(model: costmodel.CostModel) -> None:
    fixed, per_token, per_pair = model.prefill_coefficients(ep_size=32)
    exact = model.prefill_step_s([12_000], [3 * 4000.0**2], ep_size=32)
    assert fixed + per_token * 12_000 + per_pair * 3 * 4000.0**2 == pytest.approx(exact, rel=1e-9)


# --- memory, transfer, describe ------------------------------------------------------------------------


def test_kv_bytes_per_token_is_mla_latent_plus_rope_over_61_layers(model: costmodel.CostModel) -> None:
    assert model.kv_bytes_per_token() == (512 + 64) * 61 * 2


def test_decode_rank_holds_128_requests_of_4k_at_ep144(model: costmodel.CostModel) -> None:
    assert model.kv_capacity_tokens_per_rank(ep_size=144) >= 128 * 4096
    assert model.kv_capacity_tokens_per_rank(ep_size=32) < model.kv_capacity_tokens_per_rank(ep_size=144)
    h200 = costmodel.CostModel(costmodel.CostParams.h200())
    assert h200.kv_capacity_tokens_per_rank(ep_size=144) > model.kv_capacity_tokens_per_rank(ep_size=144)


def test_weights_add_up_to_deepseek_v3(model: costmodel.CostModel) -> None:
    p = model.params
    total = p.weights_replicated_bytes + p.n_routed_experts * p.weights_per_expert_bytes
    assert 660e9 < total < 690e9  # ≈ 671 B params, FP8 (plus bf16 embeddings)


def test_kv_transfer_is_latency_plus_bandwidth(model: costmodel.CostModel) -> None:
    p = model.params
    assert model.kv_transfer_s(0) == pytest.approx(p.kv_transfer_latency_s)
    assert model.kv_transfer_s(4096) == pytest.approx(
        p.kv_transfer_latency_s + 4096 * 70_272 / p.kv_transfer_Bps
    )


def test_describe_names_the_headline_numbers(model: costmodel.CostModel) -> None:
    text = model.describe()
    assert "H800" in text and "EP32" in text and "EP144" in text


def test_invalid_balancedness_is_refused() -> None:
    with pytest.raises(ValueError, match="eplb_balancedness"):
        costmodel.CostParams(eplb_balancedness=1.5)


# --- speed --------------------------------------------------------------------------------------------
