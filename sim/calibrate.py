"""Fit the per-layer cost coefficients of `sbs.sim.costmodel` from the H200 calibration CSVs.

The CSVs live in ``../shared/calibration`` (see its README): DeepSeek-V3-shaped layers with random
bf16 weights on one H200, timed per layer. This module does plain weighted least squares with numpy
(weights 1/y, so the fit minimises *relative* error) and reports the worst relative error of each
fit. Its output is baked into `CostParams` defaults as literals; ``tests/sim/test_costmodel.py``
refits and fails if the literals drift.

Run ``python -m sbs.sim.calibrate [CALIB_DIR [H100_DIR]]`` to print the fits, the anchor table and
`hardware_transfer`: the same fits on the H100 CSVs in ``docs/calibration`` (H100 = H800 compute and
HBM) against the model's rule for carrying H200 coefficients over to H800.

Models fitted (one layer, milliseconds; T = new tokens on the rank, P = Σ attention pairs,
B = requests, K = Σ KV tokens attended, e = routed experts on the rank):

- prefill attention        ``a0 + a1·T + a2·P``      (eager CSV, phase prefill + prefill_dense)
- prefill MoE FFN          ``f1·T``                  (eager CSV, phase prefill, e ∈ {8, 9})
- prefill dense MLP        ``g1·T``                  (eager CSV, phase prefill_dense)
- decode attention         ``d0 + d1·B + d2·K``      (CUDA-graph CSV)
- decode MoE FFN           ``c0 + c1·e + c2·B``      (CUDA-graph CSV)
- FP8/bf16 expert ratio    mean of fp8/bf16 at ≥ 512 tokens per expert (FP8 CSV)
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sbs.sim import costmodel

EAGER_CSV = "ds3_layer_cost_h200_eager.csv"
DECODE_CSV = "ds3_layer_cost_h200_decode_graphs.csv"
FP8_CSV = "ds3_moe_fp8_vs_bf16_h200.csv"

#: Minimum tokens per expert at which the FP8 speed-up is counted (prefill regime; README).
FP8_MIN_TOKENS_PER_EXPERT = 512


@dataclass(frozen=True)
class PrefillFit:
    """Per-layer prefill compute on one H200, bf16, eager (milliseconds)."""

    attn_fixed_ms: float
    attn_per_token_ms: float
    attn_per_pair_ms: float
    ffn_per_token_ms: float
    dense_ffn_per_token_ms: float
    attn_max_rel_err: float
    ffn_max_rel_err: float
    dense_ffn_max_rel_err: float


@dataclass(frozen=True)
class DecodeFit:
    """Per-layer decode compute on one H200, bf16, CUDA graphs (milliseconds)."""

    attn_fixed_ms: float
    attn_per_req_ms: float
    attn_per_kv_token_ms: float
    ffn_fixed_ms: float
    ffn_per_expert_ms: float
    ffn_per_req_ms: float
    attn_max_rel_err: float
    ffn_max_rel_err: float


def _read(csv_path: str | Path) -> list[dict[str, float | str]]:
    path = Path(csv_path)
    with path.open(newline="") as f:
        rows: list[dict[str, float | str]] = []
        for lineno, raw in enumerate(csv.DictReader(f), start=2):
            row: dict[str, float | str] = {}
            for key, value in raw.items():
                if key == "phase":
                    row[key] = value
                    continue
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{path}:{lineno}: field {key!r} must be a number, got {value!r}"
                    ) from None
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _wls(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares of relative error: minimise Σ((x·c − y)/y)². Returns (c, max |rel err|)."""
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    rel = np.abs(x @ coef - y) / y
    return coef, float(rel.max())


def _col(rows: list[dict[str, float | str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def fit_prefill(csv_path: str | Path) -> PrefillFit:
    """Fit prefill attention, MoE FFN and dense MLP per layer from the eager CSV."""
    rows = _read(csv_path)
    pre = [r for r in rows if r["phase"] in ("prefill", "prefill_dense")]
    moe = [r for r in rows if r["phase"] == "prefill"]
    dense = [r for r in rows if r["phase"] == "prefill_dense"]
    if not moe or not dense:
        raise ValueError(f"{csv_path}: expected 'prefill' and 'prefill_dense' rows")

    t = _col(pre, "tokens")
    pairs = _col(pre, "batch") * _col(pre, "seq_len") ** 2  # Σ seq_len² = full causal chunks
    a, a_err = _wls(np.column_stack([np.ones_like(t), t, pairs]), _col(pre, "attn_ms"))

    tm = _col(moe, "tokens")
    f, f_err = _wls(tm[:, None], _col(moe, "ffn_ms"))  # through the origin: the intercept fits < 0

    td = _col(dense, "tokens")
    g, g_err = _wls(td[:, None], _col(dense, "ffn_ms"))
    return PrefillFit(
        attn_fixed_ms=float(a[0]),
        attn_per_token_ms=float(a[1]),
        attn_per_pair_ms=float(a[2]),
        ffn_per_token_ms=float(f[0]),
        dense_ffn_per_token_ms=float(g[0]),
        attn_max_rel_err=a_err,
        ffn_max_rel_err=f_err,
        dense_ffn_max_rel_err=g_err,
    )


def fit_decode(csv_path: str | Path) -> DecodeFit:
    """Fit decode attention and MoE FFN per layer from the CUDA-graph CSV."""
    rows = [r for r in _read(csv_path) if r["phase"] == "decode"]
    if not rows:
        raise ValueError(f"{csv_path}: expected 'decode' rows")
    b = _col(rows, "batch")
    kv = b * _col(rows, "ctx")
    e = _col(rows, "e_local")
    one = np.ones_like(b)
    d, d_err = _wls(np.column_stack([one, b, kv]), _col(rows, "attn_ms"))
    c, c_err = _wls(np.column_stack([one, e, b]), _col(rows, "ffn_ms"))
    return DecodeFit(
        attn_fixed_ms=float(d[0]),
        attn_per_req_ms=float(d[1]),
        attn_per_kv_token_ms=float(d[2]),
        ffn_fixed_ms=float(c[0]),
        ffn_per_expert_ms=float(c[1]),
        ffn_per_req_ms=float(c[2]),
        attn_max_rel_err=d_err,
        ffn_max_rel_err=c_err,
    )


def fit_fp8_scale(csv_path: str | Path, *, min_tokens_per_expert: int = FP8_MIN_TOKENS_PER_EXPERT) -> float:
    """Mean FP8/bf16 time ratio of the routed-expert block at prefill-sized loads."""
    rows = [r for r in _read(csv_path) if float(r["tokens_per_expert"]) >= min_tokens_per_expert]
    if not rows:
        raise ValueError(f"{csv_path}: no rows with tokens_per_expert >= {min_tokens_per_expert}")
    return float(np.mean(_col(rows, "fp8_ms") / _col(rows, "bf16_ms")))


#: The anchors the two overlap fractions are solved against (design doc §2.8, DeepSeek profile-data,
#: H800, perfectly balanced routing): prefill 16,384 tokens/rank at 4k prompts on EP32 in 2.09 s;
#: decode 128 requests/rank at 4k context on EP128 in 55 ms.
PREFILL_ANCHOR_S = 2.09
DECODE_ANCHOR_S = 0.055


def solve_hidden_fractions(params: costmodel.CostParams | None = None) -> tuple[float, float]:
    """(prefill, decode) share of the all-to-all hidden by overlap that makes the DeepSeek profile
    anchors hold exactly at β = 1. Each step is linear in the hidden share, so two evaluations suffice."""
    base = dataclasses.replace(params or costmodel.CostParams(), eplb_balancedness=1.0)

    def steps(h: float) -> tuple[float, float]:
        m = costmodel.CostModel(
            dataclasses.replace(base, prefill_a2a_hidden_fraction=h, decode_a2a_hidden_fraction=h)
        )
        pre = m.prefill_step_s([16_384], [4 * 4096.0**2], ep_size=32)
        dec = m.decode_step_s(np.array([128]), np.array([128 * 4096]), ep_size=128)
        return pre, dec

    (p0, d0), (p1, d1) = steps(0.0), steps(1.0)
    return (p0 - PREFILL_ANCHOR_S) / (p0 - p1), (d0 - DECODE_ANCHOR_S) / (d0 - d1)


@dataclass(frozen=True)
class TransferRow:
    """One coefficient fitted on two GPUs: the measured ratio against the one the model assumes."""

    name: str
    calib: float
    target: float
    model_ratio: float

    @property
    def ratio(self) -> float:
        return self.target / self.calib

    @property
    def model_error(self) -> float:
        """Model's target value over the measured one, minus one (positive: the model overstates)."""
        return self.model_ratio / self.ratio - 1.0


def hardware_transfer(
    calib_dir: str | Path, target_dir: str | Path, *, target_suffix: str = "h100"
) -> list[TransferRow]:
    """Fit the same CSVs measured on a second GPU and compare each coefficient with the model's
    assumption: compute-bound prefill terms carry over unchanged, weight-read decode fixed terms scale
    with the HBM bandwidth ratio (`CostParams.calib_hbm_bandwidth_Bps` / `hbm_bandwidth_Bps`)."""
    calib, target = Path(calib_dir), Path(target_dir)
    p0, p1 = fit_prefill(calib / EAGER_CSV), fit_prefill(target / EAGER_CSV.replace("h200", target_suffix))
    d0, d1 = fit_decode(calib / DECODE_CSV), fit_decode(target / DECODE_CSV.replace("h200", target_suffix))
    f0, f1 = fit_fp8_scale(calib / FP8_CSV), fit_fp8_scale(target / FP8_CSV.replace("h200", target_suffix))
    params = costmodel.CostParams()
    s = params.calib_hbm_bandwidth_Bps / params.hbm_bandwidth_Bps

    def ffn_fixed(d: DecodeFit, e: int) -> float:
        return d.ffn_fixed_ms + d.ffn_per_expert_ms * e

    return [
        TransferRow("prefill attention per token", p0.attn_per_token_ms, p1.attn_per_token_ms, 1.0),
        TransferRow("prefill attention per pair", p0.attn_per_pair_ms, p1.attn_per_pair_ms, 1.0),
        TransferRow("prefill MoE FFN per token", p0.ffn_per_token_ms, p1.ffn_per_token_ms, 1.0),
        TransferRow("prefill dense MLP per token", p0.dense_ffn_per_token_ms, p1.dense_ffn_per_token_ms, 1.0),
        TransferRow("FP8/bf16 expert ratio", f0, f1, 1.0),
        TransferRow("decode attention fixed", d0.attn_fixed_ms, d1.attn_fixed_ms, s),
        TransferRow("decode MoE FFN fixed, 8 experts", ffn_fixed(d0, 8), ffn_fixed(d1, 8), s),
        TransferRow("decode MoE FFN fixed, 2 experts", ffn_fixed(d0, 2), ffn_fixed(d1, 2), s),
    ]


def transfer_report(calib_dir: str | Path, target_dir: str | Path) -> str:
    """`hardware_transfer` as a table."""
    lines = [f"{'coefficient':<34} {'H200':>11} {'H100':>11} {'ratio':>6} {'model':>6} {'model err':>9}"]
    for r in hardware_transfer(calib_dir, target_dir):
        lines.append(
            f"{r.name:<34} {r.calib:11.4g} {r.target:11.4g} {r.ratio:6.3f} {r.model_ratio:6.3f}"
            f" {r.model_error * 100:+8.1f} %"
        )
    return "\n".join(lines)


def report(calib_dir: str | Path) -> str:
    """The fits, the FP8 ratio and the anchor table, as text."""
    root = Path(calib_dir)
    p = fit_prefill(root / EAGER_CSV)
    d = fit_decode(root / DECODE_CSV)
    fp8 = fit_fp8_scale(root / FP8_CSV)
    hp, hd = solve_hidden_fractions()
    lines = [
        f"prefill fit (ms/layer): {p}",
        f"decode fit (ms/layer): {d}",
        f"fp8/bf16 expert ratio: {fp8:.4f}",
        f"all-to-all hidden by overlap: prefill {hp:.4f}, decode {hd:.4f}",
    ]
    lines.append("anchors (published vs model):")
    for a in costmodel.anchors(costmodel.CostModel()):
        lines.append(
            f"  {a.name:<58} published {a.published_s * 1e3:8.1f} ms  model {a.model_s * 1e3:8.1f} ms"
            f"  ({(a.model_s / a.published_s - 1) * 100:+.0f} %)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    calib_dir = args[0] if args else str(Path(__file__).resolve().parents[2] / "shared" / "calibration")
    print(report(calib_dir))
    h100_dir = args[1] if len(args) > 1 else str(Path(__file__).resolve().parents[1] / "docs" / "calibration")
    if Path(h100_dir).is_dir():
        print(f"\nthe same fits on an H100 ({h100_dir}) against the model's H800 transfer:")
        print(transfer_report(calib_dir, h100_dir))


if __name__ == "__main__":
    main()
