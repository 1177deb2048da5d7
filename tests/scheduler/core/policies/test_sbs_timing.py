"""SBS's timing and ordering rules (the staggered batcher)."""

from __future__ import annotations

import math

import pytest
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings.scheduling import BatchingSettings

SPEC = InstanceSpec("prefill-0", Role.PREFILL, 4, 1000, 100_000)
MODEL = PrefillCapacityModel(0.01, 1e-4, 1e-9)
LEAD_2MS = BatchingSettings(lead_s=0.002)
NO_LEAD = BatchingSettings(lead_s=0.0)


def instance(*planned: float, busy_until: float = 0.0, ewma: float = 0.0) -> PrefillInstanceState:
    st = PrefillInstanceState(spec=SPEC, offset=0, busy_until_s=busy_until, step_ewma_s=ewma)
    st.planned.extend((0.0, p) for p in planned)
    return st


def test_idle_instance_is_due_at_once_under_the_bypass() -> None:
    assert sbs_timing.release_time(instance(busy_until=1.0), b=LEAD_2MS, idle_from=-math.inf) == 1.0


def test_busy_instance_is_due_lead_before_its_step_ends() -> None:
    assert sbs_timing.release_time(instance(0.5, busy_until=2.0), b=LEAD_2MS, idle_from=0.0) == 1.998


def test_a_measured_admission_lag_releases_earlier_up_to_its_cap() -> None:
    st = instance(0.5, busy_until=2.0)
    st.admission_s = 0.05
    assert sbs_timing.release_time(st, b=LEAD_2MS, idle_from=0.0) == 2.0 - 0.052
    capped = BatchingSettings(lead_s=0.002, admission_lead_max_s=0.01)
    st.admission_s = 0.2  # above the cap and above a quarter of the running 0.5 s step
    assert sbs_timing.release_time(st, b=capped, idle_from=0.0) == pytest.approx(2.0 - 0.002 - 0.125)
    off = BatchingSettings(lead_s=0.002, admission_lead_max_s=0.0)
    assert sbs_timing.release_time(st, b=off, idle_from=0.0) == 1.998


def test_a_long_step_is_released_into_earlier_by_its_expected_error() -> None:
    short, long = instance(0.2, busy_until=2.0), instance(8.0, busy_until=2.0)
    for st in (short, long):
        st.admission_s, st.step_dev = 0.01, 0.03
    assert sbs_timing.lead_s(short, LEAD_2MS) == pytest.approx(0.002 + 0.01 + 2 * 0.03 * 0.2)
    assert sbs_timing.lead_s(long, LEAD_2MS) == pytest.approx(0.002 + 0.01 + 2 * 0.03 * 8.0)  # 0.49 s


def test_instance_with_a_step_queued_ahead_or_down_is_not_due() -> None:
    assert sbs_timing.release_time(instance(0.5, 0.5, busy_until=2.0), b=NO_LEAD, idle_from=0.0) == math.inf
    down = instance()
    down.healthy = False
    assert sbs_timing.release_time(down, b=NO_LEAD, idle_from=0.0) == math.inf


def test_deferral_pushes_the_release_back() -> None:
    st = instance(busy_until=1.0)
    st.deferred_until_s = 3.0
    assert sbs_timing.release_time(st, b=NO_LEAD, idle_from=-math.inf) == 3.0


def budget(
    head: int, committed: list[tuple[int, int]], buffered: list[int], **kw: bool
) -> sbs_timing.StepBudget:
    """The step budget on SPEC's 4 ranks; `committed` holds (tokens, prefix done) per rank."""
    tokens = [t for t, _ in committed]
    pairs = [PrefillCapacityModel.pairs(done, t) for t, done in committed]
    return sbs_timing.step_budget(
        MODEL,
        SPEC.chunk_tokens,
        tokens,
        pairs,
        head_tokens=head,
        buffered_tokens=sum(buffered),
        buffered_sq=sum(n * n for n in buffered),
        level_fill=kw.get("level_fill", True),
        skip_above_level=kw.get("skip_above_level", True),
    )


def cost(tokens: int) -> float:
    return sbs_timing.item_cost_s(MODEL, tokens, SPEC.chunk_tokens)


IDLE = [(0, 0)] * 4


def test_step_level_is_the_time_of_the_head_a_carry_or_the_spread_work() -> None:
    assert budget(300, IDLE, [300, 100]).level_s == cost(300)
    carry = budget(300, [(0, 0), (700, 0), (0, 0), (0, 0)], [300, 100])
    assert carry.level_s == MODEL.per_token_s * 700 + MODEL.per_pair_s * 700 * 700
    spread = budget(300, IDLE, [300] + [500] * 7)
    assert spread.level_s == (MODEL.per_token_s * 3800 + MODEL.per_pair_s * (300**2 + 7 * 500**2)) / 4


def test_cost_room_fills_every_rank_up_to_the_level() -> None:
    b = budget(300, [(0, 0), (700, 0), (0, 0), (0, 0)], [300])
    assert b.level_s is not None
    assert math.isclose(b.cost_room_s, 3 * b.level_s)
    assert b.token_room == 4 * 1000 - 700


def test_a_head_of_a_chunk_or_more_leaves_only_the_token_room() -> None:
    b = budget(5000, IDLE, [5000])
    assert (b.level_s, b.cost_room_s, b.token_room) == (None, math.inf, 4000)
    assert budget(300, IDLE, [300], level_fill=False).level_s is None


def test_a_late_chunk_of_a_long_prompt_sets_the_level_by_its_time_not_its_tokens() -> None:
    # 200 tokens behind a 150k-token prefix cost more than a fresh 600-token prompt: a token level (200,
    # or the head's 100) would have made that prompt wait and left the other ranks almost empty.
    b = budget(100, [(200, 150_000), (0, 0), (0, 0), (0, 0)], [100, 600])
    assert b.level_s is not None and b.level_s > cost(600)
    assert b.admits(600, cost(600), first=False)
    assert b.cost_room_s > 3 * cost(600)


def test_without_skipping_the_level_only_sizes_the_step() -> None:
    b = budget(300, IDLE, [300, 900], skip_above_level=False)
    skipping = budget(300, IDLE, [300, 900])
    assert b.level_s is None and b.cost_room_s == skipping.cost_room_s < math.inf
    assert b.admits(900, cost(900), first=False)
    assert not skipping.admits(900, cost(900), first=False)


def test_the_first_request_is_always_admitted_unless_it_waits_for_another_instance() -> None:
    b = budget(300, IDLE, [300])
    assert b.admits(900, cost(900), first=True)
    isolated = sbs_timing.StepBudget(4000, math.inf, None, min_tokens=1000)
    assert not isolated.admits(900, cost(900), first=True) and isolated.admits(1500, cost(1000), first=True)
    lane_waits = sbs_timing.StepBudget(4000, math.inf, None, max_tokens=1000)
    assert not lane_waits.admits(1500, cost(1000), first=True) and lane_waits.admits(900, cost(900), True)
    # The rest of a prompt cached here does not wait for another instance to pass the slow step; a
    # rest too long for the lane still waits for it.
    assert isolated.admits(900, cost(900), first=True, cached_here=True)
    assert not lane_waits.admits(1500, cost(1000), first=True, cached_here=True)
    # A prompt another instance finishes sooner waits for it, unless its prefix is cached here.
    sooner = sbs_timing.StepBudget(4000, math.inf, None, sooner=lambda tokens: tokens > 1000)
    assert sooner.filters and not budget(300, IDLE, [300]).filters
    assert not sooner.admits(1500, cost(1000), first=True) and sooner.admits(900, cost(900), True)
    assert sooner.admits(1500, cost(1000), first=True, cached_here=True)


def test_size_priority_puts_long_prompts_back_by_a_bounded_time() -> None:
    b = BatchingSettings(size_priority=5.0, size_priority_max_s=2.0)
    short = sbs_timing.priority_key(10.0, 100, MODEL, b)
    long = sbs_timing.priority_key(9.0, 100_000, MODEL, b)
    assert short < long <= 9.0 + 2.0
    assert sbs_timing.priority_key(10.0, 100_000, MODEL, BatchingSettings(size_priority=0.0)) == 10.0


def test_hold_is_at_least_two_measured_steps() -> None:
    b = BatchingSettings(max_hold_s=1.0)
    assert sbs_timing.hold_s([instance(ewma=0.2)], b) == 1.0
    assert sbs_timing.hold_s([instance(ewma=3.0)], b) == 6.0


def test_interval_is_step_over_live_instances_clamped() -> None:
    b = BatchingSettings(min_interval_s=0.01, max_interval_s=1.0)
    assert sbs_timing.interval_s([instance(ewma=0.8), instance(ewma=0.8)], b) == 0.4
    assert sbs_timing.interval_s([instance(ewma=0.001)], b) == 0.01


def test_overrunning_instance_becomes_suspect() -> None:
    st = instance(0.5, busy_until=1.0, ewma=0.5)
    sbs_timing.mark_suspects([st], now=1.9, overrun=3.0)
    assert not st.suspect
    sbs_timing.mark_suspects([st], now=2.1, overrun=3.0)
    assert st.suspect
