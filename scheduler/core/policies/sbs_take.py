"""Which buffered requests one SBS release offers to water-filling (`take_in_order`), in whole-array
passes: the same choice as asking `StepBudget.admits` and `StepBudget.full` request by request."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate, compress, islice, repeat
from operator import le

import numpy as np
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.compiled import jit
from sbs.scheduler.core.policies.sbs_timing import StepBudget

__all__ = ["take_in_order"]


def take_in_order(
    tokens: Sequence[int] | np.ndarray,
    budget: StepBudget,
    min_count: int,
    model: PrefillCapacityModel,
    chunk: int,
) -> Sequence[int]:
    """Queue positions a release takes, in order, when no request waits for another instance's cache:
    requests (their prompt `tokens`, in release order; a list or an int64 array) that `budget` admits,
    until they fill it and there are at least `min_count` of them. A prefix of the queue comes back as a
    `range`, any other selection as a list.

    In numpy (costs as the same float operations, summed in the same order); sizes beyond int64 take
    the same passes in Python (`_take_lists`)."""
    n = len(tokens)
    if isinstance(tokens, np.ndarray):
        q = tokens
    else:
        try:
            q = np.fromiter(tokens, np.int64, n)
        except OverflowError:
            return _take_lists(tokens, budget, min_count, model, chunk)
    a, b = model.per_token_s, model.per_pair_s
    take: Sequence[int] | np.ndarray = range(n)
    if budget.filters:
        waits = budget.waits
        take = np.fromiter((not waits(t) for t in q.tolist()), np.bool_, n).nonzero()[0]
        q = q[take]
    m = len(q)
    top = _largest_within(a, b, budget.level_s, chunk) if budget.level_s is not None and m > 1 else chunk
    no_room = budget.token_room <= 0 or budget.cost_room_s <= 0
    kept, count = _take_kernel(  # one signature: no compile at run time for an int where a float was
        q,
        int(chunk),
        int(top),
        0.0 if no_room else float(budget.token_room),
        float(budget.cost_room_s),
        float(a),
        float(b),
        int(min_count),
    )
    if kept.shape[0] == m and isinstance(take, range):  # nothing skipped: a prefix of the queue
        return take[:count]
    return np.asarray(take)[kept[:count]].tolist()


@jit
def _take_kernel(
    q: np.ndarray,
    chunk: int,
    top: int,
    token_room: float,
    cost_room: float,
    a: float,
    b: float,
    min_count: int,
) -> tuple[np.ndarray, int]:
    """`take_in_order`'s passes over the sizes `q` (int64), in one: the positions kept (the first, and
    every later one whose size, capped at `chunk`, is at most `top`) and how many of them are taken: until
    their capped sizes reach `token_room` (0: none) and their costs `cost_room` (summed in order, as
    `np.cumsum` would), at least `min_count`."""
    m = q.shape[0]
    kept = np.empty(m, np.int64)
    nk = 0
    for i in range(m):
        if i == 0 or min(q[i], chunk) <= top:
            kept[nk] = i
            nk += 1
    reached = nk
    if token_room <= 0:
        reached = 0
    elif reached:
        tokens = 0
        for j in range(nk):
            tokens += min(q[kept[j]], chunk)
            if tokens >= token_room:
                reached = j + 1
                break
        if cost_room < math.inf:
            cost = 0.0
            for j in range(reached):
                x = min(q[kept[j]], chunk)
                cost += a * x + b * x * x
                if cost >= cost_room:
                    reached = j + 1
                    break
    return kept[:nk], max(reached, min(min_count, nk))


def _take_lists(
    tokens: Sequence[int],
    budget: StepBudget,
    min_count: int,
    model: PrefillCapacityModel,
    chunk: int,
) -> Sequence[int]:
    """`take_in_order` over Python ints (sizes beyond int64)."""
    a, b = model.per_token_s, model.per_pair_s
    take: Sequence[int] = range(len(tokens))
    if budget.filters:
        take = [i for i, t in enumerate(tokens) if not budget.waits(t)]
        tokens = [tokens[i] for i in take]
    sizes = tokens if max(tokens, default=0) < chunk else list(map(min, tokens, repeat(chunk)))
    if budget.level_s is not None and len(sizes) > 1:
        top = _largest_within(a, b, budget.level_s, chunk)
        keep = [0, *compress(range(1, len(sizes)), map(le, islice(sizes, 1, None), repeat(top)))]
        if len(keep) < len(sizes):
            take = [take[k] for k in keep]
            sizes = [sizes[k] for k in keep]
    reached = len(take)
    if budget.token_room <= 0 or budget.cost_room_s <= 0:
        reached = 0
    elif reached:
        reached = min(reached, bisect_left(list(accumulate(sizes)), budget.token_room) + 1)
        if budget.cost_room_s < math.inf:
            costs = accumulate(a * x + b * x * x for x in islice(sizes, reached))
            reached = min(reached, bisect_left(list(costs), budget.cost_room_s) + 1)
    return take[: max(reached, min(min_count, len(take)))]


def _largest_within(a: float, b: float, level: float, chunk: int) -> int:
    """The largest x in [0, chunk] with a·x + b·x² <= level (-1 if none), exactly as evaluated in floats."""
    if b > 0:
        x = int((-a + math.sqrt(a * a + 4.0 * b * level)) / (2.0 * b))
    else:
        x = int(level / a) if a > 0 else chunk
    x = max(-1, min(x, chunk))
    while x >= 0 and a * x + b * x * x > level:
        x -= 1
    while x < chunk and a * (x + 1) + b * (x + 1) * (x + 1) <= level:
        x += 1
    return x
