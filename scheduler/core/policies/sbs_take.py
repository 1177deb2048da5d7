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
    if budget.min_tokens or budget.max_tokens is not None:
        waits = budget.waits
        take = np.fromiter((not waits(t) for t in q.tolist()), np.bool_, n).nonzero()[0]
        q = q[take]
    sizes = np.minimum(q, chunk)
    m = len(sizes)
    if budget.level_s is not None and m > 1:
        # cost(x) = a·x + b·x² is non-decreasing in x, so "cost <= level" is "x <= the largest such x".
        top = _largest_within(a, b, budget.level_s, chunk)
        keep = (sizes[1:] <= top).nonzero()[0]
        if len(keep) < m - 1:
            keep = np.concatenate(([0], keep + 1))
            take = np.asarray(take)[keep]
            sizes = sizes[keep]
            m = len(sizes)
    reached = m
    if budget.token_room <= 0 or budget.cost_room_s <= 0:
        reached = 0
    elif reached:
        reached = min(reached, int(np.cumsum(sizes).searchsorted(budget.token_room, "left")) + 1)
        if budget.cost_room_s < math.inf:
            x = sizes[:reached]
            costs = np.cumsum(a * x + b * x * x)  # add.accumulate: sequential, as Python's sum
            reached = min(reached, int(costs.searchsorted(budget.cost_room_s, "left")) + 1)
    count = max(reached, min(min_count, m))
    if isinstance(take, range):
        return take[:count]
    return take[:count].tolist()


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
    if budget.min_tokens or budget.max_tokens is not None:
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
