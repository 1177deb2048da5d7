"""SBS's long-prompt lanes as a cost decision (issue 11).

A prompt longer than a chunk may wait for a long-prompt lane (`sbs_timing.is_lane`: an instance whose
next step is a slow continuation anyway) instead of starting on the instance at hand. It waits only when
the lane costs it less than starting here costs the short prompts:

- lane cost: its extra wait for the lane, plus, per chunk of the prompt, how much slower the lane's
  steps are (its predicted step) than this instance's measured mean step;
- short cost: `beta` × the arrival rate of prompts of at most a chunk (over the last `window_s`) × the
  prompt's own prefill time ÷ the live instances × its mean step (prefill time ÷ chunks) — the short
  prompts that arrive while it runs here and reach this instance, each delayed about one of its steps;
  with `lane_load_scaled`, times rho / (1 - rho), rho their load on the instances left to them: they
  are delayed only as far as the other instances are busy.

With rare long prompts among many short ones the lane wins (the old rule); with long prompts a large
share of the work and little short traffic each starts at once, so lanes no longer herd them.

The converse (`sooner_elsewhere`): a long prompt offered a slow step may wait for another instance
whose coming steps finish it sooner (each of its chunks rides a step as slow as the costliest chunk
that instance carries into it), when it gains more there than it costs the short prompts there (the
same short cost; none on an instance whose next step is slow anyway). Pure functions of the
instances' state and `now`, plus one deterministic arrival log (`ShortArrivals`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.settings.scheduling import BatchingSettings


class ShortArrivals:
    """Arrival times of prompts of at most `tokens` over the last `window_s` (a rate estimate)."""

    def __init__(self, tokens: int, window_s: float) -> None:
        self.tokens = tokens
        self.window_s = window_s
        self.times: deque[float] = deque()
        self.sizes: deque[int] = deque()
        self.total = 0
        """Σ sizes: the window's short prompt tokens."""

    def add(self, prompt_tokens: int, now: float) -> None:
        if prompt_tokens <= self.tokens:
            self.times.append(now)
            self.sizes.append(prompt_tokens)
            self.total += prompt_tokens
            self._prune(now)  # the log stays one window long even when no lane asks for the rate

    def rate(self, now: float) -> float:
        """Short prompts per second over the window ending at `now`."""
        self._prune(now)
        return len(self.times) / self.window_s

    def token_rate(self, now: float) -> float:
        """Short prompt tokens per second over the window ending at `now`."""
        self._prune(now)
        return self.total / self.window_s

    def _prune(self, now: float) -> None:
        times, start = self.times, now - self.window_s
        while times and times[0] < start:
            times.popleft()
            self.total -= self.sizes.popleft()

    def adopt(self, other: ShortArrivals) -> None:
        """Take over `other`'s log (a rebuilt core goes on with the same estimate)."""
        self.times, self.sizes, self.total = deque(other.times), deque(other.sizes), other.total


def prefill_s(model: PrefillCapacityModel, tokens: int, chunk: int) -> float:
    """Predicted prefill time of a prompt of `tokens` alone on one rank, in chunks of `chunk`: the
    attention pairs of its chunks telescope to tokens²."""
    steps = -(-tokens // chunk)
    return steps * model.fixed_s + model.per_token_s * tokens + model.per_pair_s * tokens * tokens


@dataclass(frozen=True, slots=True)
class LaneCost:
    """Which prompts longer than `chunk` should wait for a lane rather than start here."""

    wait_s: float
    """The prompt's extra wait for the lane."""
    slower_s: float
    """Per chunk of the prompt: the lane's predicted step minus this instance's mean step (>= 0)."""
    short_s: float
    """beta × short-prompt rate ÷ live instances: × the prompt's prefill time × its mean step is the
    short cost."""
    chunk: int
    model: PrefillCapacityModel

    def waits(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` (> chunk) costs less in the lane than the short prompts pay
        for it here."""
        lane = self.wait_s + self.slower_s * (tokens / self.chunk)
        return lane < self.short_s * short_cost(self.model, tokens, self.chunk)


def short_cost(model: PrefillCapacityModel, tokens: int, chunk: int) -> float:
    """A prompt of `tokens` started on an instance, per unit of `short_s` (`LaneCost`): its prefill
    time (the short prompts arriving meanwhile) × its mean step (each one's delay)."""
    own = prefill_s(model, tokens, chunk)
    return own * own / max(tokens / chunk, 1.0)


def mean_step_s(st: PrefillInstanceState, model: PrefillCapacityModel) -> float:
    """`st`'s measured mean step; before any, a full fresh chunk's predicted step."""
    return st.step_ewma_s or sbs_timing.full_chunk_s(model, st.spec.chunk_tokens)


def lane_cost(
    instances: Sequence[PrefillInstanceState],
    here: int,
    lane: int,
    wait_s: float,
    short_rate: float,
    short_tok_rate: float | None = None,
    *,
    model: PrefillCapacityModel,
    b: BatchingSettings,
) -> LaneCost | None:
    """The cost rule for long prompts choosing between instance `here` and lane `lane` (after `wait_s`
    more), the short prompts arriving at `short_rate` per second and `short_tok_rate` tokens per second
    (None: the short cost unscaled by their load). None when the costs are off (`b.lane_cost`): every
    long prompt waits for the lane."""
    if not b.lane_cost:
        return None
    st, ln = instances[here], instances[lane]
    own = mean_step_s(st, model)
    pace = sbs_timing.slow_step_s(ln, model) * ln.error_ewma
    short = _short_s(instances, here, short_rate, short_tok_rate, model, b)
    return LaneCost(max(wait_s, 0.0), max(pace - own, 0.0), short, st.spec.chunk_tokens, model)


def _short_s(
    instances: Sequence[PrefillInstanceState],
    here: int,
    short_rate: float,
    short_tok_rate: float | None,
    model: PrefillCapacityModel,
    b: BatchingSettings,
) -> float:
    """`LaneCost.short_s` for a long prompt started on `here`."""
    live = sum(1 for s in instances if s.available) or 1
    short = b.lane_short_weight * short_rate / live
    if short_tok_rate is not None and b.lane_load_scaled:
        short *= _queueing_factor(instances, here, short_tok_rate, model)
    return short


RHO_MAX = 0.95
"""The highest load `_queueing_factor` counts (the factor is then 19)."""


def _queueing_factor(
    instances: Sequence[PrefillInstanceState], here: int, short_tok_rate: float, model: PrefillCapacityModel
) -> float:
    """rho / (1 - rho), rho the short prompts' load on what is left to them while a long prompt runs on
    `here`: their tokens per second over the capacity (ranks x chunk / full-chunk step) of the live
    instances other than `here` and the lanes. How much longer a short prompt queues than it is served,
    in a single-server queue: near nothing at low load, so a long prompt starts at once; growing
    without bound near saturation, so it gathers in a lane."""
    cap = 0.0
    for i, st in enumerate(instances):
        if st.available and i != here and not sbs_timing.is_lane(st, model):
            chunk = st.spec.chunk_tokens
            cap += st.spec.dp_size * chunk / sbs_timing.full_chunk_s(model, chunk)
    rho = min(short_tok_rate / cap, RHO_MAX) if cap > 0 else RHO_MAX
    return rho / (1.0 - rho)


def first_lane(
    instances: Sequence[PrefillInstanceState], p: int, *, model: PrefillCapacityModel, b: BatchingSettings
) -> tuple[float, int] | None:
    """(when it is next offered work, index) of the first long-prompt lane other than `p` (None: no
    lane with a step to offer). A prompt longer than a chunk started there hides its first chunk in a
    step that is slow anyway, instead of holding another instance in slow lockstep steps."""
    best: tuple[float, int] | None = None
    for i, st in enumerate(instances):
        if i != p and sbs_timing.is_lane(st, model):
            due = sbs_timing.release_time(st, b=b, idle_from=-math.inf)
            if due < math.inf and (best is None or due < best[0]):
                best = (due, i)
    return best


def forced_target(
    instances: Sequence[PrefillInstanceState],
    live: Sequence[int],
    tokens: int,
    short_rate: float,
    short_tok_rate: float | None = None,
    *,
    model: PrefillCapacityModel,
    b: BatchingSettings,
) -> int:
    """Where a request held too long goes: the live instance that frees first, or, for a prompt longer
    than every live chunk, the lane that frees first when it costs less there (`LaneCost`)."""
    first = min(live, key=lambda i: (instances[i].busy_until_s, i))
    if not b.isolate_slow_steps or tokens <= min(instances[i].spec.chunk_tokens for i in live):
        return first
    lanes = [i for i in live if sbs_timing.is_lane(instances[i], model)]
    if not lanes:
        return first
    lane = min(lanes, key=lambda i: (instances[i].busy_until_s, i))
    if lane == first:
        return lane
    wait = instances[lane].busy_until_s - instances[first].busy_until_s
    cost = lane_cost(instances, first, lane, wait, short_rate, short_tok_rate, model=model, b=b)
    return lane if cost is None or cost.waits(tokens) else first


def carried_steps_s(st: PrefillInstanceState, steps: int, model: PrefillCapacityModel) -> list[float]:
    """Per coming step of `st` (the first `steps`), the costliest rank compute its carried chunks put
    into it (0.0 once they are done): what a new prompt's chunks ride beside."""
    chunk = st.spec.chunk_tokens
    out = [0.0] * steps
    a, b = model.per_token_s, model.per_pair_s
    for c in st.carries.values():
        done, left = c.done, c.remaining
        for j in range(min(steps, -(-left // chunk))):
            n = min(chunk, left)
            out[j] = max(out[j], a * n + b * PrefillCapacityModel.pairs(int(done), n))
            done, left = done + n, left - n
    return out


class Timeline:
    """When a fresh prompt started on a free rank of an instance at `start_s` is prefilled: each of
    its chunks in a lockstep step as slow as the slower of it and that step's `carried` compute
    (`carried_steps_s`), times the instance's prediction `error`. The ends of its full chunks are kept,
    so a prompt costs one step more than the longest asked before."""

    __slots__ = ("carried", "chunk", "ends", "error", "model")

    def __init__(
        self, model: PrefillCapacityModel, chunk: int, start_s: float, carried: Sequence[float], error: float
    ) -> None:
        self.model, self.chunk, self.carried, self.error = model, chunk, carried, error
        self.ends = [start_s]
        """`ends[k]`: the end of the prompt's k-th full chunk (`ends[0]`: the start)."""

    def _step(self, j: int, tokens: int) -> float:
        m = self.model
        own = m.per_token_s * tokens + m.per_pair_s * PrefillCapacityModel.pairs(j * self.chunk, tokens)
        return (m.fixed_s + max(own, self.carried[j] if j < len(self.carried) else 0.0)) * self.error

    def finish_s(self, tokens: int) -> float:
        """The end of the step that computes the prompt's last token."""
        full, last = divmod(tokens, self.chunk)
        if not last:
            full, last = full - 1, self.chunk
        ends = self.ends
        while len(ends) <= full:
            ends.append(ends[-1] + self._step(len(ends) - 1, self.chunk))
        return ends[full] + self._step(full, last)


SOONER_STEPS = 8
"""How many coming steps of an instance's carries `sooner_elsewhere` looks at (8 chunks: 128k tokens
at the default chunk)."""


@dataclass(slots=True)
class SoonerElsewhere:
    """Which prompts longer than a chunk, offered instance `here`, wait for another instance (`waits`),
    and when the first of those is offered work (`wake_s`)."""

    here: int
    chunk: int
    timelines: dict[int, Timeline]
    """Per candidate instance (available, a rank free of carries): its `Timeline` from its next step."""
    short_s: dict[int, float]
    """Per candidate: `LaneCost.short_s` there (0.0 where the next step is slow anyway)."""
    model: PrefillCapacityModel
    wake_s: float
    _seen: dict[int, bool]

    def waits(self, tokens: int) -> bool:
        """Whether another instance finishes a prompt of `tokens` sooner than `here`, by more than it
        costs the short prompts there."""
        if tokens <= self.chunk:
            return False
        seen = self._seen.get(tokens)
        if seen is not None:
            return seen
        here = self.timelines[self.here].finish_s(tokens)
        cost = short_cost(self.model, tokens, self.chunk)
        out = any(
            here - line.finish_s(tokens) > self.short_s[i] * cost
            for i, line in self.timelines.items()
            if i != self.here
        )
        self._seen[tokens] = out
        return out


def sooner_elsewhere(
    instances: Sequence[PrefillInstanceState],
    here: int,
    now: float,
    short_rate: float,
    short_tok_rate: float | None = None,
    *,
    model: PrefillCapacityModel,
    b: BatchingSettings,
) -> SoonerElsewhere | None:
    """The rule for long prompts offered `here` (None: no other instance of the same chunk has a free
    rank). Each candidate's next step starts at its predicted free time (`here`: now at the earliest);
    it is offered work `lead_s` before that."""
    chunk = instances[here].spec.chunk_tokens
    cands = [
        i
        for i, st in enumerate(instances)
        if (i == here or st.available) and st.spec.chunk_tokens == chunk and len(st.carries) < st.spec.dp_size
    ]
    if here not in cands or len(cands) < 2:
        return None
    full = sbs_timing.full_chunk_s(model, chunk)
    lines: dict[int, Timeline] = {}
    shorts: dict[int, float] = {}
    for i in cands:
        st = instances[i]
        carried = carried_steps_s(st, SOONER_STEPS, model)
        lines[i] = Timeline(model, chunk, max(st.busy_until_s, now), carried, st.error_ewma)
        slow = sbs_timing.slow_step_s(st, model) > full
        shorts[i] = 0.0 if slow else _short_s(instances, i, short_rate, short_tok_rate, model, b)
    others = (instances[i] for i in cands if i != here)
    wake = min(max(st.busy_until_s - sbs_timing.lead_s(st, b), now) for st in others)
    return SoonerElsewhere(here, chunk, lines, shorts, model, wake, {})
