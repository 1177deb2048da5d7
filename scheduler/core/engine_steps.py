"""Steps a prefill engine starts by itself, which no release planned and no report may announce.

An engine with work left when a step ends starts the next step at once: chunked prompts continue, and
requests that missed the step wait for it. The first happens whenever a prompt is longer than a
chunk; the second when a release's requests become schedulable one by one (PD bootstrap) and the
first few start a step alone. SGLang reports neither: a step that finishes nothing sends no answer.
The core predicts such steps from what it holds, so that its predicted free times stay true.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sbs.scheduler.core.capacity import PrefillCapacityModel

if TYPE_CHECKING:
    from sbs.scheduler.core.state import PrefillInstanceState, RankCounters


def left_behind(st: PrefillInstanceState, counters: RankCounters) -> list[tuple[int, int]]:
    """Per rank of `st`: (tokens, requests) outstanding there besides its chunked prompt ([]: none)."""
    out = []
    for r in range(st.spec.dp_size):
        i = st.offset + r
        tokens, count = counters.tokens[i], counters.count[i]
        carry = st.carries.get(r)
        if carry is not None:
            tokens, count = tokens - carry.remaining - carry.done, count - 1
        out.append((tokens, count) if tokens > 0 and count > 0 else (0, 0))
    return out if any(t for t, _ in out) else []


def next_step_s(st: PrefillInstanceState, counters: RankCounters, capacity: PrefillCapacityModel) -> float:
    """Predict the step `st`'s engine starts by itself, and consume the carries it takes: per rank the
    chunked prompt's next chunk, then what else is outstanding there (as prompts of their mean
    length), up to a chunk. Returns its duration."""
    chunk = st.spec.chunk_tokens
    committed = st.committed_next()
    left = left_behind(st, counters) or [(0, 0)] * st.spec.dp_size
    tokens = [0] * st.spec.dp_size
    pairs = [0.0] * st.spec.dp_size
    for r, (more, count) in enumerate(left):
        tok, done, _ = committed.get(r, (0, 0.0, None))
        pairs[r] = PrefillCapacityModel.pairs(int(done), tok) if tok else 0.0
        take = min(more, chunk - tok)
        if take > 0:
            mean = more / count
            pairs[r] += (
                PrefillCapacityModel.pairs(0, take) if mean >= take else take * mean
            )  # take/mean prompts of mean² pairs each
            tokens[r] = tok + take
        else:
            tokens[r] = tok
    st.consume_carries(committed)
    predicted = capacity.step_s(tokens, pairs) * st.error_ewma
    return predicted if predicted > 0 else st.step_ewma_s


def guess_again(st: PrefillInstanceState, counters: RankCounters, capacity: PrefillCapacityModel) -> None:
    """More answers of `st`'s last reported step came after its next step was guessed
    (`PrefillInstanceState.guessed_end_s`): some of the work it was guessed from had finished in it.
    While a chunked prompt still goes on and nothing was released since, the guess stands; else guess
    the step again from what is left, or drop it if nothing is (or if the carries now are a later
    release's). A prompt the core planned in chunks may have run whole (the engine's chunk is larger
    than a capped release's): its answer drops the carry, and the guess with it."""
    if st.carries and len(st.planned) == 1:
        return
    start, _ = st.planned.popleft()
    if left_behind(st, counters) and not st.carries:  # carries now are a later release's
        st.planned.appendleft((start, next_step_s(st, counters, capacity)))
    else:
        st.guessed_end_s = -math.inf
    st.busy_until_s = st.reported_end_s + st.planned_total_s()


def roll_carries(st: PrefillInstanceState, now: float, capacity: PrefillCapacityModel) -> None:
    """With chunked prompts going on, steps may end unreported (a step that finishes nothing sends no
    answer), so time retires them: a planned step predicted to have ended, with another planned behind
    it, is over; when the last one's predicted end passes too, the engine has started the carries' next
    chunks by itself: predict that step from then (again while its end is past too)."""
    end = st.busy_until_s - st.planned_total_s()  # the reported end the planned steps follow
    while len(st.planned) > 1 and end + st.planned[0][1] <= now:
        end += st.planned.popleft()[1]
    while st.carries and st.planned and st.busy_until_s <= now:
        start = st.busy_until_s
        step = st.plan_carry_only(capacity)
        if step <= 0:
            return
        st.planned.clear()
        st.planned.append((start, step))
        st.busy_until_s = start + step
