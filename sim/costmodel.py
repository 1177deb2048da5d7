"""The calibrated step-cost model of one DP-attention + EP instance serving DeepSeek-V3.

One model, shared by the discrete-event simulator and the SGLang engine emulator. It maps the
per-DP-rank work of one forward step to the step's duration. docs/costmodel.md gives the formulas,
the coefficients, the anchors and what is not modelled; this docstring is the short version.

Lock-step. Every MoE layer ends in an all-to-all that waits for every rank of the EP group, so a
step lasts as long as its slowest rank: ``step = overhead + max_r(compute_r) + exposed all-to-all``.
Ranks with no work still run (dummy batches), so fixed costs apply to the whole group.

Prefill (per rank r, per step; T = new tokens, P = causal attention pairs, e = experts per rank):
    compute_r = L·(a0 + a1·T + a2·P) + L_moe·(fp8·f1·T/β + c1·max(0, e − 8.5)) + L_dense·fp8·g1·T
    a2a       = (1 − h_p) · L_moe · max_r(T) · hidden · (1 + 2 bytes) · remote_fanout(EP) / BW_rdma / β
a*, f1, g1 are the eager-CSV fits (H200, bf16; compute-bound, so the same on H800), fp8 the FP8/bf16
expert ratio, β the EPLB balancedness (mean/max expert load), h_p the fraction of the all-to-all that
two-micro-batch overlap (TBO) hides, solved so that the DeepSeek profile anchor holds.

Decode (B = requests, K = KV tokens attended on the rank):
    compute_r = L·(s·d0 + d1·B + κ·K) + L_moe·(s·(c0 + c1·e) + c2·B)/β + L_dense·(s·(c0 + 9·c1) + c2·B)
    a2a       = (1 − h_d) · L_moe · DeepEP_LL(EP) · max(max_r B / 128, floor) / β
d*, c* are the CUDA-graph CSV fits (H200), s = BW_H200/BW_hw scales the weight-read (memory-bound)
fixed terms to the target GPU, κ = KV bytes per token per layer / (FlashMLA fraction · BW_hw) replaces
the CSV's naive attention kernel (an upper bound) by FlashMLA's published ~3,000 GB/s on H800, and
h_d (solved) is the part of the all-to-all that the decode overlap pipeline hides.

Assumptions, stated once: uniform expert routing except for the single factor β; the all-to-all
scales with the *largest* rank's tokens (dispatch send load); routed-expert compute is charged to the
sending rank (conservative: a rank heavy in tokens is heavy in compute); H800 = H100 compute with
3.35 TB/s HBM; FP8 experts in prefill only (decode is weight-read bound and measured as is).
Not modelled: TBO/pipeline details beyond the hidden fractions, MTP, CUDA-graph batch padding,
routing skew beyond β, chunked-prefill scheduling, prefill LM-head and sampling beyond the overhead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

H800_HBM_BPS = 3.35e12
H200_HBM_BPS = 4.8e12
MIB = 2**20


@dataclass(frozen=True)
class CostParams:
    """Every coefficient of the cost model. Times in seconds, sizes in bytes, per layer unless noted.

    Defaults: DeepSeek-V3 on H800 (the hardware of the DeepSeek and most published anchors). The
    per-layer compute fits come from ``../shared/calibration`` (H200) via `sbs.sim.calibrate`;
    ``tests/sim/test_costmodel.py`` refits and fails if these literals drift by more than 2 %.
    """

    # --- hardware -------------------------------------------------------------------------------
    hardware: str = "H800"
    """Name, for `CostModel.describe` only."""
    hbm_bandwidth_Bps: float = H800_HBM_BPS
    """HBM bandwidth of the target GPU, B/s. H800/H100 SXM 3.35 TB/s; H200 4.8 TB/s (spec sheets)."""
    calib_hbm_bandwidth_Bps: float = H200_HBM_BPS
    """HBM bandwidth of the GPU the CSVs were measured on (H200), B/s. Memory-bound decode terms are
    scaled by calib/target; compute-bound prefill terms are not (H800 = H200 dense TFLOP/s)."""
    gpu_memory_bytes: int = 81_559 * MIB
    """Usable GPU memory, bytes. H800/H100 80 GB report 81,559 MiB; H200 143,771 MiB (nvidia-smi)."""
    mem_fraction: float = 0.85
    """Share of GPU memory for weights + KV pool (SGLang ``--mem-fraction-static``; assumed, typical
    of DeepSeek EP deployments). The rest is activations, CUDA graphs and DeepEP buffers."""
    gpus_per_node: int = 8
    """GPUs per node; sets the number of nodes an EP group spans."""

    # --- model shape (DeepSeek-V3 config.json) --------------------------------------------------
    n_layers: int = 61
    """Transformer layers (MTP module excluded)."""
    n_dense_layers: int = 3
    """Leading layers with a dense MLP (``first_k_dense_replace``); no all-to-all in them."""
    hidden_size: int = 7168
    """Hidden size; the all-to-all payload per token."""
    top_k: int = 8
    """Routed experts per token."""
    n_routed_experts: int = 256
    """Routed experts per MoE layer."""
    n_redundant_experts: int = 32
    """EPLB redundant experts (DeepSeek day-6 and LMSYS both use 32)."""
    dense_mlp_expert_equiv: int = 9
    """The dense MLP (intermediate 18,432) has the weights of 9 experts (2,048 each): its decode cost
    is taken as the MoE FFN fit at e = 9 (no decode rows for dense layers in the CSV)."""
    max_nodes_per_token: int = 4
    """Node-limited routing: a token's experts span at most 4 nodes (DeepSeek-V3 report)."""
    kv_lora_rank: int = 512
    """MLA latent dimension cached per token per layer."""
    qk_rope_head_dim: int = 64
    """MLA decoupled RoPE key dimension cached per token per layer."""
    kv_cache_dtype_bytes: int = 2
    """Bytes per cached element: bf16 (SGLang default for MLA)."""
    weights_replicated_bytes: int = 19_076_289_536
    """Weights every rank holds regardless of EP, bytes: MLA 187,105,280 params × 61 layers (FP8),
    dense MLP 396,361,728 × 3 (FP8), shared expert 44,040,192 × 58 (FP8), router 7168×256 × 58
    (bf16), embedding + LM head 2 × 129,280 × 7168 (bf16). Derived from config.json shapes."""
    weights_per_expert_bytes: int = 2_554_331_136
    """One routed expert across the 58 MoE layers, FP8: 3 × 7168 × 2048 × 58 bytes."""

    # --- prefill compute (eager CSV fit, H200 bf16, per layer) ----------------------------------
    prefill_attn_fixed_s: float = 6.7453e-05
    """MLA block fixed cost per layer, s (fit_prefill: attn intercept 0.0675 ms; max rel err 9.7 %)."""
    prefill_attn_per_token_s: float = 7.3261e-07
    """MLA block per new token per layer, s (fit_prefill: 0.733 ms per 1k tokens)."""
    prefill_attn_per_pair_s: float = 7.4982e-11
    """Causal attention per (query, key) pair per layer, s; pairs = (prefix+new)² − prefix²
    (fit_prefill: 0.075 ms per 10⁶ pairs)."""
    prefill_ffn_per_token_s: float = 1.23017e-06
    """MoE FFN (router + routed + shared) per token per layer, bf16, s (fit_prefill through the
    origin at e_local ∈ {8, 9}: 1.23 ms per 1k tokens; max rel err 9.3 %)."""
    prefill_dense_ffn_per_token_s: float = 1.20191e-06
    """Dense MLP (first 3 layers) per token per layer, bf16, s (fit_prefill; max rel err 5.5 %)."""
    prefill_calib_experts: float = 8.5
    """Experts per rank of the prefill FFN rows (8 and 9). Each expert beyond this adds the decode
    fit's weight-read cost `decode_ffn_per_expert_s` (EP < 32); fewer experts remove nothing (the fit
    has no intercept and FP8 prefill GEMMs are compute-bound)."""
    fp8_ffn_scale: float = 0.6633
    """FP8/bf16 time of the routed-expert block at ≥ 512 tokens per expert (fit_fp8_scale on the FP8
    CSV); DeepSeek serves FP8 experts. Applied to prefill FFN only."""

    # --- decode compute (CUDA-graph CSV fit, H200 bf16, per layer) -------------------------------
    decode_attn_fixed_s: float = 1.36567e-04
    """MLA decode fixed cost per layer, s (fit_decode: 0.137 ms; weight reads + launch)."""
    decode_attn_per_req_s: float = 5.8966e-07
    """MLA decode per request per layer, s (fit_decode; max rel err 6.3 %)."""
    decode_attn_naive_per_kv_token_s: float = 1.65018e-09
    """The CSV's naive attention kernel per KV token per layer, s (fit_decode: 0.70 TB/s effective).
    Reference only: the model uses FlashMLA (`flashmla_bw_fraction`) instead, see docs."""
    flashmla_bw_fraction: float = 0.9
    """Fraction of HBM bandwidth FlashMLA reaches on the KV read: 3,000 GB/s of 3.35 TB/s on H800
    (FlashMLA README); on H200 this gives ≈4.3 TB/s, the calibration README's floor."""
    decode_ffn_fixed_s: float = 5.7645e-05
    """MoE FFN fixed cost per layer, s (fit_decode intercept; max rel err 17 %)."""
    decode_ffn_per_expert_s: float = 1.78078e-05
    """MoE FFN per local expert per layer (weight reads), s (fit_decode)."""
    decode_ffn_per_req_s: float = 6.8012e-07
    """MoE FFN per request per layer, s (fit_decode)."""

    # --- all-to-all ------------------------------------------------------------------------------
    deepep_ll_ep_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    """EP sizes of the DeepEP low-latency table (DeepEP docs/legacy.md; H800, CX7 IB, 128 tokens)."""
    deepep_ll_dispatch_s: tuple[float, ...] = (77e-6, 118e-6, 155e-6, 173e-6, 192e-6, 194e-6)
    """DeepEP low-latency dispatch (FP8) per MoE layer at 128 tokens per rank, s."""
    deepep_ll_combine_s: tuple[float, ...] = (114e-6, 195e-6, 273e-6, 314e-6, 369e-6, 360e-6)
    """DeepEP low-latency combine (bf16) per MoE layer at 128 tokens per rank, s."""
    deepep_ll_ref_tokens: int = 128
    """Tokens per rank of the table; latency scales linearly with max_r B_r relative to it."""
    deepep_ll_floor: float = 0.1
    """Smallest fraction of the 128-token latency charged (fixed latency at tiny batches; assumed)."""
    prefill_a2a_rdma_Bps: float = 50e9
    """DeepEP normal-mode RDMA bandwidth per GPU, B/s (DeepEP: 43–58 GB/s internode EP16–64)."""
    prefill_a2a_nvlink_Bps: float = 150e9
    """DeepEP normal-mode NVLink bandwidth per GPU within one node, B/s (DeepEP: 153–158 GB/s EP8)."""
    a2a_dispatch_bytes: int = 1
    """Bytes per hidden element dispatched (FP8)."""
    a2a_combine_bytes: int = 2
    """Bytes per hidden element combined (bf16)."""
    prefill_a2a_hidden_fraction: float = 0.79906
    """Share of the prefill all-to-all hidden by two-micro-batch overlap. Solved (calibrate) so that
    16,384 tokens/rank at 4k prompts, EP32, H800, β = 1 takes 2.09 s (DeepSeek profile-data)."""
    decode_a2a_hidden_fraction: float = 0.71532
    """Share of the decode all-to-all hidden by the overlap pipeline. Solved (calibrate) so that
    B = 128 at 4k context, EP128, H800, β = 1 takes 55 ms (DeepSeek profile-data)."""

    # --- step overheads and balance ---------------------------------------------------------------
    prefill_step_overhead_s: float = 0.010
    """Per prefill step outside the layers (scheduling, embedding, last-token LM head), s (assumed)."""
    decode_step_overhead_s: float = 0.0015
    """Per decode step outside the layers, s: LM head read (1.85 GB bf16 ≈ 0.55 ms at 3.35 TB/s),
    sampling, graph launch (assumed)."""
    eplb_balancedness: float = 1.0
    """EPLB balancedness β = mean/max tokens per expert; MoE FFN and all-to-all are divided by β.
    1.0 = the perfectly balanced routing of the DeepSeek profiles; LMSYS default EPLB ≈ 0.8."""

    # --- KV transfer prefill → decode -------------------------------------------------------------
    kv_transfer_Bps: float = 40e9
    """Prefill→decode KV bandwidth per request, B/s: one 400 Gb/s NIC at ~80 % (assumed)."""
    kv_transfer_latency_s: float = 0.002
    """Fixed cost per transfer (handshake, completion notice), s (assumed)."""

    @classmethod
    def h800(cls) -> CostParams:
        """DeepSeek's production GPU (the default)."""
        return cls()

    @classmethod
    def h200(cls) -> CostParams:
        """The calibration GPU: 4.8 TB/s HBM, 141 GB."""
        return cls(hardware="H200", hbm_bandwidth_Bps=H200_HBM_BPS, gpu_memory_bytes=143_771 * MIB)

    def __post_init__(self) -> None:
        n = len(self.deepep_ll_ep_sizes)
        if len(self.deepep_ll_dispatch_s) != n or len(self.deepep_ll_combine_s) != n:
            raise ValueError(
                f"DeepEP table: expected {n} dispatch and combine entries, got "
                f"{len(self.deepep_ll_dispatch_s)} and {len(self.deepep_ll_combine_s)}"
            )
        if not 0.0 < self.eplb_balancedness <= 1.0:
            raise ValueError(f"eplb_balancedness must be in (0, 1], got {self.eplb_balancedness}")
        for name in ("prefill_a2a_hidden_fraction", "decode_a2a_hidden_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class _DecodeConsts:
    fixed_s: float
    per_req_s: float
    per_kv_s: float
    a2a_per_req_s: float  # exposed all-to-all per request of the largest rank, above the floor
    a2a_floor_s: float


class CostModel:
    """Step durations of one EP instance from per-DP-rank work. Pure and deterministic."""

    def __init__(self, params: CostParams | None = None) -> None:
        self.params = params if params is not None else CostParams()
        p = self.params
        self._n_moe = p.n_layers - p.n_dense_layers
        self._bw_scale = p.calib_hbm_bandwidth_Bps / p.hbm_bandwidth_Bps
        self._kv_layer_bytes = (p.kv_lora_rank + p.qk_rope_head_dim) * p.kv_cache_dtype_bytes
        self._kv_s_per_token = (
            p.n_layers * self._kv_layer_bytes / (p.flashmla_bw_fraction * p.hbm_bandwidth_Bps)
        )
        self._log_ep = np.log2(np.asarray(p.deepep_ll_ep_sizes, dtype=float))
        self._ll_s = np.asarray(p.deepep_ll_dispatch_s) + np.asarray(p.deepep_ll_combine_s)
        self._decode: dict[int, _DecodeConsts] = {}
        self._prefill: dict[int, tuple[float, float, float]] = {}

    # --- shared helpers ---------------------------------------------------------------------------
    @staticmethod
    def attn_pairs(prefix_tokens: int, new_tokens: int) -> float:
        """Causal attention work of a chunk of `new_tokens` after `prefix_tokens` cached ones."""
        total = prefix_tokens + new_tokens
        return float(total * total - prefix_tokens * prefix_tokens)

    def experts_per_rank(self, ep_size: int) -> int:
        """Routed experts (incl. redundant) on the busiest rank of an EP group."""
        p = self.params
        return math.ceil((p.n_routed_experts + p.n_redundant_experts) / ep_size)

    def _nodes(self, ep_size: int) -> int:
        return math.ceil(ep_size / self.params.gpus_per_node)

    def deepep_ll_s(self, ep_size: int) -> float:
        """DeepEP low-latency dispatch + combine per MoE layer at 128 tokens/rank (log2-EP interpolation)."""
        if ep_size <= 1:
            return 0.0
        return float(np.interp(math.log2(ep_size), self._log_ep, self._ll_s))

    def prefill_a2a_s_per_token(self, ep_size: int) -> float:
        """All-to-all time per token of the largest rank for a whole prefill step (all MoE layers,
        before overlap and β). Bytes go to each distinct remote node once (DeepEP normal mode)."""
        p = self.params
        if ep_size <= 1:
            return 0.0
        nodes = self._nodes(ep_size)
        if nodes == 1:
            targets = ep_size * (1.0 - (1.0 - 1.0 / ep_size) ** p.top_k)  # distinct GPUs hit
            fanout, bw = targets * (ep_size - 1) / ep_size, p.prefill_a2a_nvlink_Bps
        else:
            hit = min(float(p.max_nodes_per_token), nodes * (1.0 - (1.0 - 1.0 / nodes) ** p.top_k))
            fanout, bw = hit * (nodes - 1) / nodes, p.prefill_a2a_rdma_Bps
        bytes_per_token = p.hidden_size * (p.a2a_dispatch_bytes + p.a2a_combine_bytes) * fanout
        return self._n_moe * bytes_per_token / bw

    # --- prefill ----------------------------------------------------------------------------------
    def prefill_rank_compute_s(self, new_tokens: int, attn_pairs: float, *, experts_per_rank: int) -> float:
        """Compute time of one rank's prefill step over all layers (no all-to-all, no overhead)."""
        p = self.params
        attn = p.prefill_attn_fixed_s + p.prefill_attn_per_token_s * new_tokens
        attn += p.prefill_attn_per_pair_s * attn_pairs
        moe = p.fp8_ffn_scale * p.prefill_ffn_per_token_s * new_tokens / p.eplb_balancedness
        moe += p.decode_ffn_per_expert_s * max(0.0, experts_per_rank - p.prefill_calib_experts)
        dense = p.fp8_ffn_scale * p.prefill_dense_ffn_per_token_s * new_tokens
        return p.n_layers * attn + self._n_moe * moe + p.n_dense_layers * dense

    def prefill_step_s(
        self, rank_new_tokens: Sequence[int], rank_attn_pairs: Sequence[float], *, ep_size: int
    ) -> float:
        """Duration of one lock-step prefill step; 0.0 when no rank has new tokens."""
        return self.prefill_step(rank_new_tokens, rank_attn_pairs, ep_size=ep_size)[0]

    def prefill_step(
        self, rank_new_tokens: Sequence[int], rank_attn_pairs: Sequence[float], *, ep_size: int
    ) -> tuple[float, float]:
        """(duration, time balance) of one lock-step prefill step; (0.0, 1.0) when no rank has new
        tokens. The balance is the ranks' compute on their own tokens (above an idle rank's) over the
        slowest rank's, times the ranks: 1.0 when every rank is as busy as the slowest, 1/ranks when
        one rank works and the others wait for it."""
        if len(rank_new_tokens) != len(rank_attn_pairs):
            raise ValueError(
                f"rank_new_tokens and rank_attn_pairs must have one entry per rank, "
                f"got {len(rank_new_tokens)} and {len(rank_attn_pairs)}"
            )
        max_tokens = max(rank_new_tokens, default=0)
        if max_tokens <= 0:
            return 0.0, 1.0
        e = self.experts_per_rank(ep_size)
        idle = self.prefill_rank_compute_s(0, 0.0, experts_per_rank=e)
        compute = [
            self.prefill_rank_compute_s(t, a, experts_per_rank=e) if t > 0 else idle
            for t, a in zip(rank_new_tokens, rank_attn_pairs, strict=True)
        ]
        slowest = max(compute)
        a2a = self._prefill_a2a_exposed(ep_size) * max_tokens
        duration = self.params.prefill_step_overhead_s + slowest + a2a
        work = slowest - idle
        balance = (sum(compute) - idle * len(compute)) / (work * len(compute)) if work > 0 else 1.0
        return duration, balance

    def _prefill_a2a_exposed(self, ep_size: int) -> float:
        p = self.params
        return (
            (1.0 - p.prefill_a2a_hidden_fraction)
            * self.prefill_a2a_s_per_token(ep_size)
            / p.eplb_balancedness
        )

    def prefill_coefficients(self, *, ep_size: int) -> tuple[float, float, float]:
        """(fixed_s, per_token_s, per_pair_s): prefill_step_s ≈ fixed + max_r(per_token·T_r + per_pair·P_r).

        Exact when the rank with the most tokens is also the slowest; the all-to-all is folded into
        per_token. For the scheduler's capacity model.
        """
        cached = self._prefill.get(ep_size)
        if cached is None:
            e = self.experts_per_rank(ep_size)
            fixed = self.prefill_rank_compute_s(0, 0.0, experts_per_rank=e)
            per_token = self.prefill_rank_compute_s(1, 0.0, experts_per_rank=e) - fixed
            per_token += self._prefill_a2a_exposed(ep_size)
            per_pair = self.params.n_layers * self.params.prefill_attn_per_pair_s
            cached = (self.params.prefill_step_overhead_s + fixed, per_token, per_pair)
            self._prefill[ep_size] = cached
        return cached

    # --- decode -----------------------------------------------------------------------------------
    def _decode_consts(self, ep_size: int) -> _DecodeConsts:
        p = self.params
        s, beta, e = self._bw_scale, p.eplb_balancedness, self.experts_per_rank(ep_size)
        fixed = p.decode_step_overhead_s + p.n_layers * s * p.decode_attn_fixed_s
        fixed += self._n_moe * s * (p.decode_ffn_fixed_s + p.decode_ffn_per_expert_s * e) / beta
        fixed += (
            p.n_dense_layers
            * s
            * (p.decode_ffn_fixed_s + p.decode_ffn_per_expert_s * p.dense_mlp_expert_equiv)
        )
        per_req = p.n_layers * p.decode_attn_per_req_s
        per_req += (self._n_moe / beta + p.n_dense_layers) * p.decode_ffn_per_req_s
        a2a = (1.0 - p.decode_a2a_hidden_fraction) * self._n_moe * self.deepep_ll_s(ep_size) / beta
        return _DecodeConsts(
            fixed_s=fixed,
            per_req_s=per_req,
            per_kv_s=self._kv_s_per_token,
            a2a_per_req_s=a2a / p.deepep_ll_ref_tokens,
            a2a_floor_s=a2a * p.deepep_ll_floor,
        )

    def decode_fixed_s(self, *, ep_size: int) -> float:
        """Fixed cost of a decode step: overhead + weight-read intercepts (the all-to-all excluded)."""
        return self._decode_consts(ep_size).fixed_s

    def decode_step_s(self, rank_batch: np.ndarray, rank_kv_tokens: np.ndarray, *, ep_size: int) -> float:
        """Duration of one lock-step decode step. rank_batch[r] = requests on rank r, rank_kv_tokens[r]
        = KV tokens they attend to. 0.0 when no rank has a request. Hot path: O(ranks) numpy."""
        max_b = rank_batch.max()
        if max_b <= 0:
            return 0.0
        c = self._decode.get(ep_size)
        if c is None:
            c = self._decode[ep_size] = self._decode_consts(ep_size)
        work = (c.per_req_s * rank_batch + c.per_kv_s * rank_kv_tokens).max()
        a2a = c.a2a_per_req_s * max_b
        return float(c.fixed_s + work + (a2a if a2a > c.a2a_floor_s else c.a2a_floor_s))

    # --- memory and transfer ----------------------------------------------------------------------
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token over all layers: (512 + 64) × 61 × 2 = 70,272 for bf16 MLA."""
        return self._kv_layer_bytes * self.params.n_layers

    def kv_transfer_s(self, prompt_tokens: int) -> float:
        """Prefill→decode KV transfer of one request: fixed latency + bytes / bandwidth."""
        p = self.params
        return p.kv_transfer_latency_s + prompt_tokens * self.kv_bytes_per_token() / p.kv_transfer_Bps

    def weights_per_gpu_bytes(self, ep_size: int) -> int:
        """Replicated weights + the busiest rank's routed experts."""
        p = self.params
        return p.weights_replicated_bytes + self.experts_per_rank(ep_size) * p.weights_per_expert_bytes

    def kv_capacity_tokens_per_rank(self, *, ep_size: int) -> int:
        """KV tokens one rank can hold: (memory × fraction − weights) / KV bytes per token; ≥ 0."""
        p = self.params
        free = p.gpu_memory_bytes * p.mem_fraction - self.weights_per_gpu_bytes(ep_size)
        return max(0, int(free // self.kv_bytes_per_token()))

    def describe(self) -> str:
        """A few lines for CLI output."""
        p = self.params
        pre = self.prefill_step_s([16_384], [4 * 4096.0**2], ep_size=32)
        dec = self.decode_step_s(np.array([128]), np.array([128 * 4096]), ep_size=144)
        dec2 = self.decode_step_s(np.array([256]), np.array([256 * 2048]), ep_size=72)
        fixed, per_tok, per_pair = self.prefill_coefficients(ep_size=32)
        return "\n".join(
            [
                f"cost model: DeepSeek-V3 on {p.hardware}, EPLB balancedness {p.eplb_balancedness:.2f}",
                f"  prefill 16k tok/rank (4k prompts) EP32: {pre:.2f} s; "
                f"coefficients {fixed * 1e3:.1f} ms + {per_tok * 1e6:.1f} µs/tok "
                f"+ {per_pair * 1e9:.2f} ms/Mpair",
                f"  decode B=128 ctx 4k EP144: {dec * 1e3:.0f} ms; B=256 ctx 2k EP72: {dec2 * 1e3:.0f} ms",
                f"  KV {self.kv_bytes_per_token():,} B/token; capacity EP144 "
                f"{self.kv_capacity_tokens_per_rank(ep_size=144):,} tok/rank, EP32 "
                f"{self.kv_capacity_tokens_per_rank(ep_size=32):,}; 4k-prompt transfer "
                f"{self.kv_transfer_s(4096) * 1e3:.1f} ms",
            ]
        )


@dataclass(frozen=True)
class Anchor:
    """A published step time and what the model gives for the same setting."""

    name: str
    published_s: float
    model_s: float
    tolerance: float
    """Relative tolerance the tests hold the model to (documented residual, not a target)."""


def anchors(model: CostModel) -> list[Anchor]:
    """The published DeepSeek-V3 step times (design doc §2.8) against `model`.

    Perfect-routing anchors are evaluated at β = 1, default-EPLB ones at β = 0.8; H100 is taken
    as H800 (same compute and HBM bandwidth; NVLink does not enter the model).
    """
    perfect = CostModel(dataclasses.replace(model.params, eplb_balancedness=1.0))
    eplb = CostModel(dataclasses.replace(model.params, eplb_balancedness=0.8))

    def pre(m: CostModel, prompt: int) -> float:
        n = 16_384 // prompt
        return m.prefill_step_s([16_384], [n * float(prompt) ** 2], ep_size=32)

    def dec(m: CostModel, b: int, ctx: int, ep: int) -> float:
        return m.decode_step_s(np.array([b]), np.array([b * ctx]), ep_size=ep)

    return [
        Anchor("prefill 16k/rank 4k prompts EP32 (DeepSeek profile)", 2.09, pre(perfect, 4096), 0.02),
        Anchor(
            "prefill 16k/rank 4k prompts EP32 (LMSYS, perfect EPLB)",
            16_384 / (59_337 / 8),
            pre(perfect, 4096),
            0.10,
        ),
        Anchor(
            "prefill 16k/rank 4k prompts EP32 (LMSYS, EPLB β=0.8)",
            16_384 / (50_302 / 8),
            pre(eplb, 4096),
            0.15,
        ),
        Anchor(
            "prefill 16k/rank 2k prompts EP32 (LMSYS, EPLB β=0.8)",
            16_384 / (54_543 / 8),
            pre(eplb, 2048),
            0.15,
        ),
        Anchor(
            "prefill 16k/rank 1k prompts EP32 (LMSYS, EPLB β=0.8)",
            16_384 / (57_674 / 8),
            pre(eplb, 1024),
            0.15,
        ),
        Anchor("decode B=128 ctx 4k EP128 (DeepSeek profile)", 0.055, dec(perfect, 128, 4096, 128), 0.02),
        Anchor("decode B=256 ctx 2k EP72 (LMSYS H100, EPLB β=0.8)", 0.092, dec(eplb, 256, 2048, 72), 0.20),
    ]
