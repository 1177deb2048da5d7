"""SBS's long-prompt lanes as a cost decision (`sbs_lanes`): a prompt longer than a chunk waits for (or
is forced into) a lane only when the lane costs it less than starting elsewhere costs the short prompts.

Shapes as in `test_sbs_slow_steps`: chunk 1000, a fresh full chunk 1.11 s; instance 0 is a lane (its
carry's next chunk takes 4.31 s), due at 1.498; instance 1 frees at 1.0. A 3000-token prompt costs
0.5 + 3 × (4.31 − 1.11) ≈ 10.1 s in the lane and, started on instance 1, rate / 2 instances × 9.33 s
(its prefill) × 3.11 s (its mean step) to the short prompts: the lane wins above 0.7 short prompts/s.
"""

from __future__ import annotations

import pydantic
import pytest
from sbs.scheduler.core.policies import sbs_lanes, sbs_timing
from sbs.scheduler.core.policies.sbs import StaggeredBatching
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Dispatch, InstanceSpec, Role
from sbs.settings.scheduling import BatchingSettings

from tests.scheduler.core.policies.test_sbs_slow_steps import CHUNK, MODEL, running, scheduler, sent

SHORTS = [(1, 0.1, 300), (2, 0.15, 300), (3, 0.18, 300)]
"""Three short prompts within a second: 3/s over a 1 s window."""


def with_lane(**batching: bool | float) -> Scheduler:
    """Instance 0 a lane due at 1.498, instance 1 free at 1.0."""
    sched = scheduler(2, **batching)
    running(sched, 0, until=1.5, carry=(500, 4000))
    running(sched, 1, until=1.0)
    return sched


def test_among_many_short_prompts_a_long_one_still_waits_for_the_lane() -> None:
    sched = with_lane(lane_rate_window_s=2.0)  # 1.5 short prompts/s, still at 1.499
    first = sent(sched, [*SHORTS, (9, 0.2, 3000)], until=0.999)
    assert sorted((d.rid, d.prefill_instance) for d in first) == [(1, 1), (2, 1), (3, 1)]
    lane = [d for d in sched.handle(None, 1.499) if isinstance(d, Dispatch)]
    assert [(d.rid, d.prefill_instance, d.prefill_rank) for d in lane] == [(9, 0, 1)]


@pytest.mark.parametrize("sooner", [True, False])
def test_a_long_prompt_leaves_a_slow_step_for_an_instance_that_finishes_it_sooner(sooner: bool) -> None:
    # Instance 0 frees at 1.0 into its carry's 4.31 s chunk: a 3000-token prompt started there ends
    # after steps of 4.31, 2.11 and 3.11 s (10.53). Instance 1 frees at 1.3 with nothing carried:
    # 1.11, 2.11 and 3.11 s (7.63), and no short traffic pays for it (`sooner_elsewhere`). Off, the
    # prompt starts where it is first offered.
    sched = scheduler(2, sooner_elsewhere=sooner)
    running(sched, 0, until=1.0, carry=(500, 4000))
    running(sched, 1, until=1.3)
    first = [(d.rid, d.prefill_instance) for d in sent(sched, [(9, 0.2, 3000)], until=0.999)]
    assert first == ([] if sooner else [(9, 0)])
    later = [(d.rid, d.prefill_instance) for d in sched.handle(None, 1.299) if isinstance(d, Dispatch)]
    assert later == ([(9, 1)] if sooner else [])


def test_a_long_prompt_stays_on_a_slow_step_when_the_faster_instance_serves_short_traffic() -> None:
    # As above, with short prompts arriving: 1.5/s over the 2 s window, and instance 1 the only one
    # left to them, so starting the long prompt there costs them more than the 2.9 s it would gain.
    sched = scheduler(2, lane_rate_window_s=2.0)
    running(sched, 0, until=1.0, carry=(500, 4000))
    running(sched, 1, until=1.3)
    first = sent(sched, [*SHORTS, (9, 0.2, 3000)], until=0.999)
    assert [(d.rid, d.prefill_instance) for d in first] == [(9, 0)]


def test_without_short_traffic_long_prompts_start_at_once() -> None:
    sched = with_lane()  # defaults: the costs on, a 30 s window
    first = sent(sched, [(8, 0.1, 3000), (9, 0.2, 3000)], until=0.999)
    assert {d.prefill_instance for d in first} == {1} and 8 in {d.rid for d in first}


def test_a_heavier_weight_on_the_short_prompts_sends_the_long_one_to_the_lane() -> None:
    # One short prompt in 30 s is too little traffic at beta 1; at beta 100 it is enough.
    light = sent(with_lane(), [(1, 0.1, 300), (9, 0.2, 3000)], until=0.999)
    heavy = sent(with_lane(lane_short_weight=100.0), [(1, 0.1, 300), (9, 0.2, 3000)], until=0.999)
    assert 9 in {d.rid for d in light} and [d.rid for d in heavy] == [1]


@pytest.mark.parametrize(
    ("rate", "tokens", "batching", "target"),
    [
        (3.0, 3000, {}, 0),  # the lane costs less than the short prompts pay
        (0.0, 3000, {}, 1),  # no short traffic: the instance that frees first
        (0.5, 3000, {}, 1),
        (0.0, 3000, {"lane_cost": False}, 0),  # the old rule: always the lane
        (3.0, 800, {}, 1),  # a short prompt never goes to a lane
        (3.0, 3000, {"isolate_slow_steps": False}, 1),
    ],
)
def test_a_forced_release_takes_the_lane_only_when_it_costs_less(
    rate: float, tokens: int, batching: dict[str, bool], target: int
) -> None:
    sched = with_lane()
    b = BatchingSettings(**batching)
    assert sbs_lanes.forced_target(sched.instances, [0, 1], tokens, rate, model=MODEL, b=b) == target


def test_the_short_rate_counts_prompts_of_at_most_a_chunk_over_the_window() -> None:
    short = sbs_lanes.ShortArrivals(CHUNK, 10.0)
    for t, tokens in [(0.0, 100), (1.0, 1000), (2.0, 1001), (5.0, 50)]:
        short.add(tokens, t)
    assert short.rate(5.0) == pytest.approx(0.3)
    short.add(60, 12.0)
    assert short.rate(12.0) == pytest.approx(0.2)  # 0.0 and 1.0 left the window


def test_waiting_is_monotone_in_the_prompt_and_never_without_short_cost() -> None:
    cost = sbs_lanes.LaneCost(wait_s=0.5, slower_s=3.2, short_s=1.5, chunk=CHUNK, model=MODEL)
    waits = [cost.waits(n) for n in range(CHUNK + 1, 20 * CHUNK, 97)]
    assert any(waits) and not all(waits) and waits == sorted(waits)  # short ones start, long ones wait
    free = sbs_lanes.LaneCost(wait_s=0.0, slower_s=0.0, short_s=0.0, chunk=CHUNK, model=MODEL)
    assert not free.waits(100 * CHUNK)


def test_the_finish_time_rides_the_carried_chunks() -> None:
    sched = scheduler(1)
    running(sched, 0, until=1.0, carry=(1500, 4000))  # chunks of 1000 at 4000 and 500 at 5000
    carried = sbs_lanes.carried_steps_s(sched.instances[0], 3, MODEL)
    assert carried == pytest.approx([0.1 + 9.0, 0.05 + 5.25, 0.0])
    own = [MODEL.per_token_s * n + MODEL.per_pair_s * MODEL.pairs(d, n) for d, n in [(0, 1000), (1000, 1000)]]
    steps = [MODEL.fixed_s + max(o, c) for o, c in zip(own, carried, strict=False)]
    line = sbs_lanes.Timeline(MODEL, CHUNK, 1.0, carried, 1.0)
    assert line.finish_s(2000) == pytest.approx(1.0 + sum(steps))
    assert line.finish_s(1500) == pytest.approx(1.0 + steps[0] + MODEL.fixed_s + carried[1])  # under it
    assert sbs_lanes.Timeline(MODEL, CHUNK, 1.0, carried, 2.0).finish_s(2000) == pytest.approx(
        1.0 + 2 * sum(steps)
    )


def test_the_prefill_time_sums_the_chunks() -> None:
    by_chunk = sum(MODEL.rank_cost_s(CHUNK, MODEL.pairs(d, CHUNK)) for d in range(0, 2000, CHUNK))
    last = MODEL.rank_cost_s(500, MODEL.pairs(2000, 500))
    assert sbs_lanes.prefill_s(MODEL, 2500, CHUNK) == pytest.approx(by_chunk + last)


def test_a_rebuilt_core_keeps_the_short_rate() -> None:
    sched = with_lane(lane_rate_window_s=1.0)
    sent(sched, SHORTS, until=0.5)
    prefill = [InstanceSpec(f"p{i}", Role.PREFILL, 2, CHUNK, 1_000_000) for i in range(2)]
    new = sched.rebuilt(prefill, [InstanceSpec("d0", Role.DECODE, 2, 0, 1_000_000)], 0.6)
    old_policy, new_policy = sched.policy, new.policy
    assert isinstance(old_policy, StaggeredBatching) and isinstance(new_policy, StaggeredBatching)
    # The log moves over as it was (the buffered prompts arriving again at 0.6 are not counted twice).
    assert list(new_policy.short.times) == list(old_policy.short.times) == [0.1, 0.15, 0.18]
    assert new_policy.short.rate(1.2) == 0.0


@pytest.mark.parametrize("bad", [{"lane_rate_window_s": 0.0}, {"lane_short_weight": -1.0}])
def test_lane_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(pydantic.ValidationError):
        BatchingSettings(**bad)


def test_the_short_token_rate_follows_the_window() -> None:
    short = sbs_lanes.ShortArrivals(CHUNK, 10.0)
    for t, tokens in [(0.0, 100), (1.0, 1000), (2.0, 1001), (5.0, 50)]:
        short.add(tokens, t)
    assert short.token_rate(5.0) == pytest.approx(115.0)
    assert short.token_rate(10.5) == pytest.approx(105.0)  # 0.0 left the window


@pytest.mark.parametrize(("rho", "factor"), [(0.1, 1 / 9), (0.5, 1.0), (0.9, 9.0), (1e6, 19.0)])
def test_the_short_cost_grows_with_the_load_left_for_the_short_prompts(rho: float, factor: float) -> None:
    """Instance 0 a lane, the long prompt starting on 1: the short prompts are left instance 2 (2 ranks
    × 1000 tokens per 1.11 s = 1802 tok/s). At load rho there, the cost is rho / (1 - rho) times the
    unscaled one (rho at most 0.95): a long prompt herds into the lane only while the others are busy."""
    tok_rate = rho * 2 * CHUNK / sbs_timing.full_chunk_s(MODEL, CHUNK)
    sched = scheduler(3)
    running(sched, 0, until=1.5, carry=(500, 4000))
    running(sched, 1, until=1.0)
    running(sched, 2, until=1.0)
    b, off = BatchingSettings(), BatchingSettings(lane_load_scaled=False)
    plain = sbs_lanes.lane_cost(sched.instances, 1, 0, 0.5, 3.0, tok_rate, model=MODEL, b=off)
    scaled = sbs_lanes.lane_cost(sched.instances, 1, 0, 0.5, 3.0, tok_rate, model=MODEL, b=b)
    assert plain is not None and scaled is not None
    assert scaled.short_s == pytest.approx(plain.short_s * factor, rel=1e-6)
