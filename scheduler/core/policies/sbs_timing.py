"""SBS's timing and ordering rules (the staggered batcher), as pure functions of the instances' state.

The SBS policy (`sbs`) asks these *when* each prefill instance is next offered buffered work, *how
full* a release makes its step and *in what order* buffered requests go; what a release contains is
decided by `prefill_alloc.water_fill_lists` and `decode_alloc.assign_decode_lists`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.settings.scheduling import BatchingSettings


def lead_s(st: PrefillInstanceState, b: BatchingSettings) -> float:
    """How long before `st`'s predicted free time its next batch is released: the transit margin, and
    where requests take time to become schedulable (PD bootstrap), that measured lag plus twice the
    running step's expected error (its predicted length times the mean relative error), capped, so the
    whole batch is schedulable when the engine frees: one request schedulable early would start a step
    alone, and a batch arriving just after the next step began waits for all of it."""
    if st.admission_s <= 0.0 or b.admission_lead_max_s <= 0.0:
        return b.lead_s
    running = st.planned[0][1] if st.planned else st.step_ewma_s
    margin = st.admission_s + 2.0 * st.step_dev * running
    return b.lead_s + min(margin, max(b.admission_lead_max_s, 0.25 * running))


def release_time(st: PrefillInstanceState, *, b: BatchingSettings, idle_from: float) -> float:
    """When `st` is next offered buffered work (inf: not before an event changes its state).

    - busy with one step: `lead_s(st, b)` before that step's predicted end, so the next batch is in
      the engine when it frees and no request waits inside it;
    - idle: at `idle_from` (the past under the low-load bypass: at once);
    - a step already queued ahead, or unavailable: inf.
    A deferral (everything buffered waits for another instance's cache) pushes it back.
    """
    if not st.available:
        return math.inf
    if not st.planned:
        start = max(st.busy_until_s, idle_from)
    elif len(st.planned) == 1:
        start = st.busy_until_s - lead_s(st, b)
    else:
        return math.inf
    return max(start, st.deferred_until_s)


@dataclass(frozen=True, slots=True)
class StepBudget:
    """What one release may take, in release order (`admits`, `full`).

    Costs are a rank's predicted compute *increment* (`per_token·n + per_pair·n²` for a fresh prompt of
    n tokens, at most one chunk of it this step; the fixed cost every busy rank pays once left out).
    """

    token_room: int
    """Tokens the step's ranks can still take (chunk minus committed, summed)."""
    cost_room_s: float
    """Compute the ranks can still take below the level, summed (inf without a level)."""
    level_s: float | None
    """A request costing more than this waits for a step whose level it sets (None: nothing waits)."""
    min_tokens: int = 0
    """Requests of at most this many tokens wait for another instance (an isolated slow step)."""
    max_tokens: int | None = None
    """Requests of more tokens wait for another instance (a long-prompt lane due soon)..."""
    lane_waits: Callable[[int], bool] | None = None
    """...those of them for which this says so (None: all; `sbs_lanes.LaneCost.waits`)."""
    sooner: Callable[[int], bool] | None = None
    """Requests of these sizes wait for an instance that finishes them sooner (`sbs_lanes.SoonerElsewhere`),
    unless their prefix is cached here."""
    wake_s: float = math.inf
    """When that lane, or the first such instance, is due (inf: none)."""

    @property
    def filters(self) -> bool:
        """Whether some request may wait for another instance (`waits` may say yes)."""
        return bool(self.min_tokens) or self.max_tokens is not None or self.sooner is not None

    def admits(self, tokens: int, cost_s: float, first: bool, *, cached_here: bool = False) -> bool:
        """Whether a request of `tokens` (costing `cost_s`) may join; the first one always may, unless
        it waits for another instance. `cached_here`: its prefix is cached on this instance and
        `tokens` is the rest, so it does not wait for another instance to pass a slow step (there it
        would compute the prefix again)."""
        if self.waits(tokens, cached_here=cached_here):
            return False
        return first or self.level_s is None or cost_s <= self.level_s

    def waits(self, tokens: int, *, cached_here: bool = False) -> bool:
        """Whether a request of `tokens` waits for another instance (a slow step, a lane, one that
        finishes it sooner)."""
        if not cached_here and (tokens <= self.min_tokens or (self.sooner and self.sooner(tokens))):
            return True
        hi = self.max_tokens
        return hi is not None and tokens > hi and (self.lane_waits is None or self.lane_waits(tokens))

    def full(self, tokens: int, cost_s: float) -> bool:
        """Whether requests taken so far (`tokens`, `cost_s`) fill the step."""
        return tokens >= self.token_room or cost_s >= self.cost_room_s


def item_cost_s(model: PrefillCapacityModel, tokens: int, chunk: int) -> float:
    """Predicted compute increment of a fresh prompt on one rank this step (its first chunk at most)."""
    n = tokens if tokens < chunk else chunk
    return model.per_token_s * n + model.per_pair_s * n * n


def step_budget(
    model: PrefillCapacityModel,
    chunk: int,
    committed_tokens: Sequence[int],
    committed_pairs: Sequence[float],
    *,
    head_tokens: int,
    buffered_tokens: int,
    buffered_sq: int,
    level_fill: bool,
    skip_above_level: bool = True,
) -> StepBudget:
    """Straggler-aware budget of one step, its level a predicted time.

    A lockstep step lasts as long as its slowest rank, so its level is the compute it must carry
    anyway: the head of the release order, the costliest rank's committed chunks (a late chunk of a long
    prompt attends to its whole prefix), or the buffered work (`buffered_tokens`, `buffered_sq` = Σn²)
    spread over the ranks when there is much of it. Every rank is filled up to that level in time, and
    never past `chunk` tokens; a request costing more than the level waits for a step whose level it
    sets (unless not `skip_above_level`: then requests go strictly in order, and one above the level
    makes the step longer). Without `level_fill` the step is filled to `chunk` tokens per rank.
    """
    token_room = sum(chunk - t for t in committed_tokens if t < chunk)
    if not level_fill:
        return StepBudget(token_room, math.inf, None)
    a, b = model.per_token_s, model.per_pair_s
    loads = [a * t + b * p for t, p in zip(committed_tokens, committed_pairs, strict=True)]
    spread = (a * buffered_tokens + b * buffered_sq) / max(len(loads), 1)
    level = max(item_cost_s(model, head_tokens, chunk), max(loads, default=0.0), spread)
    if level >= item_cost_s(model, chunk, chunk):  # no request costs more: only the tokens bound the step
        return StepBudget(token_room, math.inf, None)
    room = sum(level - x for x in loads if x < level)
    return StepBudget(token_room, room, level if skip_above_level else None)


def full_chunk_s(model: PrefillCapacityModel, chunk: int) -> float:
    """Predicted time of a rank with a full chunk of one fresh prompt: the slowest fresh step."""
    return model.fixed_s + item_cost_s(model, chunk, chunk)


def slow_step_s(st: PrefillInstanceState, model: PrefillCapacityModel) -> float:
    """Predicted time of `st`'s committed chunks alone (0.0 without carries)."""
    if not st.carries:
        return 0.0
    return model.step_s(*committed_loads(st))


def isolate_slow_step(
    instances: Sequence[PrefillInstanceState],
    p: int,
    now: float,
    *,
    model: PrefillCapacityModel,
    chunk: int,
    committed_s: float,
) -> bool:
    """Whether instance `p`'s next step is a slow continuation that prompts of at most `chunk` tokens
    should not ride: its committed chunks alone (`committed_s`) take longer than a full fresh chunk,
    and another available instance is predicted to end a step of its own next work before it."""
    full = full_chunk_s(model, chunk)
    if committed_s <= full:
        return False
    st = instances[p]
    end_here = max(st.busy_until_s, now) + committed_s * st.error_ewma
    for i, other in enumerate(instances):
        if i == p or not other.available or len(other.planned) > 1:
            continue
        nxt = max(full, slow_step_s(other, model))
        if max(other.busy_until_s, now) + nxt * other.error_ewma < end_here:
            return True
    return False


def is_lane(st: PrefillInstanceState, model: PrefillCapacityModel) -> bool:
    """Whether `st` is a long-prompt lane: available, its next step a slow continuation anyway (its
    committed chunks take longer than a full fresh chunk), and a rank free of carries."""
    return (
        st.available
        and len(st.carries) < st.spec.dp_size
        and slow_step_s(st, model) > full_chunk_s(model, st.spec.chunk_tokens)
    )


def committed_loads(st: PrefillInstanceState) -> tuple[list[int], list[float]]:
    """Per rank, the tokens and attention pairs the carries put into `st`'s next step."""
    tokens = [0] * st.spec.dp_size
    pairs = [0.0] * st.spec.dp_size
    for r, (tok, done, _) in st.committed_next().items():
        tokens[r] = tok
        pairs[r] = PrefillCapacityModel.pairs(int(done), tok)
    return tokens, pairs


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
        if now > suspect_after(st, overrun):
            st.suspect = True


def suspect_after(st: PrefillInstanceState, overrun: float) -> float:
    """After when `st` is suspect (`mark_suspects`): inf when idle or suspect already."""
    if not st.planned or st.suspect:
        return math.inf
    return st.busy_until_s + max(1.0, (overrun - 1.0) * max(st.step_ewma_s, st.planned[0][1]))
