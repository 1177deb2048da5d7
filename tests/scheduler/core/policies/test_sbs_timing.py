"""SBS's timing and ordering rules (the staggered batcher)."""

from __future__ import annotations

import math

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings.scheduling import BatchingSettings

SPEC = InstanceSpec("prefill-0", Role.PREFILL, 4, 1000, 100_000)
MODEL = PrefillCapacityModel(0.01, 1e-4, 1e-9)


def instance(*planned: float, busy_until: float = 0.0, ewma: float = 0.0) -> PrefillInstanceState:
    st = PrefillInstanceState(spec=SPEC, offset=0, busy_until_s=busy_until, step_ewma_s=ewma)
    st.planned.extend((0.0, p) for p in planned)
    return st


def test_idle_instance_is_due_at_once_under_the_bypass() -> None:
    assert sbs_timing.release_time(instance(busy_until=1.0), lead_s=0.002, idle_from=-math.inf) == 1.0


def test_busy_instance_is_due_lead_before_its_step_ends() -> None:
    assert sbs_timing.release_time(instance(0.5, busy_until=2.0), lead_s=0.002, idle_from=0.0) == 1.998


def test_instance_with_a_step_queued_ahead_or_down_is_not_due() -> None:
    assert sbs_timing.release_time(instance(0.5, 0.5, busy_until=2.0), lead_s=0.0, idle_from=0.0) == math.inf
    down = instance()
    down.healthy = False
    assert sbs_timing.release_time(down, lead_s=0.0, idle_from=0.0) == math.inf


def test_deferral_pushes_the_release_back() -> None:
    st = instance(busy_until=1.0)
    st.deferred_until_s = 3.0
    assert sbs_timing.release_time(st, lead_s=0.0, idle_from=-math.inf) == 3.0


def test_fill_level_is_set_by_head_carry_or_spread_and_capped_by_the_chunk() -> None:
    assert sbs_timing.fill_level(1000, head_tokens=300, committed=[0, 0, 0, 0], buffered_tokens=400) == 300
    assert sbs_timing.fill_level(1000, head_tokens=300, committed=[0, 700, 0, 0], buffered_tokens=400) == 700
    assert sbs_timing.fill_level(1000, head_tokens=300, committed=[0, 0, 0, 0], buffered_tokens=2000) == 500
    assert sbs_timing.fill_level(1000, head_tokens=5000, committed=[0, 0, 0, 0], buffered_tokens=5000) == 1000


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
