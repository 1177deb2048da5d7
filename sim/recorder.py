"""Per-request and per-step measurements of a simulation run, and their summary.

Conventions follow SGLang's `bench_serving` (see docs/): TTFT = arrival → first token at the client;
TPOT per request = (E2E − TTFT)/(output − 1), request-weighted; ITL = every inter-token gap, pooled
(token-weighted, `weighted_percentile`); other percentiles with numpy's linear interpolation;
duration = first arrival → last completion. Goodput counts requests meeting both the TTFT and the
TPOT SLO (vLLM `--goodput`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SUMMARY_KEYS: tuple[str, ...] = (
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "tpot_p90_s",
    "itl_p99_s",
    "throughput_tok_s",
    "output_throughput_tok_s",
    "request_throughput",
    "goodput_rps",
    "slo_attainment",
    "prefill_chunk_utilization",
    "dp_imbalance",
    "prefill_time_balance",
    "decode_dp_imbalance",
    "queue_wait_mean_s",
    "queue_wait_p90_s",
    "prefill_step_mean_s",
    "cache_hit_rate",
    "completed",
    "dropped",
    "duration_s",
)


@dataclass
class Recorder:
    """Hooks the simulator calls with the time; arrays indexed by request id."""

    n: int
    arrival: np.ndarray = field(init=False)
    dispatched: np.ndarray = field(init=False)
    first_token: np.ndarray = field(init=False)
    finished: np.ndarray = field(init=False)
    prompt: np.ndarray = field(init=False)
    output: np.ndarray = field(init=False)
    cached: np.ndarray = field(init=False)
    dropped: int = 0
    prefill_util: list[float] = field(default_factory=list)
    prefill_imbalance: list[float] = field(default_factory=list)
    prefill_balance: list[float] = field(default_factory=list)
    prefill_durations: list[float] = field(default_factory=list)
    decode_durations: list[float] = field(default_factory=list)
    decode_tokens: list[int] = field(default_factory=list)
    decode_imbalance: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.arrival = np.full(self.n, np.nan)
        self.dispatched = np.full(self.n, np.nan)
        self.first_token = np.full(self.n, np.nan)
        self.finished = np.full(self.n, np.nan)
        self.prompt = np.zeros(self.n)
        self.output = np.zeros(self.n)
        self.cached = np.zeros(self.n)

    def on_prefill_step(
        self, rank_tokens: list[int], chunk_tokens: int, duration_s: float, balance: float = 1.0
    ) -> None:
        total = sum(rank_tokens)
        self.prefill_balance.append(balance)
        n = len(rank_tokens)
        self.prefill_util.append(total / (n * chunk_tokens))
        self.prefill_imbalance.append(max(rank_tokens) * n / total if total else 1.0)
        self.prefill_durations.append(duration_s)

    def on_decode_step(self, duration_s: float, tokens: int, max_rank_batch: int, ranks: int) -> None:
        self.decode_durations.append(duration_s)
        self.decode_tokens.append(tokens)
        self.decode_imbalance.append(max_rank_batch * ranks / tokens if tokens else 1.0)

    def summary(self, *, slo_ttft_s: float, slo_tpot_s: float) -> dict[str, float]:
        done = ~np.isnan(self.finished)
        completed = int(done.sum())
        out: dict[str, float] = {k: math.nan for k in SUMMARY_KEYS}
        out["completed"] = completed
        out["dropped"] = self.dropped + int((~done & ~np.isnan(self.arrival)).sum())
        if completed == 0:
            return out
        arrival = self.arrival[done]
        ttft = self.first_token[done] - arrival
        e2e = self.finished[done] - arrival
        outputs = self.output[done]
        multi = outputs > 1
        tpot = np.where(multi, (e2e - ttft) / np.maximum(outputs - 1, 1), 0.0)
        duration = float(self.finished[done].max() - np.nanmin(self.arrival))
        good = (ttft <= slo_ttft_s) & (tpot <= slo_tpot_s)
        wait = self.dispatched[done] - arrival
        out.update(
            ttft_mean_s=float(ttft.mean()),
            ttft_p50_s=float(np.percentile(ttft, 50)),
            ttft_p90_s=float(np.percentile(ttft, 90)),
            ttft_p99_s=float(np.percentile(ttft, 99)),
            tpot_mean_s=float(tpot[multi].mean()) if multi.any() else 0.0,
            tpot_p90_s=float(np.percentile(tpot[multi], 90)) if multi.any() else 0.0,
            itl_p99_s=weighted_percentile(self.decode_durations, self.decode_tokens, 99),
            throughput_tok_s=float((self.prompt[done].sum() + outputs.sum()) / duration),
            output_throughput_tok_s=float(outputs.sum() / duration),
            request_throughput=completed / duration,
            goodput_rps=float(good.sum()) / duration,
            slo_attainment=float(good.mean()),
            prefill_chunk_utilization=float(np.mean(self.prefill_util)) if self.prefill_util else 0.0,
            dp_imbalance=float(np.mean(self.prefill_imbalance)) if self.prefill_imbalance else 1.0,
            prefill_time_balance=_time_balance(self.prefill_balance, self.prefill_durations),
            decode_dp_imbalance=float(np.mean(self.decode_imbalance)) if self.decode_imbalance else 1.0,
            queue_wait_mean_s=float(wait.mean()),
            queue_wait_p90_s=float(np.percentile(wait, 90)),
            prefill_step_mean_s=float(np.mean(self.prefill_durations)) if self.prefill_durations else 0.0,
            cache_hit_rate=float(self.cached[done].sum() / max(self.prompt[done].sum(), 1.0)),
            duration_s=duration,
        )
        return out

    def ttft(self) -> np.ndarray:
        done = ~np.isnan(self.finished)
        return self.first_token[done] - self.arrival[done]


def _time_balance(balance: Sequence[float], durations: Sequence[float]) -> float:
    """The steps' time balance weighted by their durations: the share of the ranks' step time spent on
    their own tokens, lockstep waits for the slowest rank left out (1.0 with no step)."""
    total = sum(durations)
    return float(np.dot(balance, durations) / total) if total > 0 else 1.0


def weighted_percentile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The `q`-th percentile of `values`, each counted `weights` times: the smallest value whose
    cumulative weight reaches q % of the total (no interpolation). Pooled inter-token gaps use it, a
    decode step's duration weighted by the tokens it produced.

    NaN when `values` is empty (nothing was measured: a summary shows it as missing, not as 0 s);
    the plain unweighted percentile when every weight is 0.
    """
    if not len(values):
        return math.nan
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    if cum[-1] <= 0:
        return float(np.percentile(v, q))
    idx = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
    return float(v[min(idx, len(v) - 1)])
