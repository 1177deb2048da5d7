"""The one-capacity decode placement of `decode_alloc`, compiled (numba).

`place` is Algorithm 3 for a round in which every live rank has the same KV capacity (the usual case):
requests largest KV first, candidates the ranks with `K + need <= cap`, the IQR fence over the
candidates' K (numpy's 'linear' quartiles, with the same floating-point expression as the naive
reference), and `argmin (B, K, pos)` over the ranks the fence keeps. It keeps:

- `ks`, the sorted K of the ranks still in the round (a placement moves one value; a rank that reaches
  `max_running` leaves), so each request's candidate count and quartiles are a bisection and four reads;
- a binary heap of ranks keyed by (B, K, pos), whose top after parking is the choice;
- the parked ranks: those found ineligible (masked, or too full) at the top of the heap. Their K does not
  change while parked, so they come back once a request's threshold admits them, and a persistent
  outlier costs nothing per request.

Values are int64 and compared with the float fence, so callers pass only values below 2**53 in
magnitude (exact in float64); `decode_alloc` keeps larger ones on its pure-Python path.
"""

from __future__ import annotations

import numpy as np
from sbs.scheduler.core.compiled import jit

__all__ = ["place"]


@jit
def _before(b: np.ndarray, k: np.ndarray, x: int, y: int) -> bool:
    """Rank x sorts before rank y in (B, K, pos) order."""
    if b[x] != b[y]:
        return b[x] < b[y]
    if k[x] != k[y]:
        return k[x] < k[y]
    return x < y


@jit
def _sift_down(heap: np.ndarray, size: int, at: int, b: np.ndarray, k: np.ndarray) -> None:
    x = heap[at]
    while True:
        child = 2 * at + 1
        if child >= size:
            break
        if child + 1 < size and _before(b, k, heap[child + 1], heap[child]):
            child += 1
        if not _before(b, k, heap[child], x):
            break
        heap[at] = heap[child]
        at = child
    heap[at] = x


@jit
def _push(heap: np.ndarray, size: int, x: int, b: np.ndarray, k: np.ndarray) -> None:
    at = size
    while at > 0:
        parent = (at - 1) // 2
        if not _before(b, k, x, heap[parent]):
            break
        heap[at] = heap[parent]
        at = parent
    heap[at] = x


@jit
def _count_le(ks: np.ndarray, n: int, limit: float) -> int:
    """How many of the ascending ks[:n] are <= limit."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if ks[mid] <= limit:
            lo = mid + 1
        else:
            hi = mid
    return lo


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
    """Per request (input order) the index of its rank (-1: none has room), and the masked-candidate count.
    Requests are placed in `order` (request indices, largest `kv_tokens` first). Ranks are the live ones
    in tie-break order; `max_running` 0 is no limit. The inputs are not modified."""
    needs = kv_tokens[order]
    n_items = needs.shape[0]
    m = batch.shape[0]
    chosen = np.full(n_items, -1, np.int64)
    b = batch.copy()
    k = kv.copy()
    ks = np.sort(k)
    n_in = m  # ranks still in the round: ks[:n_in]
    heap = np.arange(m)
    size = m
    for at in range(m // 2 - 1, -1, -1):
        _sift_down(heap, size, at, b, k)
    parked = np.empty(m, np.int64)
    n_parked = 0
    parked_min = np.inf
    masked = 0
    for i in range(n_items):
        need = needs[i]
        lim = cap - need
        n = _count_le(ks, n_in, float(lim))
        if n == 0:
            continue
        thr = float(lim)
        if n >= min_candidates:
            q1 = _quartile(ks, n, 0.25)
            q3 = _quartile(ks, n, 0.75)
            fence = q3 + iqr_k * (q3 - q1)
            kept = _count_le(ks, n, fence)
            if 0 < kept < n:
                masked += n - kept
                thr = min(thr, fence)
        if n_parked and parked_min <= thr:
            keep = 0
            parked_min = np.inf
            for j in range(n_parked):
                p = parked[j]
                if k[p] <= thr:
                    _push(heap, size, p, b, k)
                    size += 1
                else:
                    parked[keep] = p
                    keep += 1
                    parked_min = min(parked_min, float(k[p]))
            n_parked = keep
        # Some candidate (K <= thr) is in the heap: every one parked has just come back.
        while k[heap[0]] > thr:
            p = heap[0]
            parked[n_parked] = p
            n_parked += 1
            parked_min = min(parked_min, float(k[p]))
            size -= 1
            heap[0] = heap[size]
            _sift_down(heap, size, 0, b, k)
        p = heap[0]
        chosen[order[i]] = p
        old = k[p]
        at = _count_le(ks, n_in, float(old)) - 1  # the last copy of `old`
        b[p] += 1
        k[p] = old + need
        if max_running[p] > 0 and b[p] >= max_running[p]:  # the rank leaves the round
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
        _sift_down(heap, size, 0, b, k)
    return chosen, masked
