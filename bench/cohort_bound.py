"""How much prefill time lockstep ranks could gain if long prompts started in cohorts of similar length.

A chunked prompt stays on its DP rank and its late chunks attend to its whole prefix, so a 64k-token
prompt's fourth chunk costs several times its first; a lockstep step lasts as long as its slowest
rank. This takes prompts of the given lengths (uniform in `--lengths`) on one instance's ranks and
reports the prefill time balance (`prefill_time_balance` of `sbs-sim`: the ranks' compute over ranks ×
the slowest rank's, duration-weighted) of three arrangements, with the cost model's step costs:

- `fifo`: each rank works through its share of the prompts in arrival order, chunk after chunk (what
  any dispatcher does that does not align the ranks: the simulator measures about this for eft and SBS);
- `pool N`: cohorts of one prompt per rank start together; each cohort is the oldest waiting prompt and
  the `ranks − 1` closest to it in length among the `N` oldest waiting (a buffer of N long prompts);
- `sorted`: cohorts of consecutive lengths over all prompts (clairvoyant: the bound).

No arrivals, no short prompts, no waiting cost: it bounds what aligning long prompts can gain, not
what a policy achieves. Run: `python -m sbs.bench.cohort_bound [--lengths 16000-64000] [--pools 32,64]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from sbs.sim.cluster import PRESETS
from sbs.sim.costmodel import CostModel


def chunk_plan(tokens: int, chunk: int) -> list[tuple[int, float]]:
    """(new tokens, attention pairs) of each chunk of a fresh prompt, one per step."""
    out, done = [], 0
    while done < tokens:
        n = min(chunk, tokens - done)
        out.append((n, float(done + n) ** 2 - float(done) ** 2))
        done += n
    return out


def run_ranks(cost: CostModel, per_rank: Sequence[Sequence[int]], chunk: int, ep: int) -> tuple[float, float]:
    """(Σ step duration, Σ balance × duration) of ranks each working through its own prompts in order,
    in lockstep steps."""
    plans = [[c for t in prompts for c in chunk_plan(t, chunk)] for prompts in per_rank]
    total = weighted = 0.0
    for k in range(max(map(len, plans), default=0)):
        tokens = [p[k][0] if k < len(p) else 0 for p in plans]
        pairs = [p[k][1] if k < len(p) else 0.0 for p in plans]
        d, b = cost.prefill_step(tokens, pairs, ep_size=ep)
        total += d
        weighted += b * d
    return total, weighted


def cohorts(cost: CostModel, groups: Sequence[Sequence[int]], chunk: int, ep: int) -> float:
    """Time balance of cohorts run one after another, one prompt per rank."""
    total = weighted = 0.0
    for g in groups:
        d, w = run_ranks(cost, [[t] for t in g], chunk, ep)
        total, weighted = total + d, weighted + w
    return weighted / total


def pool_groups(lengths: Sequence[int], pool: int, ranks: int) -> list[list[int]]:
    """Cohorts of the oldest waiting prompt and the `ranks − 1` closest in length among the `pool`
    oldest waiting."""
    waiting, nxt, groups = list(lengths[:pool]), pool, []
    while waiting:
        oldest = waiting[0]
        near = sorted(range(1, len(waiting)), key=lambda i: (abs(waiting[i] - oldest), i))[: ranks - 1]
        take = {0, *near}
        groups.append([waiting[i] for i in sorted(take)])
        waiting = [t for i, t in enumerate(waiting) if i not in take]
        while len(waiting) < pool and nxt < len(lengths):
            waiting.append(lengths[nxt])
            nxt += 1
    return groups


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="16000-64000", help="LOW-HIGH prompt tokens, uniform")
    ap.add_argument("--prompts", type=int, default=3200)
    ap.add_argument("--pools", default="32,48,64,128,256")
    ap.add_argument("--cluster", default="ds3-h800", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        low, high = (int(x) for x in args.lengths.split("-"))
        pools = [int(x) for x in args.pools.split(",")]
    except ValueError:
        ap.error(f"--lengths LOW-HIGH and --pools N,N,...: got {args.lengths!r} and {args.pools!r}")
    if not 0 < low <= high or args.prompts < 1 or min(pools) < 1:
        ap.error("--lengths needs 0 < LOW <= HIGH; --prompts and --pools must be positive")
    cluster = PRESETS[args.cluster]
    cost, spec = cluster.cost_model(), cluster.prefill
    ranks, chunk = spec.nodes_per_instance * spec.gpus_per_node, spec.chunk_tokens
    lengths = np.random.default_rng(args.seed).integers(low, high + 1, args.prompts).tolist()
    print(f"{args.prompts} prompts of {low}-{high} tokens on one {ranks}-rank instance, chunk {chunk}")
    d, w = run_ranks(cost, [lengths[r::ranks] for r in range(ranks)], chunk, ranks)
    print(f"fifo        time balance {w / d:.2f}")
    for pool in pools:
        balance = cohorts(cost, pool_groups(lengths, pool, ranks), chunk, ranks)
        print(f"pool {pool:<6d} time balance {balance:.2f}")
    srt = sorted(lengths)
    groups = [srt[i : i + ranks] for i in range(0, len(srt), ranks)]
    print(f"sorted      time balance {cohorts(cost, groups, chunk, ranks):.2f}")


if __name__ == "__main__":
    main()
