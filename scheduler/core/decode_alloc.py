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

Complexity: a rank is one integer, (B, K, ref) packed so that integer order is (B, K, ref) order. With
one capacity (the usual case) the candidates are a prefix of the sorted K. While every rank is a
candidate, `iqr_fence.FenceWindows` keeps the fence (and so the masked count) exact from placement to
placement at O(1) for a placement that leaves it unchanged, and the ranks are walked level by level
(the lowest B's ranks in (K, ref) order, each lifted to the next level once placed): a request costs a
few comparisons, a level one sort of the ranks it lifts. Otherwise the sorted K is kept exact and the
fence recomputed per request by bisection. A rank that is ineligible for a request (masked, or too
full) is parked, and returns only once some later request's threshold admits it, so a persistent
outlier costs O(1) per request. Mixed capacities keep ranks in a heap, merge the groups' candidate
prefixes per request and set ineligible ranks aside per request.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heappop, heappush, heapreplace
from itertools import chain, compress, islice

import numpy as np
from sbs.scheduler.core.iqr_fence import INF, FenceWindows, fence_of, quartile_positions
from sbs.scheduler.core.types import RankRef

__all__ = ["DecodePlan", "assign_decode_lists", "assign_decode_ranks"]

_WINDOWED = 16
"""Fewest ranks for which `FenceWindows` keeps the fence (with fewer, it is recomputed per request)."""


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
    order, chosen, masked = _place(
        rids, kv_tokens, batch, kv, capacity, max_running, available, by_ref, iqr_k, min_candidates
    )
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
    order, chosen, masked = _place(
        rids, kv_tokens, batch, kv, capacity, max_running, available, None, iqr_k, min_candidates
    )
    out = [-1] * len(rids)
    for i, p in zip(order, chosen, strict=True):
        out[i] = p
    return out, masked


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
) -> tuple[list[int], list[int], int]:
    """Request indices in placement order, each one's rank index (-1: unplaced), and the masked count.
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
    if n_items and min(kv_tokens) < 0:
        i = next(i for i, k in enumerate(kv_tokens) if k < 0)
        raise ValueError(f"decode item {rids[i]}: kv_tokens must be >= 0, got {kv_tokens[i]}")

    order = sorted(range(n_items), key=rids.__getitem__)
    order.sort(key=kv_tokens.__getitem__, reverse=True)  # stable, so ties stay in rid order
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
        return order, [-1] * n_items, 0
    needs = [kv_tokens[i] for i in order]
    place = _one_capacity if lc.count(lc[0]) == len(lc) else _mixed_capacities
    chosen, masked = place(needs, lb, lk, lc, lm, iqr_k, min_candidates)
    if not isinstance(live, range):
        chosen = [live[p] if p >= 0 else -1 for p in chosen]
    return order, chosen, masked


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
    dtype: type
    """A numpy dtype that holds the keys and the requests' key increments."""
    bmin: int
    bmax: int
    k_array: np.ndarray | None
    """K as int64 (None where a value does not fit)."""

    def sorted_k(self, lk: Sequence[int]) -> list[int]:
        """`sorted(lk)`, `lk` the K the keys were packed from."""
        return sorted(lk) if self.k_array is None else np.sort(self.k_array).tolist()


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
    return _Packed(keys.tolist(), sk, sb, dtype, bmin, bmax, ak if ak.dtype == np.int64 else None)


def _full_at(packed: _Packed, lm: Sequence[int], n_items: int) -> list[int]:
    """Per rank the B - min(B) at which it is full (max_running), or a bound it never reaches."""
    bmin = packed.bmin
    never = packed.bmax + n_items + 1
    if lm.count(lm[0]) == len(lm):
        return [(lm[0] if lm[0] > 0 else never) - bmin] * len(lm)
    return [(r if r > 0 else never) - bmin for r in lm]


def _one_capacity(
    needs: Sequence[int],
    lb: Sequence[int],
    lk: Sequence[int],
    lc: Sequence[int],
    lm: Sequence[int],
    iqr_k: float,
    min_candidates: int,
) -> tuple[list[int], int]:
    """One capacity: per request (placement order) its live rank, -1 if none has room; masked count.

    The candidates (K <= cap - need) are a prefix of the sorted K. While every rank is a candidate
    (and there are at least `_WINDOWED`), `FenceWindows` keeps the fence and the ranks are taken level
    by level: the ranks of the lowest B in (K, pos) order, each placement lifting its rank to the next
    level. Otherwise the sorted K is kept exact and the fence recomputed per request. A rank that a
    request cannot use is parked and comes back once a request's threshold admits it.
    """
    n_items = len(needs)
    cap = lc[0]
    packed = _packed(lb, lk, cap, needs[0] if needs else 0)  # needs: largest first
    rest, sk, sb, dtype = packed.keys, packed.sk, packed.sb, packed.dtype
    ks: list[int] | None = packed.sorted_k(lk)  # the sorted K, kept exact while there are no windows
    pmask = (1 << sk) - 1
    incs = ((np.fromiter(needs, dtype, n_items) << sk) + (1 << sb)).tolist()  # a placement's key increment
    full_at = _full_at(packed, lm, n_items)
    gone = 0  # ranks that left the round (max_running reached)
    efull = (min(full_at) - 1) << sb  # a rank whose key is below this does not fill when placed
    kpos: list[float] = list(lk)  # K per rank; inf once it left the round
    kmax = ks[-1]
    win: FenceWindows | None = None
    # The ranks by level: cur[c:] those of the current level not taken yet, `promo` those lifted from
    # it to the next, rest[r:] those above that no placement has touched; each list ascending.
    cur: list[int] = []
    c = r = 0
    promo: list[int] = []
    parked: list[int] = []
    parked_k = INF  # the smallest K among the parked ranks
    chosen: list[int] = []
    append = chosen.append
    masked = 0
    i = 0
    while i < n_items:
        need = needs[i]
        lim = cap - need
        if win is not None and lim >= kmax:
            thr = win.thr
            masked += win.masked
        else:
            win = None
            if ks is None:
                ks = sorted([k for k in kpos if k != INF] if gone else kpos)  # type: ignore[misc]
            n = bisect_right(ks, lim)
            if not n:
                append(-1)
                i += 1
                continue
            kmax = ks[-1]
            thr = lim
            fence = INF
            kept = n
            if n >= min_candidates:
                lo1, fr1, lo3, fr3 = quartile_positions(n)
                v1, v3 = ks[lo1], ks[lo3]
                v2 = ks[lo1 + 1] if lo1 + 1 < n else v1
                v4 = ks[lo3 + 1] if lo3 + 1 < n else v3
                fence = fence_of(v1, v2, v3, v4, fr1, fr3, iqr_k)
                kept = bisect_right(ks, fence, 0, n)
                if 0 < kept < n:
                    masked += n - kept
                    thr = min(lim, fence)
            if n == len(ks) >= _WINDOWED:
                win = FenceWindows(ks, iqr_k, fence, kept, active=n >= min_candidates)
                ks = None
        if parked and parked_k <= thr:
            back = [e for e in parked if kpos[e & pmask] <= thr]
            parked = [e for e in parked if kpos[e & pmask] > thr]
            parked_k = min((kpos[e & pmask] for e in parked), default=INF)
            rest = sorted(cur[c:] + promo + rest[r:] + back)
            cur = promo = []
            c = r = 0
        # argmin (B, K, pos) over the eligible ranks (K <= thr): the current level's first, once the
        # ineligible ones are parked; when the level is done, the next one is the lifted ranks and the
        # untouched ones of their B (or, with none lifted, the lowest untouched B).
        while True:
            if c == len(cur):
                end = bisect_left(rest, (((promo[0] if promo else rest[r]) >> sb) + 1) << sb, r)
                cur = rest[r:end] + promo
                cur.sort()
                c = 0
                r = end
                promo = []
            e = cur[c]
            p = e & pmask
            k = kpos[p]
            c += 1
            if k <= thr:
                break
            parked.append(e)
            parked_k = min(parked_k, k)
        append(p)
        e += incs[i]
        i += 1
        if (e >> sb) >= full_at[p]:  # max_running reached: the rank leaves the round
            kpos[p] = INF
            gone += 1
            if ks is not None:
                del ks[bisect_left(ks, k)]
            win = None
            continue
        promo.append(e)
        k2 = k + need
        kpos[p] = k2
        kmax = max(kmax, k2)
        if ks is not None:
            del ks[bisect_left(ks, k)]
            insort(ks, k2)
            continue
        assert win is not None
        l1, h1, l2, h2, l3, h3 = win.touch
        if (l1 if k <= h1 else l2 if k <= h2 else l3 if k <= h3 else INF) <= k2 and not win.move(k, k2):
            win = None
            continue
        thr = win.thr
        if parked and parked_k <= thr:  # the move raised the fence over a parked rank: next step unparks
            continue
        # While the fence holds, the next requests take the current level's ranks in turn: the steps
        # above without the checks that cannot fail, until one of them needs the general step.
        l1, h1, l2, h2, l3, h3 = win.touch
        room = cap - kmax
        start = len(chosen)
        moved = False
        for e, need, inc in zip(
            islice(cur, c, None), islice(needs, i, None), islice(incs, i, None), strict=False
        ):
            if e >= efull or need > room:
                break
            p = e & pmask
            k = kpos[p]
            if k > thr:
                break
            promo.append(e + inc)
            append(p)
            k2 = k + need
            kpos[p] = k2
            if k2 > kmax:
                kmax = k2
                room = cap - k2
            if (l1 if k <= h1 else l2 if k <= h2 else l3 if k <= h3 else INF) <= k2:
                moved = True
                break
        done = len(chosen) - start
        c += done
        i += done
        masked += done * win.masked
        if moved and not win.move(k, k2):
            win = None
    return chosen, masked


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
