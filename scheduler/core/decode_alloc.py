"""IQR-informed lexicographic decode placement (the paper's Algorithm 3) for one admission round.

`assign_decode_lists` places the round's requests largest KV first (ties: lower rid). For each request the
candidates are the available ranks with KV room for it (`K_i + kv <= capacity`) and a free running slot
(`max_running == 0 or B_i < max_running`). With at least `min_candidates` candidates, ranks whose KV
load is a Tukey outlier, `K_i > Q3 + iqr_k * (Q3 - Q1)` over the candidates' K, are masked (unless that
would mask them all). The request goes to `argmin (B_i, K_i, ref)`: batch size first, so batch balance
(which gates every EP decode step) is never traded for KV balance except against outliers. The chosen
rank is updated virtually (`B += 1`, `K += kv`) so later requests of the round see it.
`assign_decode_ranks` is the same placement in the scheduler's shape: per request, its rank's index.

Quartiles use numpy's default 'linear' method (Hyndman-Fan type 7): for n sorted values x and
probability p, h = (n - 1) p and Q = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]).

It takes plain per-rank and per-request lists (no objects), the shape the scheduler keeps its
counters in.

Complexity: with one capacity (the usual case) the round runs compiled (`decode_kernel`): the
candidates are a prefix of the sorted K, so a request's candidate count and quartiles are a bisection
and four reads; the ranks sit in a heap keyed by (B, K, ref), and a rank that is ineligible for a
request (masked, or too full) is parked until a later request's threshold admits it, so a persistent
outlier costs nothing per request. Mixed capacities, and values beyond 2**53, take the pure-Python
path: ranks in a heap of packed (B, K, ref) integers, the groups' candidate prefixes merged per
request, ineligible ranks set aside per request. Both make the same choices (tested).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heappop, heappush, heapreplace
from itertools import chain, compress

import numpy as np
from sbs.scheduler.core import decode_kernel
from sbs.scheduler.core.types import RankRef

__all__ = ["DecodePlan", "assign_decode_lists", "assign_decode_ranks", "assign_decode_uniform"]

_EXACT = 1 << 53
INF = float("inf")


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """The result of `assign_decode_lists`."""

    assignments: tuple[tuple[int, RankRef], ...]
    """(rid, rank) in placement order."""
    unplaced: tuple[int, ...]
    """Rids for which no rank had room (KV capacity / max_running), in placement order."""
    masked_ranks: int
    """Candidate ranks excluded by the IQR fence, summed over the round's requests (for metrics)."""


def assign_decode_lists(
    rids: Sequence[int],
    kv_tokens: Sequence[int],
    batch: Sequence[int],
    kv: Sequence[int],
    capacity: Sequence[int],
    max_running: Sequence[int],
    available: Sequence[bool],
    refs: Sequence[RankRef],
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
    refs_sorted: bool = False,
) -> DecodePlan:
    """Place one admission round (see module docstring): request i is (`rids[i]`, `kv_tokens[i]`), rank j is
    (`batch[j]`, `kv[j]`, `capacity[j]`, `max_running[j]`, `available[j]`, `refs[j]`).

    The inputs are not modified. `refs_sorted=True` promises that `refs` is in ascending order (as a
    flat rank list built instance by instance is), which skips sorting the ranks by ref.
    """
    if len(refs) != len(batch):
        raise ValueError(f"rank lists differ in length: batch {len(batch)}, refs {len(refs)}")
    by_ref = None
    if not refs_sorted:
        keys = [(r.instance, r.rank) for r in refs]
        by_ref = sorted(range(len(refs)), key=keys.__getitem__)
    by_input, masked = _place(
        rids, kv_tokens, batch, kv, capacity, max_running, available, by_ref, iqr_k, min_candidates
    )
    order = _placement_order(rids, kv_tokens)
    chosen = by_input[order].tolist()
    placed = [p >= 0 for p in chosen]
    assignments = zip(
        map(rids.__getitem__, compress(order, placed)),
        map(refs.__getitem__, compress(chosen, placed)),
        strict=True,
    )
    unplaced = (rids[i] for i, p in zip(order, chosen, strict=True) if p < 0)
    return DecodePlan(tuple(assignments), tuple(unplaced), masked)


def assign_decode_ranks(
    rids: Sequence[int],
    kv_tokens: Sequence[int],
    batch: Sequence[int],
    kv: Sequence[int],
    capacity: Sequence[int],
    max_running: Sequence[int],
    available: Sequence[bool],
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
) -> tuple[list[int], int]:
    """`assign_decode_lists` with the rank lists in ref order: per request (input order) the index of its
    rank, -1 if unplaced; and the masked-candidate count."""
    chosen, masked = _place(
        rids, kv_tokens, batch, kv, capacity, max_running, available, None, iqr_k, min_candidates
    )
    return chosen.tolist(), masked


def assign_decode_uniform(
    rids: Sequence[int],
    kv_tokens: Sequence[int] | np.ndarray,
    batch: Sequence[int] | np.ndarray,
    kv: Sequence[int] | np.ndarray,
    capacity: int,
    max_running: np.ndarray,
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
    as_array: bool = False,
) -> tuple[list[int] | np.ndarray, int] | None:
    """`assign_decode_ranks` where every rank is available and has KV capacity `capacity`, `max_running`
    its per-rank limits as int64: the same result where it takes the compiled path with every rank
    live (no rank at its running limit), else None (then call `assign_decode_ranks`). It skips the
    checks the caller's constant rank lists make (`ClusterState.decode_uniform_cap`). `kv_tokens`, `batch`
    and `kv` may be int64 arrays (not modified); `as_array`: the ranks come back as one."""
    n_items, m = len(rids), len(batch)
    if not n_items or not m or len(kv_tokens) != n_items or len(kv) != m or len(max_running) != m:
        return None
    if not -_EXACT < capacity < _EXACT:
        return None
    try:
        rid_a = np.fromiter(rids, np.int64, n_items)
        kv_a = kv_tokens if isinstance(kv_tokens, np.ndarray) else np.fromiter(kv_tokens, np.int64, n_items)
        batch_a = batch if isinstance(batch, np.ndarray) else np.fromiter(batch, np.int64, m)
        kv_ranks = kv if isinstance(kv, np.ndarray) else np.fromiter(kv, np.int64, m)
    except OverflowError:
        return None
    chosen, masked = decode_kernel.place_sorted(
        rid_a, kv_a, batch_a, kv_ranks, max_running, capacity, float(iqr_k), min_candidates
    )
    if masked < 0:  # outside the kernel's domain, or (B, K, pos) too wide to pack
        return None
    return (chosen if as_array else chosen.tolist()), masked


def _place(
    rids: Sequence[int],
    kv_tokens: Sequence[int],
    batch: Sequence[int],
    kv: Sequence[int],
    capacity: Sequence[int],
    max_running: Sequence[int],
    available: Sequence[bool],
    by_ref: Sequence[int] | None,
    iqr_k: float,
    min_candidates: int,
) -> tuple[np.ndarray, int]:
    """Per request (input order) its rank index (-1: unplaced), and the masked count.
    Ranks tie-break in `by_ref` order (None: list order)."""
    m = len(batch)
    n_items = len(rids)
    if not len(kv) == len(capacity) == len(max_running) == len(available) == m:
        raise ValueError(
            f"rank lists differ in length: batch {len(batch)}, kv {len(kv)}, capacity {len(capacity)}, "
            f"max_running {len(max_running)}, available {len(available)}"
        )
    if len(kv_tokens) != n_items:
        raise ValueError(f"{n_items} rids but {len(kv_tokens)} kv_tokens")
    try:
        rid_a, kv_a = np.fromiter(rids, np.int64, n_items), np.fromiter(kv_tokens, np.int64, n_items)
        low = int(kv_a.min()) if n_items else 0
    except OverflowError:  # ids or sizes beyond int64
        rid_a = kv_a = None
        low = min(kv_tokens, default=0)
    if low < 0:
        i = next(i for i, k in enumerate(kv_tokens) if k < 0)
        raise ValueError(f"decode item {rids[i]}: kv_tokens must be >= 0, got {kv_tokens[i]}")
    # Live ranks (available, with a free running slot) in tie-break order: by (ref, index).
    cap_lo = min(max_running, default=0)
    every = all(available) and ((cap_lo > 0 and max(batch) < cap_lo) or not any(max_running))
    live: Sequence[int] = range(m) if by_ref is None else by_ref
    if every and by_ref is None:
        lb, lk, lc, lm = batch, kv, capacity, max_running
    else:
        live = [j for j in live if available[j] and (max_running[j] <= 0 or batch[j] < max_running[j])]
        lb = [batch[j] for j in live]
        lk = [kv[j] for j in live]
        lc = [capacity[j] for j in live]
        lm = [max_running[j] for j in live]
    if not lb:
        return np.full(n_items, -1, np.int64), 0
    chosen: np.ndarray | None = None
    if rid_a is not None and kv_a is not None and lc.count(lc[0]) == len(lc):
        lk_a = _exact_int64(lk)
        if lk_a is not None and -_EXACT < lc[0] < _EXACT and (not n_items or kv_a.max() < _EXACT):
            chosen, masked = decode_kernel.place(
                np.lexsort((rid_a, -kv_a)),  # largest KV first, ties by rid then index (stable)
                kv_a,
                np.fromiter(lb, np.int64, len(lb)),
                lk_a,
                np.fromiter(lm, np.int64, len(lm)),
                lc[0],
                float(iqr_k),
                min_candidates,
            )
            if masked < 0:  # (B, K, pos) too wide to pack
                chosen = None
    if chosen is None:
        order = _placement_order(rids, kv_tokens)
        needs = [kv_tokens[i] for i in order]
        picks, masked = _mixed_capacities(needs, lb, lk, lc, lm, iqr_k, min_candidates)
        chosen = np.empty(n_items, np.int64)
        chosen[order] = picks
    if not isinstance(live, range):
        chosen = np.where(chosen >= 0, np.array(live, np.int64)[chosen], -1)
    return chosen, masked


def _placement_order(rids: Sequence[int], kv_tokens: Sequence[int]) -> list[int]:
    """Request indices largest KV first, ties by rid then index (as `decode_kernel.place` orders them)."""
    order = sorted(range(len(rids)), key=rids.__getitem__)
    order.sort(key=kv_tokens.__getitem__, reverse=True)  # stable, so ties stay in rid order
    return order


def _exact_int64(values: Sequence[int]) -> np.ndarray | None:
    """`values` as int64 if each lies within +-2**53 (exact in float64, `decode_kernel`'s domain)."""
    try:
        a = np.fromiter(values, np.int64, len(values))
    except OverflowError:
        return None
    return a if a.min() > -_EXACT and a.max() < _EXACT else None


@dataclass(frozen=True, slots=True)
class _Packed:
    """The result of `_packed`."""

    keys: list[int]
    """The ranks as one integer each, (B - min B, K - min K, pos) packed so that integer order is
    (B, K, pos) order, in ascending order (so also a heap)."""
    sk: int
    """The K field's shift."""
    sb: int
    """The B field's shift."""
    bmin: int
    bmax: int


def _packed(lb: Sequence[int], lk: Sequence[int], top_k: int, top_need: int) -> _Packed:
    """The ranks packed (`_Packed`). `top_k` bounds every K of the round (the largest capacity),
    `top_need` every request's KV; B and K only grow, and a placed K never exceeds its capacity, so the
    K field never overflows into the B field."""
    n = len(lb)
    try:  # the extremes by numpy (a fraction of Python's min and max over long lists)
        ab, ak = np.fromiter(lb, np.int64, n), np.fromiter(lk, np.int64, n)
        kmin, kmax, bmin, bmax = int(ak.min()), int(ak.max()), int(ab.min()), int(ab.max())
    except OverflowError:
        ab = ak = None
        kmin, kmax, bmin, bmax = min(lk), max(lk), min(lb), max(lb)
    sk = max(n - 1, 1).bit_length()
    sb = sk + max(max(kmax, top_k) - kmin, 1).bit_length()
    top = max(kmax, -kmin, bmax, -bmin).bit_length()
    fits = top < 62 and (bmax - bmin).bit_length() + sb < 62 and top_need.bit_length() + sk < 62
    dtype = np.int64 if fits else object  # object: Python ints, for sizes int64 cannot hold
    if ab is None or ak is None or not fits:
        ab, ak = np.fromiter(lb, dtype, n), np.fromiter(lk, dtype, n)
    keys = ((ab - bmin) << sb) + ((ak - kmin) << sk)
    keys += np.arange(n)
    keys.sort()
    return _Packed(keys.tolist(), sk, sb, bmin, bmax)


def _full_at(packed: _Packed, lm: Sequence[int], n_items: int) -> list[int]:
    """Per rank the B - min(B) at which it is full (max_running), or a bound it never reaches."""
    bmin = packed.bmin
    never = packed.bmax + n_items + 1
    if lm.count(lm[0]) == len(lm):
        return [(lm[0] if lm[0] > 0 else never) - bmin] * len(lm)
    return [(r if r > 0 else never) - bmin for r in lm]


def _mixed_capacities(
    needs: Sequence[int],
    lb: Sequence[int],
    lk: Sequence[int],
    lc: Sequence[int],
    lm: Sequence[int],
    iqr_k: float,
    min_candidates: int,
) -> tuple[list[int], int]:
    """Mixed capacities: sorted K per capacity; ranks a request cannot use are set aside for it only."""
    packed = _packed(lb, lk, max(lc), needs[0] if needs else 0)  # needs: largest first
    heap, sk, sb = packed.keys, packed.sk, packed.sb
    full_at = _full_at(packed, lm, len(needs))
    pmask = (1 << sk) - 1
    kmask = (1 << (sb - sk)) - 1
    binc = 1 << sb
    kmin = min(lk)
    groups: dict[int, list[int]] = {}
    for c, k in zip(lc, lk, strict=True):
        groups.setdefault(c, []).append(k)
    for g in groups.values():
        g.sort()
    chosen: list[int] = []
    masked = 0
    for need in needs:
        n = 0
        for cap, g in groups.items():
            n += bisect_right(g, cap - need)
        if not n:
            chosen.append(-1)
            continue
        fence = INF
        if n >= min_candidates:
            cand = sorted(chain.from_iterable(g[: bisect_right(g, cap - need)] for cap, g in groups.items()))
            h = (n - 1) * 0.25
            lo = int(h)
            x = cand[lo]
            q1 = x + (h - lo) * (cand[lo + 1] - x) if lo + 1 < n else x
            h = (n - 1) * 0.75
            lo = int(h)
            x = cand[lo]
            q3 = x + (h - lo) * (cand[lo + 1] - x) if lo + 1 < n else x
            f = q3 + iqr_k * (q3 - q1)
            kept = bisect_right(cand, f, 0, n)
            if 0 < kept < n:
                masked += n - kept
                fence = f
        stash: list[int] = []
        while True:
            e = heap[0]
            k = ((e >> sk) & kmask) + kmin
            p = e & pmask
            if k <= fence and k + need <= lc[p]:
                break
            stash.append(heappop(heap))
        e += binc + (need << sk)
        g = groups[lc[p]]
        del g[bisect_left(g, k)]
        if (e >> sb) < full_at[p]:
            insort(g, k + need)
            heapreplace(heap, e)
        else:
            heappop(heap)
        for e in stash:
            heappush(heap, e)
        chosen.append(p)
    return chosen, masked
