"""The simulator's side of the `oracle` policy, and the bound no policy can beat.

`simulate` runs a policy; for the oracle it runs one simulation per step cap in `fill_targets`, each
with its foresight's holds and without them (horizon 0), and keeps the one of lowest TTFT mean (a
choice no live scheduler can make: it knows how the run ends; the holds are a heuristic that can
lose).

`zero_queue_ttft`, per request: its prefill alone on an idle instance (its own chunks, each a
lockstep step in which no other rank works), after the longest prefix any earlier request could
have left in a cache (every block of it, never evicted, on whichever rank it runs), then its KV
transfer, then a decode step with it alone in the batch. Every policy adds queueing and batching to
that, never less; only the engines' step-time noise (`jitter_cv`, a few %) can dip below it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.settings import scheduling
from sbs.sim.cluster import ClusterConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.simulator import SimResult, Simulation
from sbs.sim.trace import Trace


def simulate(
    trace: Trace,
    cluster: ClusterConfig,
    policy: scheduling.PolicySettings,
    *,
    progress: Callable[[float], None] | None = None,
) -> tuple[SimResult, float | None]:
    """One run of `policy`, and for the oracle the step cap it kept (None for any other policy)."""
    if not isinstance(policy, scheduling.OraclePolicy) or not policy.fill_targets:
        return Simulation(trace, cluster, policy, progress=progress).run(), None
    horizons = sorted({policy.horizon_s, 0.0}, reverse=True)
    runs = [(fill, h) for h in horizons for fill in policy.fill_targets]
    best: tuple[float, SimResult, float] | None = None
    for k, (fill, horizon) in enumerate(runs):
        batching = policy.batching.model_copy(update={"fill_target": fill})
        one = policy.model_copy(update={"batching": batching, "horizon_s": horizon})

        def part(frac: float, k: int = k) -> None:
            if progress is not None:
                progress((k + frac) / len(runs))

        result = Simulation(trace, cluster, one, progress=part).run()
        ttft = result.recorder.ttft()
        mean = float(ttft.mean()) if len(ttft) else float("inf")
        if best is None or mean < best[0]:
            best = (mean, result, fill)
    assert best is not None
    return best[1], best[2]


def zero_queue_ttft(trace: Trace, cluster: ClusterConfig, cost: CostModel) -> np.ndarray:
    """Per request (in trace order), the TTFT it would see with no queueing at all (see module doc)."""
    p_dp, d_dp = cluster.prefill.dp_size, cluster.decode.dp_size
    chunk = cluster.prefill.chunk_tokens
    block = trace.block_tokens or 0

    @cache
    def prefill_s(cached: int, tokens: int) -> float:
        total, done = 0.0, cached
        while done < tokens:
            n = min(chunk, tokens - done)
            pairs = PrefillCapacityModel.pairs(done, n)
            total += cost.prefill_step_s([n] + [0] * (p_dp - 1), [pairs] + [0.0] * (p_dp - 1), ep_size=p_dp)
            done += n
        return total

    @cache
    def decode_s(kv: int) -> float:
        batch = np.zeros(d_dp)
        ctx = np.zeros(d_dp)
        batch[0], ctx[0] = 1, kv
        return cost.decode_step_s(batch, ctx, ep_size=d_dp)

    seen: set[int] = set()
    out = np.empty(len(trace.requests))
    for i, r in enumerate(trace.requests):
        cached = 0
        if block and r.hash_ids:
            hits = 0
            for h in r.hash_ids:
                if h not in seen:
                    break
                hits += 1
            cached = min(hits * block, r.prompt_tokens - 1)
            seen.update(r.hash_ids)
        n = r.prompt_tokens
        out[i] = prefill_s(cached, n) + cost.kv_transfer_s(n) + decode_s(n + 1)
    return out


def bound_summary(trace: Trace, cluster: ClusterConfig, cost: CostModel) -> dict[str, float]:
    """The bound's TTFT mean and p90 (s), keyed like a run's summary."""
    v = zero_queue_ttft(trace, cluster, cost)
    if not len(v):
        return {"ttft_mean_s": float("nan"), "ttft_p90_s": float("nan")}
    return {"ttft_mean_s": float(v.mean()), "ttft_p90_s": float(np.percentile(v, 90))}
