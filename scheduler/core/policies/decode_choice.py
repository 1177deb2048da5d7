"""The decode rank of each request of one admission round by SBS's IQR-masked lexicographic rule
(`decode_alloc`), over the scheduler's decode counters: shared by `sbs` (one round per release) and
the immediate policies (`decode_rank`: one request per round, unless a picker is configured)."""

from __future__ import annotations

import numpy as np
from sbs.scheduler.core.decode_alloc import assign_decode_ranks, assign_decode_uniform
from sbs.scheduler.core.policies.base import RankPicker
from sbs.scheduler.core.state import ClusterState
from sbs.settings.scheduling import DecodeSettings


def decode_rank(state: ClusterState, d: DecodeSettings, picker: RankPicker | None, rid: int, kv: int) -> int:
    """One immediately dispatched request's decode rank (flat index): by `picker`, or without one by
    the lexicographic rule as a round of one."""
    if picker is None:
        return lexicographic_ranks(state, d, [rid], [kv])[0]
    return picker.pick(state.decode_live(), state.decode.tokens)


def lexicographic_ranks(state: ClusterState, d: DecodeSettings, rids: list[int], kvs: list[int]) -> list[int]:
    """Each request's decode rank (flat index); when decode is full, the emptiest healthy rank's queue,
    as SGLang does."""
    return lexicographic_ranks_array(state, d, rids, kvs).tolist()


def lexicographic_ranks_array(
    state: ClusterState, d: DecodeSettings, rids: list[int], kvs: list[int], kv_a: np.ndarray | None = None
) -> np.ndarray:
    """`lexicographic_ranks` as an int64 array (a release's columns stay arrays); `kv_a`: `kvs` as int64
    already."""
    counters = state.decode
    cap, running = state.decode_uniform_cap, state.decode_running_a
    fast = None
    if cap is not None and running is not None and all(state.decode_healthy):
        batch, kv = counters.arrays() or (counters.count, counters.tokens)
        fast = assign_decode_uniform(
            rids,
            kvs if kv_a is None else kv_a,
            batch,
            kv,
            cap,
            running,
            iqr_k=d.iqr_k,
            min_candidates=d.min_candidates,
            as_array=True,
        )
        if fast is not None:
            chosen, masked = fast
            state.stats.masked_ranks += masked
            if not len(chosen) or chosen.min() >= 0:
                return chosen
            fast = chosen.tolist(), 0
    if fast is None:
        fast = assign_decode_ranks(
            rids,
            kvs,
            counters.count,
            counters.tokens,
            state.decode_cap,
            state.decode_max_running,
            state.decode_available(),
            iqr_k=d.iqr_k,
            min_candidates=d.min_candidates,
        )
    flat, masked = fast
    state.stats.masked_ranks += masked
    if min(flat) < 0:
        tokens = list(counters.tokens)
        for f, kv in zip(flat, kvs, strict=True):
            if f >= 0:
                tokens[f] += kv
        live = state.decode_live()
        for i in sorted((i for i, f in enumerate(flat) if f < 0), key=lambda i: (-kvs[i], rids[i])):
            f = min(live, key=lambda j: (tokens[j], j))
            tokens[f] += kvs[i]
            flat[i] = f
    return np.array(flat, np.int64)
