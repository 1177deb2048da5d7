"""The packing phase of `prefill_alloc.water_fill_lists` without cache credit, compiled (numba).

Each selected item, in LPT order, goes whole to the rank with the lowest cost `a * tokens + b * pairs`
(ties: lowest index) among the ranks with room for it. If none has room and chunking is allowed, the
rank with the most room (ties: lowest index) takes a chunk that fills it and the rest is carried on that
rank. This is the choice the pure-Python packing makes through its heap; with at most a few dozen DP
ranks per instance, a scan per item is cheaper than keeping a heap.

`head_count` is the selection's count of the items that fill the room (a running sum with an early
exit, where numpy needed a capped copy, a cumulative sum and a search).
"""

from __future__ import annotations

import numpy as np
from sbs.scheduler.core.compiled import jit

__all__ = ["head_count", "pack", "pack_lpt"]


@jit
def pack(
    tokens: np.ndarray,
    order: np.ndarray,
    tok: np.ndarray,
    prs: np.ndarray,
    room: np.ndarray,
    a: float,
    b: float,
    allow_chunking: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place item `s` (`tokens[s]` tokens) for each s in `order`; per item its rank (-1: unplaced), its
    tokens this step and the tokens carried. Updates the ranks' `tok`, `prs` and `room` in place."""
    n = tokens.shape[0]
    m = tok.shape[0]
    p_rank = np.full(n, -1, np.int64)
    p_step = tokens.copy()
    p_rem = np.zeros(n, np.int64)
    cost = a * tok + b * prs  # each rank's cost, recomputed (the same expression) where it changes
    for s in order:
        t = tokens[s]
        best = -1
        best_cost = np.inf
        for j in range(m):
            if room[j] >= t and cost[j] < best_cost:
                best, best_cost = j, cost[j]
        if best >= 0:
            tok[best] += t
            prs[best] += t * t
            room[best] -= t
            cost[best] = a * tok[best] + b * prs[best]
            p_rank[s] = best
        elif allow_chunking:
            j = int(np.argmax(room))  # the first of the largest
            mr = room[j]
            if mr > 0:
                tok[j] += mr
                prs[j] += mr * mr
                room[j] = 0
                cost[j] = a * tok[j] + b * prs[j]
                p_rank[s] = j
                p_step[s] = mr
                p_rem[s] = t - mr
    return p_rank, p_step, p_rem


@jit
def pack_lpt(
    tokens: np.ndarray,
    tok: np.ndarray,
    prs: np.ndarray,
    room: np.ndarray,
    a: float,
    b: float,
    allow_chunking: bool,
    limit: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """`pack` in LPT order (tokens descending, ties in item order; item order when nothing costs), and
    whether it ran: not when an item's tokens or a rank's room reach `limit` (nothing is changed then)."""
    if (tokens.shape[0] and tokens.max() >= limit) or (room.shape[0] and room.max() >= limit):
        empty = np.empty(0, np.int64)
        return empty, empty, empty, False
    # mergesort: stable
    order = np.argsort(-tokens, kind="mergesort") if a > 0 or b > 0 else np.arange(tokens.shape[0])
    p_rank, p_step, p_rem = pack(tokens, order, tok, prs, room, a, b, allow_chunking)
    return p_rank, p_step, p_rem, True


@jit
def head_count(tokens: np.ndarray, chunk: int, room: int) -> int:
    """How many of the first items fill `room` tokens, each counted at most `chunk`: the first i + 1 whose
    running sum reaches `room` (all of them if none does). For a `chunk` below 2**31 (each term is at
    most `chunk`, so the sum stays within int64)."""
    total = 0
    for i in range(tokens.shape[0]):
        t = tokens[i]
        total += t if t < chunk else chunk
        if total >= room:
            return i + 1
    return tokens.shape[0]
