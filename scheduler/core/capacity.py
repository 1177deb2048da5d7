"""Prefill capacity model: the predicted compute of one DP rank in one lockstep prefill step.

A DP rank's step costs `fixed_s + per_token_s * tokens + per_pair_s * pairs`, where `pairs` counts
causal-attention query/key pairs: a chunk of `new` tokens behind a cached (or earlier-chunk) prefix of
`prefix` tokens attends to `(prefix + new)^2 - prefix^2` pairs (up to the constant factor 1/2, which
`per_pair_s` absorbs). An idle rank costs nothing; all DP ranks of an instance step in lockstep, so the
step takes as long as its slowest rank (the straggler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefillCapacityModel:
    """Predicted compute of one DP rank in one prefill step: fixed_s + per_token_s*tokens + per_pair_s*pairs.

    `pairs` is causal-attention work (prefix+new)^2 - prefix^2 summed over the rank's chunks.
    """

    fixed_s: float
    per_token_s: float
    per_pair_s: float

    def __post_init__(self) -> None:
        if self.fixed_s < 0 or self.per_token_s < 0 or self.per_pair_s < 0:
            raise ValueError(
                "PrefillCapacityModel coefficients must be >= 0, got "
                f"fixed_s={self.fixed_s}, per_token_s={self.per_token_s}, per_pair_s={self.per_pair_s}"
            )

    def rank_cost_s(self, tokens: int, pairs: float) -> float:
        """Seconds one rank spends on `tokens` new tokens with `pairs` attention pairs; 0.0 when idle."""
        if tokens <= 0:
            return 0.0
        return self.fixed_s + self.per_token_s * tokens + self.per_pair_s * pairs

    def step_s(self, rank_tokens: Sequence[int], rank_pairs: Sequence[float]) -> float:
        """Lockstep step time: the largest rank cost (0.0 for no ranks)."""
        if len(rank_tokens) != len(rank_pairs):
            raise ValueError(f"rank_tokens has {len(rank_tokens)} ranks but rank_pairs has {len(rank_pairs)}")
        return max(map(self.rank_cost_s, rank_tokens, rank_pairs), default=0.0)

    @staticmethod
    def pairs(prefix_tokens: int, new_tokens: int) -> float:
        """Causal-attention pairs of `new_tokens` queries behind `prefix_tokens` of context."""
        end = prefix_tokens + new_tokens
        return float(end * end - prefix_tokens * prefix_tokens)
