"""Prioritized batch allocation (PBAA): one prefill step of one instance, water-filled across its DP ranks.

`water_fill_lists` is pure and deterministic. It runs in two phases:

1. **Selection.** Items are admitted in the caller's priority order (carried-over first, then oldest)
   while the instance still has token room: the sum over available ranks of
   `chunk_tokens - committed_tokens`. An item counts with its best-case effective tokens (its largest
   prefix-cache credit), capped at `chunk_tokens` (a longer one is chunked and takes one rank's room at
   most this step); the last admitted item may overflow the room (it will be chunked). Without
   chunking, an item larger than every rank's room is never admitted (it could not be placed anyway).
2. **Packing** (water-filling as greedy list scheduling, largest cost first, i.e. LPT). Each admitted
   item goes, whole, to the rank with the lowest resulting cost (ties: lowest index) among the ranks
   where it fits. Effective tokens on rank j are `tokens - cached_j` with `cached_j` clamped so at least
   one token is computed, and attention pairs use `prefix = cached_j`. If it fits whole nowhere and
   chunking is allowed, the rank with the most room takes a chunk that fills it (so at most one chunked
   item per rank per step) and the rest is carried as `remaining_tokens` on that same rank. Ties go to
   a rank whose cache no item still to be placed is credited on (LPT places cached items late: a chunk
   must not take their rank first), then to the lowest index. Otherwise the item is unplaced. A request
   is never split across ranks (KV locality) and no rank exceeds `chunk_tokens`.

**Makespan bound.** Write an item's cost as its cost increment on a rank, c_i, and rank j's committed
load as L0_j (both excluding `fixed_s`, which every busy rank pays once). When `chunk_tokens` does not
bind and there is no cache credit, packing is list scheduling on m ranks: the item that ends on the
slowest rank started on the least-loaded rank, whose load was at most (ΣL0 + Σc - c_i)/m; every
schedule's slowest rank carries at least the mean (ΣL0 + Σc)/m. Hence

    step_s <= OPT + (1 - 1/m) * max_i c_i        (also with committed loads),

and with no committed loads the LPT order gives Graham's step_s <= (4/3 - 1/(3m)) * OPT (the fixed term
only loosens both). `tests/scheduler/core/test_prefill_alloc.py` checks both against brute force.

Complexity: without cache credit (the usual case) the packing runs compiled (`prefill_kernel`, numba),
a scan of the m ranks per admitted item: O(n log n + p m) for n items of which p are admitted, with m a
few dozen DP ranks. With credit it runs in Python over a heap of ranks keyed by their load, ranks too
full for an item set aside only for that item: O(n log n + p log m). Both make the same choices (tested).
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush, heapreplace
from itertools import accumulate, compress, repeat

import numpy as np
from sbs.scheduler.core import prefill_kernel
from sbs.scheduler.core.capacity import PrefillCapacityModel

__all__ = ["PrefillColumns", "water_fill_lists"]

_SQUARE_SAFE = 1 << 31
"""Token counts below this have squares (attention pairs) that int64 holds (`prefill_kernel`)."""


def _credit(cache: Mapping[int, int], rank: int, tokens: int) -> int:
    """Cache credit usable on `rank`: never below 0, and at least one token is always recomputed."""
    return min(max(cache.get(rank, 0), 0), tokens - 1)


def _credited(cache: Mapping[int, int], tokens: int) -> list[int]:
    """The ranks where `cache` gives an item of `tokens` some credit."""
    return [j for j in cache if _credit(cache, j, tokens) > 0]


@dataclass(frozen=True, slots=True)
class PrefillColumns:
    """`water_fill_lists`' result, as parallel lists: the placed items in priority order (rid, rank, tokens
    this step, tokens carried to later steps on the same rank, cache credit applied), the rids not
    placed, and per rank the step's tokens and predicted cost (committed work included)."""

    rids: list[int]
    ranks: list[int]
    step_tokens: list[int]
    remaining_tokens: list[int]
    cached_tokens: list[int]
    unplaced: list[int]
    rank_tokens: list[int]
    rank_cost_s: list[float]
    rank_available: list[bool]
    ranks_a: np.ndarray | None = None
    """`ranks` as int64, where the compiled packing placed every admitted item (else None)."""
    uncached_a: np.ndarray | None = None
    """With `ranks_a`: per placed item the tokens it computes, `step_tokens + remaining_tokens`."""

    @property
    def step_s(self) -> float:
        """Predicted lockstep duration: the slowest rank's cost."""
        return max(self.rank_cost_s, default=0.0)


def water_fill_lists(
    rids: Sequence[int],
    tokens: Sequence[int],
    committed_tokens: Sequence[int],
    committed_pairs: Sequence[float],
    available: Sequence[bool] | None = None,
    *,
    credits: Sequence[Mapping[int, int] | None] | None = None,
    chunk_tokens: int,
    model: PrefillCapacityModel,
    allow_chunking: bool = True,
    tokens_a: np.ndarray | None = None,
) -> PrefillColumns:
    """Select items in priority order for one step and pack them onto DP ranks (see module docstring):
    item i is (`rids[i]`, `tokens[i]`, `credits[i]`), rank j is
    (`committed_tokens[j]`, `committed_pairs[j]`, `available[j]`); None means no credit / all available.
    `tokens_a`: `tokens` as int64 already.

    The inputs are not modified.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    n_items = len(rids)
    if len(tokens) != n_items or (credits is not None and len(credits) != n_items):
        raise ValueError("rids, tokens and credits differ in length")
    ta = None  # the tokens as int64, where the selection below runs in numpy
    if credits is None and allow_chunking and chunk_tokens < _SQUARE_SAFE and n_items:
        with contextlib.suppress(OverflowError):
            ta = np.fromiter(tokens, np.int64, n_items) if tokens_a is None else tokens_a
    if n_items and min(tokens) < 1:
        i = next(i for i, t in enumerate(tokens) if t < 1)
        raise ValueError(f"prefill item {rids[i]}: tokens must be >= 1, got {tokens[i]}")
    m = len(committed_tokens)
    avail = [True] * m if available is None else list(available)
    if len(committed_pairs) != m or len(avail) != m:
        raise ValueError("committed_tokens, committed_pairs and available differ in length")
    a = model.per_token_s
    b = model.per_pair_s
    tok = list(committed_tokens)
    prs = list(committed_pairs)
    if available is None:
        room = [chunk_tokens - t if t < chunk_tokens else 0 for t in tok]
    else:
        room = [max(chunk_tokens - t, 0) if ok else 0 for t, ok in zip(tok, avail, strict=True)]
    total_room = sum(room)
    max_room = max(room, default=0)

    # Phase 1: selection in priority order; items[k:] are never considered.
    sel_c: list[int]  # best cache credit over available ranks
    if credits is None and allow_chunking:
        # Every considered item is admitted: the first k, up to the one that fills the room.
        # An item longer than a rank's room is chunked: this step it takes one rank's room at most.
        if total_room <= 0:
            k = 0
        elif ta is not None:  # sizes below 2**31: the running sum stays within int64
            k = prefill_kernel.head_count(ta, chunk_tokens, total_room)
        else:
            need = accumulate(
                tokens if max(tokens, default=0) < chunk_tokens else map(min, tokens, repeat(chunk_tokens))
            )
            k = min(bisect_left(list(need), total_room) + 1, n_items)
        sel_idx: Sequence[int] = range(k)
        sel_t = list(tokens[:k])
        sel_c = [0] * k
        any_cache = False
    else:
        sel_idx = []
        sel_t = []
        sel_c = []
        any_cache = False
        used = 0
        k = 0
        for i in range(n_items):
            if used >= total_room:
                break
            t = tokens[i]
            cache = credits[i] if credits is not None else None
            c = 0
            if cache:
                for j in cache:
                    if not 0 <= j < m:
                        raise ValueError(
                            f"prefill item {rids[i]}: cache credit for rank {j}, expected 0..{m - 1}"
                        )
                c = max((_credit(cache, j, t) for j in cache if avail[j]), default=0)
                any_cache = True
            if allow_chunking or t - c <= max_room:
                used += min(t - c, chunk_tokens)
                sel_idx.append(i)
                sel_t.append(t)
                sel_c.append(c)
            k += 1
    n_sel = len(sel_t)
    sel_a = None if ta is None else ta[:n_sel]
    compiled = None if any_cache else _pack_compiled(sel_t, tok, prs, room, a, b, allow_chunking, sel_a)
    arrays: tuple[np.ndarray, np.ndarray] | tuple[None, None] = (None, None)
    if compiled is not None:
        p_rank, p_step, p_rem, tok, prs, arrays = compiled
        p_cached = [0] * n_sel
    else:
        p_rank, p_step, p_rem, p_cached = _pack(
            sel_idx, sel_t, sel_c, credits, tok, prs, room, avail, a, b, any_cache, allow_chunking
        )

    sel_rids = list(rids[:k]) if isinstance(sel_idx, range) else [rids[i] for i in sel_idx]
    if n_sel == k and (not n_sel or min(p_rank) >= 0):
        unplaced: list[int] = []
    else:  # some considered items were not admitted or not placed
        arrays = (None, None)
        flag = bytearray(b"\x01") * k
        placed = [r >= 0 for r in p_rank]
        for i in compress(sel_idx, placed):
            flag[i] = 0
        unplaced = list(compress(rids[:k], flag))
        sel_rids = list(compress(sel_rids, placed))
        p_rank, p_step, p_rem, p_cached = (
            list(compress(col, placed)) for col in (p_rank, p_step, p_rem, p_cached)
        )
    unplaced.extend(rids[k:])
    rank_cost = list(map(model.rank_cost_s, tok, prs))
    return PrefillColumns(sel_rids, p_rank, p_step, p_rem, p_cached, unplaced, tok, rank_cost, avail, *arrays)


def _pack_compiled(
    sel_t: list[int],
    tok: list[int],
    prs: list[float],
    room: list[int],
    a: float,
    b: float,
    allow_chunking: bool,
    sel_a: np.ndarray | None = None,
) -> tuple[list[int], list[int], list[int], list[int], list[float], tuple[np.ndarray, np.ndarray]] | None:
    """Phase 2 without cache credit by `prefill_kernel.pack`: per item (rank, step tokens, carried tokens),
    the ranks' tokens and pairs after it, and per item its rank and tokens to compute as int64 arrays;
    None if a value is beyond int64 (the caller packs in Python). `sel_a`: `sel_t` as int64 already (not
    modified)."""
    n, m = len(sel_t), len(tok)
    try:
        t = np.fromiter(sel_t, np.int64, n) if sel_a is None else sel_a
        tok_a, room_a = np.fromiter(tok, np.int64, m), np.fromiter(room, np.int64, m)
    except OverflowError:
        return None
    # LPT order: tokens descending, stable (ties keep priority order); any order when nothing costs.
    prs_a = np.fromiter(prs, np.float64, m)
    p_rank, p_step, p_rem, ok = prefill_kernel.pack_lpt(
        t, tok_a, prs_a, room_a, a, b, allow_chunking, _SQUARE_SAFE
    )
    if not ok:
        return None
    arrays = p_rank, t  # without credit an item computes all its tokens: step + carried
    return p_rank.tolist(), p_step.tolist(), p_rem.tolist(), tok_a.tolist(), prs_a.tolist(), arrays


def _pack(
    sel_idx: Sequence[int],
    sel_t: list[int],
    sel_c: list[int],
    credits: Sequence[Mapping[int, int] | None] | None,
    tok: list[int],
    prs: list[float],
    room: list[int],
    avail: list[bool],
    a: float,
    b: float,
    any_cache: bool,
    allow_chunking: bool,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Phase 2 in Python, cache credit included: per item (rank, step tokens, carried tokens, credit).
    Updates `tok`, `prs` and `room` in place."""
    n_sel = len(sel_t)
    m = len(tok)
    # LPT order: best-case cost increment, descending; the sort is stable, so ties keep priority order.
    # Without credit the cost is increasing in tokens, so the tokens themselves are the key.
    if any_cache:
        key = [a * (t - c) + b * (t * t - c * c) for t, c in zip(sel_t, sel_c, strict=True)]
        order = sorted(range(n_sel), key=key.__getitem__, reverse=True)
    elif a > 0 or b > 0:
        order = sorted(range(n_sel), key=sel_t.__getitem__, reverse=True)
    else:
        order = list(range(n_sel))

    # Phase 2: LPT packing. Heap entries are (load, rank, version); an entry is current iff its version
    # matches `ver` (a placement through cache credit leaves the rank's old entry behind, stale).
    # Placements are columns indexed by selection position; rank -1 marks an unplaced item.
    ver = [0] * m
    heap = [(a * tok[j] + b * prs[j], j, 0) for j in range(m) if room[j] > 0]
    heapify(heap)
    p_rank = [-1] * n_sel
    p_step = list(sel_t)
    p_rem = [0] * n_sel
    p_cached = [0] * n_sel
    # Per rank, the items not yet placed that hold cache credit there: a chunk avoids those ranks.
    claims = [0] * m
    if any_cache and credits is not None:
        for s in order:
            if sel_c[s]:
                for j in _credited(credits[sel_idx[s]] or {}, sel_t[s]):
                    claims[j] += 1
    for s in order:
        t = sel_t[s]
        if heap and not sel_c[s]:
            # Fast path: the least-loaded rank is current and takes the whole item.
            _, j, v = heap[0]
            r = room[j] - t
            if r >= 0 and v == ver[j]:
                tj = tok[j] + t
                pj = prs[j] + t * t
                tok[j] = tj
                prs[j] = pj
                room[j] = r
                if r:
                    heapreplace(heap, (a * tj + b * pj, j, v))
                else:
                    heappop(heap)
                p_rank[s] = j
                continue
        cache = credits[sel_idx[s]] if sel_c[s] and credits is not None else None
        if cache:
            for j in _credited(cache, t):
                claims[j] -= 1
        # Least-loaded rank that takes the item whole without credit; ranks too full are set aside.
        stash: list[tuple[float, int, int]] = []
        hj = -1
        if t <= max(room):
            while heap:
                ent = heap[0]
                j = ent[1]
                if ent[2] != ver[j]:
                    heappop(heap)
                elif room[j] >= t:
                    hj = j
                    break
                else:
                    stash.append(heappop(heap))
        best = hj
        best_c = 0
        best_e = t
        best_cost = a * (tok[hj] + t) + b * (prs[hj] + t * t) if hj >= 0 else 0.0
        if cache:
            # Ranks holding a prefix: the heap's pick gets its own credit first, then any cheaper one wins.
            for j in sorted(cache, key=lambda r: (r != hj, r)):
                if not avail[j] or room[j] <= 0:
                    continue
                c = _credit(cache, j, t)
                e = t - c
                if c <= 0 or room[j] < e:
                    continue
                cost = a * (tok[j] + e) + b * (prs[j] + t * t - c * c)
                if j == hj or best < 0 or cost < best_cost or (cost == best_cost and j < best):
                    best, best_c, best_e, best_cost = j, c, e, cost
        if best >= 0:
            j = best
            tok[j] += best_e
            prs[j] += t * t - best_c * best_c
            room[j] -= best_e
            ver[j] += 1
            if j == hj:
                if room[j] > 0:
                    heapreplace(heap, (a * tok[j] + b * prs[j], j, ver[j]))
                else:
                    heappop(heap)
            elif room[j] > 0:
                heappush(heap, (a * tok[j] + b * prs[j], j, ver[j]))
            p_rank[s] = j
            p_step[s] = best_e
            p_cached[s] = best_c
        elif allow_chunking and (mr := max(room)) > 0:
            # Fits whole nowhere: the rank with the most room takes a chunk that fills it, so it takes no
            # other chunk; the rest stays on that rank for later steps. Ties: a rank no later item's
            # cache credit names (unless it is this item's own), then the lowest index.
            j = room.index(mr)
            if claims[j]:
                j = min(
                    (r for r in range(m) if room[r] == mr),
                    key=lambda r: (claims[r] > 0 and not (cache and _credit(cache, r, t) > 0), r),
                )
            c = _credit(cache, j, t) if cache else 0
            tok[j] += mr
            prs[j] += (c + mr) * (c + mr) - c * c
            room[j] = 0
            ver[j] += 1
            p_rank[s] = j
            p_step[s] = mr
            p_rem[s] = t - c - mr
            p_cached[s] = c
        for ent in stash:
            if ent[2] == ver[ent[1]]:
                heappush(heap, ent)

    return p_rank, p_step, p_rem, p_cached
