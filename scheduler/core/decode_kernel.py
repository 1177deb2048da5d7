"""The one-capacity decode placement of `decode_alloc`, compiled (numba).

`place` is Algorithm 3 for a round in which every live rank has the same KV capacity (the usual case):
requests largest KV first, candidates the ranks with `K + need <= cap`, the IQR fence over the
candidates' K (numpy's 'linear' quartiles, with the same floating-point expression as the naive
reference), and `argmin (B, K, pos)` over the ranks the fence keeps. It keeps:

- `ks`, the sorted K of the ranks still in the round (a placement moves one value; a rank that reaches
  `max_running` leaves), so each request's candidate count and quartiles are a bisection and four reads;
- a binary heap of ranks, each packed into one integer whose order is (B, K, pos) order; its top after
  parking is the choice;
- the parked ranks: those found ineligible (masked, or too full) at the top of the heap. Their K does not
  change while parked, so they come back once a request's threshold admits them, and a persistent
  outlier costs nothing per request.

Values are int64 and compared with the float fence, so callers pass only values below 2**53 in
magnitude (exact in float64); `decode_alloc` keeps larger ones on its pure-Python path.
"""

from __future__ import annotations

import numpy as np
from sbs.scheduler.core.compiled import jit

__all__ = ["place", "place_sorted"]


@jit
def _sift_down(heap: np.ndarray, size: int, at: int) -> None:
    x = heap[at]
    while True:
        child = 2 * at + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= x:
            break
        heap[at] = heap[child]
        at = child
    heap[at] = x


@jit
def _push(heap: np.ndarray, size: int, x: int) -> None:
    at = size
    while at > 0:
        parent = (at - 1) // 2
        if heap[parent] <= x:
            break
        heap[at] = heap[parent]
        at = parent
    heap[at] = x


@jit
def _bits(x: int) -> int:
    """`int.bit_length` of x >= 0."""
    n = 0
    while x > 0:
        x >>= 1
        n += 1
    return n


@jit
def _count_le(ks: np.ndarray, n: int, limit: float) -> int:
    """How many of the ascending ks[:n] are <= limit (a branch-free bisection: the comparisons' outcomes
    cannot be predicted, so none of them is a jump)."""
    if n == 0 or ks[0] > limit:
        return 0
    lo = 0  # ks[lo] <= limit; the answer is in (lo, lo + size]
    size = n
    while size > 1:
        half = size // 2
        lo += half * (ks[lo + half] <= limit)
        size -= half
    return lo + 1


@jit
def _quartile(ks: np.ndarray, n: int, p: float) -> float:
    h = (n - 1) * p
    lo = int(h)
    x = ks[lo]
    if lo + 1 < n:
        return x + (h - lo) * (ks[lo + 1] - x)
    return float(x)


@jit
def place(
    order: np.ndarray,
    kv_tokens: np.ndarray,
    batch: np.ndarray,
    kv: np.ndarray,
    max_running: np.ndarray,
    cap: int,
    iqr_k: float,
    min_candidates: int,
) -> tuple[np.ndarray, int]:
    """Per request (input order) the index of its rank (-1: none has room), and the masked-candidate count
    (-1, with no request placed, when (B, K, pos) cannot be packed into 62 bits: place in Python).
    Requests are placed in `order` (request indices, largest `kv_tokens` first). Ranks are the live ones
    in tie-break order; `max_running` 0 is no limit. The inputs are not modified."""
    needs = kv_tokens[order]
    n_items = needs.shape[0]
    m = batch.shape[0]
    chosen = np.full(n_items, -1, np.int64)
    k = kv.copy()
    ks = np.sort(k)
    n_in = m  # ranks still in the round: ks[:n_in]
    # A rank is one integer, (B - min B, K - min K, pos) packed so that integer order is (B, K, pos)
    # order; a placed K never exceeds cap, B grows by at most one per request.
    bmin, kmin = batch.min(), ks[0]
    sk = _bits(m - 1)
    sb = sk + _bits(max(ks[m - 1], cap) - kmin)
    if sb + _bits(batch.max() - bmin + n_items) > 62:
        return chosen, -1  # too wide to pack: the caller places the round in Python
    heap = ((batch - bmin) << sb) + ((k - kmin) << sk) + np.arange(m)
    heap.sort()  # ascending: also a heap
    size = m
    pmask = (1 << sk) - 1
    full = np.where(max_running > 0, max_running - bmin, 1 << 62)  # the packed B at which a rank is full
    parked = np.empty(m, np.int64)
    n_parked = 0
    parked_min = np.inf
    masked = 0
    for i in range(n_items):
        need = needs[i]
        lim = cap - need
        n = n_in if n_in and ks[n_in - 1] <= lim else _count_le(ks, n_in, float(lim))
        if n == 0:
            continue
        thr = float(lim)
        if n >= min_candidates:
            q1 = _quartile(ks, n, 0.25)
            q3 = _quartile(ks, n, 0.75)
            fence = q3 + iqr_k * (q3 - q1)
            kept = n if ks[n - 1] <= fence else _count_le(ks, n, fence)
            if 0 < kept < n:
                masked += n - kept
                thr = min(thr, fence)
        if n_parked and parked_min <= thr:
            keep = 0
            parked_min = np.inf
            for j in range(n_parked):
                e = parked[j]
                kp = k[e & pmask]
                if kp <= thr:
                    _push(heap, size, e)
                    size += 1
                else:
                    parked[keep] = e
                    keep += 1
                    parked_min = min(parked_min, float(kp))
            n_parked = keep
        # Some candidate (K <= thr) is in the heap: every one parked has just come back.
        while k[heap[0] & pmask] > thr:
            e = heap[0]
            parked[n_parked] = e
            n_parked += 1
            parked_min = min(parked_min, float(k[e & pmask]))
            size -= 1
            heap[0] = heap[size]
            _sift_down(heap, size, 0)
        e = heap[0] + (1 << sb) + (need << sk)
        p = e & pmask
        chosen[order[i]] = p
        old = k[p]
        at = _count_le(ks, n_in, float(old)) - 1  # the last copy of `old`
        k[p] = old + need
        if (e >> sb) >= full[p]:  # max_running reached: the rank leaves the round
            for j in range(at, n_in - 1):
                ks[j] = ks[j + 1]
            n_in -= 1
            size -= 1
            heap[0] = heap[size]
        else:  # move `old` up to its new value's place
            new = k[p]
            while at + 1 < n_in and ks[at + 1] < new:
                ks[at] = ks[at + 1]
                at += 1
            ks[at] = new
            heap[0] = e
        _sift_down(heap, size, 0)
    return chosen, masked


@jit
def place_sorted(
    rids: np.ndarray,
    kv_tokens: np.ndarray,
    batch: np.ndarray,
    kv: np.ndarray,
    max_running: np.ndarray,
    cap: int,
    iqr_k: float,
    min_candidates: int,
) -> tuple[np.ndarray, int]:
    """`place` with every rank live, in its order `np.lexsort((rids, -kv_tokens))`: largest KV first,
    ties by rid, then by index (two stable sorts, the minor key first). The masked count is -2, with no
    request placed, where `place` does not apply as it stands: a request's KV negative or from 2**53, a
    rank's K beyond +-2**53, or a rank at its `max_running` (0: no limit); -1 as from `place`."""
    exact = 1 << 53
    none = np.full(rids.shape[0], -1, np.int64)
    if kv_tokens.shape[0] and (kv_tokens.min() < 0 or kv_tokens.max() >= exact):
        return none, -2
    if kv.shape[0] and (kv.min() <= -exact or kv.max() >= exact):
        return none, -2
    if max_running.shape[0] and max_running.any():
        low = max_running.min()
        if low <= 0 or batch.max() >= low:
            return none, -2
    return place(
        _by_kv_then_rid(rids, kv_tokens), kv_tokens, batch, kv, max_running, cap, iqr_k, min_candidates
    )


@jit
def _by_kv_then_rid(rids: np.ndarray, kv_tokens: np.ndarray) -> np.ndarray:
    """`np.lexsort((rids, -kv_tokens))`, for `kv_tokens` >= 0: one sort of (KV descending, rid, index)
    packed into one integer where the rids are >= 0 and it fits in 62 bits, else two stable sorts (the
    minor key first)."""
    n = rids.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    rmin = rids.min()
    top = kv_tokens.max()
    sr = _bits(n - 1)
    sk = sr + _bits(rids.max() - rmin)  # used only where rmin >= 0, so the difference cannot wrap
    if rmin >= 0 and sk + _bits(top) <= 62:
        keys = ((top - kv_tokens) << sk) + ((rids - rmin) << sr) + np.arange(n)
        return np.argsort(keys)
    by_rid = np.argsort(rids, kind="mergesort")
    return by_rid[np.argsort(-kv_tokens[by_rid], kind="mergesort")]
