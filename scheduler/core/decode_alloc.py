"""IQR-informed lexicographic decode placement (the paper's Algorithm 3) for one admission round.

`assign_decode_lists` places the round's requests largest KV first (ties: lower rid). For each request the
candidates are the available ranks with KV room for it (`K_i + kv <= capacity`) and a free running slot
(`max_running == 0 or B_i < max_running`). With at least `min_candidates` candidates, ranks whose KV
load is a Tukey outlier, `K_i > Q3 + iqr_k * (Q3 - Q1)` over the candidates' K, are masked (unless that
would mask them all). The request goes to `argmin (B_i, K_i, ref)`: batch size first, so batch balance
(which gates every EP decode step) is never traded for KV balance except against outliers. The chosen
rank is updated virtually (`B += 1`, `K += kv`) so later requests of the round see it.

Quartiles use numpy's default 'linear' method (Hyndman-Fan type 7): for n sorted values x and
probability p, h = (n - 1) p and Q = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]).

It takes plain per-rank and per-request lists (no objects), the shape the scheduler keeps its
counters in.

Complexity: the candidates' K are kept in a sorted list per distinct capacity, so with one capacity
(the usual case) the candidates are a prefix of it, found by bisection, and both quartiles are O(1)
lookups. Ranks sit in a heap keyed by (B, K, ref), packed into one integer per rank. With one capacity,
a rank that is ineligible for a request (masked, or too full) is parked, and returns to the heap only
once some later request's threshold admits it, so a persistent outlier costs O(1) per request. Mixed
capacities merge the groups' candidate prefixes per request and set ineligible ranks aside per request.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush, heapreplace
from itertools import chain, repeat
from operator import add, mul

from sbs.scheduler.core.types import RankRef

__all__ = ["DecodePlan", "assign_decode_lists"]


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
    m = len(refs)
    n_items = len(rids)
    if not len(batch) == len(kv) == len(capacity) == len(max_running) == len(available) == m:
        raise ValueError(
            f"rank lists differ in length: batch {len(batch)}, kv {len(kv)}, capacity {len(capacity)}, "
            f"max_running {len(max_running)}, available {len(available)}, refs {m}"
        )
    if len(kv_tokens) != n_items:
        raise ValueError(f"{n_items} rids but {len(kv_tokens)} kv_tokens")
    if n_items and min(kv_tokens) < 0:
        i = next(i for i, k in enumerate(kv_tokens) if k < 0)
        raise ValueError(f"decode item {rids[i]}: kv_tokens must be >= 0, got {kv_tokens[i]}")

    order = sorted(range(n_items), key=rids.__getitem__)
    order.sort(key=kv_tokens.__getitem__, reverse=True)  # stable, so ties stay in rid order
    # Live ranks (available, with a free running slot) in tie-break order: by (ref, index).
    every = all(available) and (
        not any(max_running) or (min(max_running) > 0 and max(batch) < min(max_running))
    )
    if every and refs_sorted:
        lb, lk, lc, lm, ref_of = batch, kv, capacity, max_running, refs
    else:
        if refs_sorted:
            by_ref: Sequence[int] = range(m)
        else:
            keys = [(r.instance, r.rank) for r in refs]
            by_ref = sorted(range(m), key=keys.__getitem__)
        live = [j for j in by_ref if available[j] and (max_running[j] <= 0 or batch[j] < max_running[j])]
        lb = [batch[j] for j in live]
        lk = [kv[j] for j in live]
        lc = [capacity[j] for j in live]
        lm = [max_running[j] for j in live]
        ref_of = [refs[j] for j in live]
    n_live = len(lb)
    if not n_live:
        return DecodePlan((), tuple(rids[i] for i in order), 0)

    # A rank's heap key packs (B - bmin, K - kmin, pos) into one integer whose order is (B, K, ref)
    # order; pos indexes the live lists. B and K only grow, and a placed K never exceeds its
    # capacity, so the K field never overflows into the B field.
    bmin = min(lb)
    kmin = min(lk)
    cmin = min(lc)
    sk = max(n_live - 1, 1).bit_length()
    sb = sk + max(max(max(lk), max(lc)) - kmin, 1).bit_length()
    pmask = (1 << sk) - 1
    kmask = (1 << (sb - sk)) - 1
    binc = 1 << sb
    base = (bmin << sb) + (kmin << sk)
    heap = list(
        map(
            add,
            map(add, map(mul, lb, repeat(binc)), map(mul, lk, repeat(1 << sk))),
            range(-base, n_live - base),
        )
    )
    heapify(heap)
    # B - bmin at which a rank is full (max_running), or a bound it never reaches.
    never = max(lb) + n_items + 1
    m0 = lm[0]
    if min(lm) == max(lm):
        full_at = [(m0 if m0 > 0 else never) - bmin] * n_live
    else:
        full_at = [(r if r > 0 else never) - bmin for r in lm]

    out_rids = [rids[i] for i in order]
    needs = [kv_tokens[i] for i in order]
    assignments: list[tuple[int, RankRef]] = []
    unplaced: list[int] = []
    append = assignments.append
    masked = 0
    inf = float("inf")
    if cmin == max(lc):
        # One capacity: the candidates (K <= cap - need) are a prefix of the sorted K. A rank that a
        # request cannot use is parked and comes back once a request's threshold admits it.
        cap = cmin
        ks = sorted(lk)
        last_n = -1
        lo1 = lo3 = 0
        fr1 = fr3 = 0.0
        parked: list[int] = []
        parked_k = inf  # the smallest K among the parked ranks
        for rid, need in zip(out_rids, needs, strict=True):
            lim = cap - need
            n = bisect_right(ks, lim)
            if not n:
                unplaced.append(rid)
                continue
            thr = lim
            if n >= min_candidates:
                if n != last_n:
                    last_n = n
                    h = (n - 1) * 0.25
                    lo1 = int(h)
                    fr1 = h - lo1
                    h = (n - 1) * 0.75
                    lo3 = int(h)
                    fr3 = h - lo3
                x = ks[lo1]
                q1 = x + fr1 * (ks[lo1 + 1] - x) if lo1 + 1 < n else x
                x = ks[lo3]
                q3 = x + fr3 * (ks[lo3 + 1] - x) if lo3 + 1 < n else x
                f = q3 + iqr_k * (q3 - q1)
                kept = bisect_right(ks, f, 0, n)
                if 0 < kept < n:
                    masked += n - kept
                    if f < thr:
                        thr = f
            if parked_k <= thr:
                back = [e for e in parked if ((e >> sk) & kmask) + kmin <= thr]
                parked = [e for e in parked if ((e >> sk) & kmask) + kmin > thr]
                for e in back:
                    heappush(heap, e)
                parked_k = min((((e >> sk) & kmask) + kmin for e in parked), default=inf)
            # argmin (B, K, ref) over the eligible ranks (K <= thr): the top, once ineligible ones are parked.
            e = heap[0]
            k = ((e >> sk) & kmask) + kmin
            while k > thr:
                parked.append(heappop(heap))
                if k < parked_k:
                    parked_k = k
                e = heap[0]
                k = ((e >> sk) & kmask) + kmin
            p = e & pmask
            e += binc + (need << sk)
            del ks[bisect_left(ks, k)]
            if (e >> sb) < full_at[p]:
                insort(ks, k + need)
                heapreplace(heap, e)
            else:  # max_running reached: the rank leaves the round
                heappop(heap)
            append((rid, ref_of[p]))
        return DecodePlan(tuple(assignments), tuple(unplaced), masked)

    # Mixed capacities: sorted K per capacity; ranks a request cannot use are set aside for it only.
    groups: dict[int, list[int]] = {}
    for c, k in zip(lc, lk, strict=True):
        groups.setdefault(c, []).append(k)
    for g in groups.values():
        g.sort()
    for rid, need in zip(out_rids, needs, strict=True):
        n = 0
        for cap, g in groups.items():
            n += bisect_right(g, cap - need)
        if not n:
            unplaced.append(rid)
            continue
        fence = inf
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
        append((rid, ref_of[p]))
    return DecodePlan(tuple(assignments), tuple(unplaced), masked)
