"""SBS's timing and ordering rules (the staggered batcher), as pure functions of the instances' state.

The SBS policy (`sbs`) asks these *when* each prefill instance is next offered buffered work, *how
full* a release makes its step and *in what order* buffered requests go; what a release contains is
decided by `prefill_alloc.water_fill_lists` and `decode_alloc.assign_decode_lists`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.settings.scheduling import BatchingSettings


def release_time(st: PrefillInstanceState, *, lead_s: float, idle_from: float) -> float:
    """When `st` is next offered buffered work (inf: not before an event changes its state).

    - busy with one step: `lead_s` before that step's predicted end, so the next batch is in the
      engine when it frees and no request waits inside it;
    - idle: at `idle_from` (the past under the low-load bypass: at once);
    - a step already queued ahead, or unavailable: inf.
    A deferral (everything buffered waits for another instance's cache) pushes it back.
    """
    if not st.available:
        return math.inf
    if not st.planned:
        start = max(st.busy_until_s, idle_from)
    elif len(st.planned) == 1:
        start = st.busy_until_s - lead_s
    else:
        return math.inf
    return max(start, st.deferred_until_s)


def fill_level(chunk: int, *, head_tokens: int, committed: Sequence[int], buffered_tokens: int) -> int:
    """Straggler-aware level of one step, in tokens per rank (at most `chunk`).

    A lockstep step lasts as long as its fullest rank, so its level is what it must carry anyway: the
    head of the release order, the chunks committed by prompts in progress, or the buffered work
    spread over the ranks when there is much of it. Ranks are filled up to that level; a request above
    it waits for a step whose level it sets.
    """
    spread = -(-buffered_tokens // max(len(committed), 1))
    return min(chunk, max(head_tokens, max(committed, default=0), spread))


def priority_key(
    arrival_s: float, prompt_tokens: int, model: PrefillCapacityModel, b: BatchingSettings
) -> float:
    """Release order: arrival + `size_priority` × predicted prefill time, the addition at most
    `size_priority_max_s` (short prompts pass long ones in a burst; a long one never starves)."""
    if not b.size_priority:
        return arrival_s
    n = prompt_tokens
    delay = b.size_priority * (model.per_token_s * n + model.per_pair_s * n * n)
    return arrival_s + min(delay, b.size_priority_max_s)


def hold_s(instances: Sequence[PrefillInstanceState], b: BatchingSettings) -> float:
    """The hold guard never fires merely because steps are long: at least two measured steps."""
    return max(b.max_hold_s, 2.0 * max((st.step_ewma_s for st in instances), default=0.0))


def interval_s(instances: Sequence[PrefillInstanceState], b: BatchingSettings) -> float:
    """Adaptive release interval: the measured step time over the live instances sharing the load."""
    live = [st for st in instances if st.available]
    if not live:
        return b.max_interval_s
    step = sum(st.step_ewma_s for st in live) / len(live)
    return min(max(step / len(live), b.min_interval_s), b.max_interval_s)


def mark_suspects(instances: Sequence[PrefillInstanceState], now: float, overrun: float) -> None:
    """An instance overrunning its predicted step by far (and 1 s) is suspect until it reports."""
    for st in instances:
        if st.planned and not st.suspect:
            grace = max(1.0, (overrun - 1.0) * max(st.step_ewma_s, st.planned[0][1]))
            if now > st.busy_until_s + grace:
                st.suspect = True
