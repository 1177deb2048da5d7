"""Nominal prefill capacity of a cluster for a workload, the yardstick of `--load`.

Nominal = every rank of every prefill instance processes a full chunk every step, perfectly balanced,
with the workload's own mix of prompt lengths (its attention term), and no prefix-cache hits. No real
policy reaches it; `--load 0.8` means offered prompt tokens/s = 0.8 × this figure.
"""

from __future__ import annotations

from sbs.sim.cluster import ClusterConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.trace import Trace


def nominal_prefill_tok_s(cluster: ClusterConfig, cost: CostModel, trace: Trace) -> float:
    """Prompt tokens per second the prefill tier sustains at full, balanced chunks."""
    chunk = cluster.prefill.chunk_tokens
    dp = cluster.prefill.dp_size
    lengths = [r.prompt_tokens for r in trace.requests] or [chunk]
    total = float(sum(lengths))
    # Token-weighted attention work per token: a chunk of C tokens drawn from this mix does C·E[n²]/E[n]
    # causal pairs when prompts fit a chunk; longer prompts attend across chunks (capped at the prompt).
    pairs_per_token = sum(float(n) * n for n in lengths) / total
    pairs = chunk * pairs_per_token
    step = cost.prefill_step_s([chunk] * dp, [pairs] * dp, ep_size=dp)
    return cluster.prefill.instances * dp * chunk / step
