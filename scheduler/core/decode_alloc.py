"""IQR-informed lexicographic decode placement (the paper's Algorithm 3) for one admission round.

`assign_decode` places the round's requests largest KV first (ties: lower rid). For each request the
candidates are the available ranks with KV room for it (`K_i + kv <= capacity`) and a free running slot
(`max_running == 0 or B_i < max_running`). With at least `min_candidates` candidates, ranks whose KV
load is a Tukey outlier, `K_i > Q3 + iqr_k * (Q3 - Q1)` over the candidates' K, are masked (unless that
would mask them all). The request goes to `argmin (B_i, K_i, ref)`: batch size first, so batch balance
(which gates every EP decode step) is never traded for KV balance except against outliers. The chosen
rank is updated virtually (`B += 1`, `K += kv`) so later requests of the round see it.

Quartiles use numpy's default 'linear' method (Hyndman-Fan type 7): for n sorted values x and
probability p, h = (n - 1) p and Q = x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h]).

Complexity: the candidates' K are kept in a sorted list per distinct capacity, so with one capacity
(the usual case) the candidates are a prefix of it, found by bisection, and both quartiles are O(1)
lookups. Ranks sit in a heap keyed by (B, K, ref); ranks masked or too full for a request are set
aside only for that request. Mixed capacities merge the groups' candidate prefixes per request.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush, heapreplace
from itertools import chain
from operator import attrgetter

from sbs.scheduler.core.types import RankRef

__all__ = ["DecodeItem", "DecodePlan", "DecodeRankLoad", "assign_decode"]


@dataclass(frozen=True, slots=True)
class DecodeItem:
    """One request to place on a decode rank."""

    rid: int
    kv_tokens: int
    """KV the request will hold on its decode rank (prompt + expected share of output)."""

    def __post_init__(self) -> None:
        if self.kv_tokens < 0:
            raise ValueError(f"decode item {self.rid}: kv_tokens must be >= 0, got {self.kv_tokens}")


@dataclass(frozen=True, slots=True)
class DecodeRankLoad:
    """The scheduler's view of one decode DP rank at the start of the round."""

    ref: RankRef
    batch: int
    """B_i: requests running + waiting/in transfer on the rank."""
    kv_tokens: int
    """K_i: KV tokens allocated on the rank."""
    kv_capacity_tokens: int
    max_running: int = 0
    """Cap on B_i; 0 = unlimited."""
    available: bool = True


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """The result of `assign_decode`."""

    assignments: tuple[tuple[int, RankRef], ...]
    """(rid, rank) in placement order."""
    unplaced: tuple[int, ...]
    """Rids for which no rank had room (KV capacity / max_running), in placement order."""
    masked_ranks: int
    """Candidate ranks excluded by the IQR fence, summed over the round's requests (for metrics)."""


_kv = attrgetter("kv_tokens")
_rid = attrgetter("rid")
_rank_fields = attrgetter("batch", "kv_tokens", "kv_capacity_tokens", "max_running", "available")
_ref_key = attrgetter("ref.instance", "ref.rank")


def assign_decode(
    items: Sequence[DecodeItem],
    ranks: Sequence[DecodeRankLoad],
    *,
    iqr_k: float = 1.5,
    min_candidates: int = 4,
) -> DecodePlan:
    """Place one admission round of decode requests (see module docstring)."""
    m = len(ranks)
    if m:
        bs, ks_, caps, maxr, avail = zip(*map(_rank_fields, ranks), strict=True)
    else:
        bs = ks_ = caps = maxr = avail = ()
    batch = list(bs)
    kv = list(ks_)
    refkey = list(map(_ref_key, ranks))
    live = [j for j in range(m) if avail[j] and (maxr[j] <= 0 or batch[j] < maxr[j])]
    # Sorted K per distinct capacity, over the ranks that can still take requests.
    groups: dict[int, list[int]] = {}
    for j in live:
        groups.setdefault(caps[j], []).append(kv[j])
    for g in groups.values():
        g.sort()
    single = len(groups) == 1
    cap0, ks = next(iter(groups.items())) if single else (0, [])
    heap = [(batch[j], kv[j], refkey[j], j) for j in live]
    heapify(heap)

    order = sorted(items, key=_rid)
    order.sort(key=_kv, reverse=True)  # stable, so ties stay in rid order
    assignments: list[tuple[int, RankRef]] = []
    unplaced: list[int] = []
    masked = 0
    q1p = 0.25
    q3p = 0.75
    for it in order:
        need = it.kv_tokens
        # Candidates: K <= capacity - need. Count them, and find the (sorted) candidates' K.
        if single:
            n = bisect_right(ks, cap0 - need)
            cand = ks
        else:
            n = 0
            for cap, g in groups.items():
                n += bisect_right(g, cap - need)
            cand = ks  # unused unless the mask applies; then the groups' candidate prefixes are merged
        if n == 0:
            unplaced.append(it.rid)
            continue
        fence = float("inf")
        if n >= min_candidates:
            if not single:
                prefixes = (g[: bisect_right(g, cap - need)] for cap, g in groups.items())
                cand = sorted(chain.from_iterable(prefixes))
            h = (n - 1) * q1p
            lo = int(h)
            x = cand[lo]
            q1 = x + (h - lo) * (cand[lo + 1] - x) if lo + 1 < n else x
            h = (n - 1) * q3p
            lo = int(h)
            x = cand[lo]
            q3 = x + (h - lo) * (cand[lo + 1] - x) if lo + 1 < n else x
            f = q3 + iqr_k * (q3 - q1)
            kept = bisect_right(cand, f, 0, n)
            if 0 < kept < n:
                masked += n - kept
                fence = f
        # argmin (B, K, ref) over unmasked candidates: pop ranks masked or too full for this request.
        ent = heap[0]
        j = ent[3]
        stash = None
        if ent[1] > fence or ent[1] + need > caps[j]:
            stash = [heappop(heap)]
            while True:
                ent = heap[0]
                j = ent[3]
                if ent[1] <= fence and ent[1] + need <= caps[j]:
                    break
                stash.append(heappop(heap))
        b = ent[0] + 1
        k_old = ent[1]
        k_new = k_old + need
        batch[j] = b
        kv[j] = k_new
        g = ks if single else groups[caps[j]]
        del g[bisect_left(g, k_old)]
        if maxr[j] <= 0 or b < maxr[j]:
            insort(g, k_new)
            heapreplace(heap, (b, k_new, ent[2], j))
        else:
            heappop(heap)
        if stash:
            for ent in stash:
                heappush(heap, ent)
        assignments.append((it.rid, ranks[j].ref))
    return DecodePlan(tuple(assignments), tuple(unplaced), masked)
