"""SBS's prefix-cache affinity in one release: a request whose longest cached prefix is on the releasing
instance is judged there by the tokens it computes; one without it waits for a step it sets."""

from __future__ import annotations

import math

from sbs.scheduler.core.policies import StaggeredBatching
from sbs.scheduler.core.policies.sbs_timing import StepBudget
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Request
from sbs.settings import scheduling

from tests.scheduler.core.fakes import CAPACITY, decode_specs, prefill_specs

BLOCKS = tuple(range(1, 10))  # 9 blocks of 100 tokens


def _policy() -> StaggeredBatching:
    settings = scheduling.SchedulerSettings(policy=scheduling.SbsPolicy())
    sched = Scheduler(
        prefill_specs(2), decode_specs(1), settings=settings, capacity=CAPACITY, block_tokens=100
    )
    policy = sched.policy
    assert isinstance(policy, StaggeredBatching) and policy.prefix is not None
    policy.prefix.insert(1, BLOCKS)  # rank 1 of instance 0 caches the first 900 tokens
    for r in (
        Request(1, 0.0, 100, 10),
        Request(2, 0.0, 950, 10),
        Request(3, 0.0, 950, 10, (*BLOCKS, 10)),
        Request(4, 0.0, 950, 10, (1, 20, 21, 22, 23, 24, 25, 26, 27, 28)),  # one block cached: 850 to go
    ):
        policy.arrive(r, 0.0)
    return policy


def _take(policy: StaggeredBatching, p: int, level_s: float | None) -> tuple[list[int], float]:
    """The rids a release to instance `p` takes (at 0.1 ms a token, the first request and request 3's
    uncached 50 tokens fit under a level of 20 ms), and when to look again for those waiting for
    another instance's cache."""
    budget = StepBudget(token_room=4000, cost_room_s=math.inf, level_s=level_s)
    take, credits, wake = policy._take_with_credit(p, 0.0, policy._queue, policy._queue_tokens, budget, 1000)
    rids = [policy._queue[i][1] for i in take]
    if 3 in rids:
        assert credits is not None and credits[rids.index(3)] == {1: 900}
    return rids, wake


def test_the_instance_caching_a_prefix_judges_its_request_by_the_rest() -> None:
    policy = _policy()
    assert _take(policy, 0, 0.02) == ([1, 3], math.inf)  # 2 and 4 compute 950 and 850 tokens here
    assert _take(policy, 1, 0.02) == ([1], math.inf)  # 3 is not cached here: all 950 tokens


def test_a_request_waits_for_the_free_instance_caching_its_prefix() -> None:
    policy = _policy()
    rids, wake = _take(policy, 1, None)
    assert rids == [1, 2] and wake == 0.0  # instance 0 is free now: 3 and 4 wait for it
