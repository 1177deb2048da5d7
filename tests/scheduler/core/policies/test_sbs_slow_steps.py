"""SBS around expensive steps: the level is a predicted time (a late chunk of a long prompt, cheap in
tokens, fills the other ranks as long as it runs), short prompts do not ride a slow continuation when
another instance frees sooner, and prompts longer than a chunk join a long-prompt lane."""

from __future__ import annotations

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import RequestArrived
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.state import Carry
from sbs.scheduler.core.types import Dispatch, InstanceSpec, Request, Role
from sbs.settings import scheduling

CHUNK = 1000
MODEL = PrefillCapacityModel(fixed_s=0.01, per_token_s=1e-4, per_pair_s=1e-6)
"""Attention-heavy: a fresh full chunk costs 1.11 s, the last 100 tokens of a 4100-token prompt 0.82 s."""


def scheduler(instances: int, **batching: bool | float) -> Scheduler:
    prefill = [InstanceSpec(f"p{i}", Role.PREFILL, 2, CHUNK, 1_000_000) for i in range(instances)]
    decode = [InstanceSpec("d0", Role.DECODE, 2, 0, 1_000_000)]
    policy = scheduling.SbsPolicy(batching=scheduling.BatchingSettings(**batching))
    return Scheduler(prefill, decode, settings=scheduling.SchedulerSettings(policy=policy), capacity=MODEL)


def running(sched: Scheduler, i: int, until: float, carry: tuple[int, int] | None = None) -> None:
    """Instance `i` runs one step until `until`; `carry` = (remaining, done) of a prompt on rank 0."""
    st = sched.instances[i]
    st.planned.append((0.0, until))
    st.busy_until_s = until
    if carry is not None:
        st.carries[0] = Carry(rid=10_000 + i, rank=0, remaining=carry[0], done=carry[1])


def sent(sched: Scheduler, arrivals: list[tuple[int, float, int]], until: float) -> list[Dispatch]:
    """Feed (rid, time, tokens) arrivals, then wake the scheduler at `until`; the dispatches."""
    out = []
    for rid, t, tokens in arrivals:
        out += sched.handle(RequestArrived(Request(rid, t, tokens, 10)), t)
    out += sched.handle(None, until)
    return [d for d in out if isinstance(d, Dispatch)]


def test_a_late_cheap_in_tokens_chunk_fills_the_other_rank_up_to_its_time() -> None:
    # The carry is 100 tokens but 0.82 s; the 800-token prompt (0.72 s) fits under it. A token level
    # (max(head 300, carry 100, spread 550) = 550 tokens) would have made it wait for another step.
    sched = scheduler(1)
    running(sched, 0, until=1.0, carry=(100, 4000))
    out = sent(sched, [(1, 0.1, 300), (2, 0.2, 800)], until=0.999)
    assert sorted(d.rid for d in out) == [1, 2]


def test_a_request_above_a_time_level_still_waits() -> None:
    sched = scheduler(1)
    running(sched, 0, until=1.0, carry=(20, 4000))  # 0.17 s of attention
    out = sent(sched, [(1, 0.1, 300), (2, 0.2, 800)], until=0.999)
    assert [d.rid for d in out] == [1]


def test_short_prompts_skip_a_slow_continuation_when_another_instance_frees_sooner() -> None:
    sched = scheduler(2)
    running(sched, 0, until=1.0, carry=(500, 4000))  # 4.3 s: slower than any fresh step (1.11 s)
    running(sched, 1, until=1.2)
    assert sent(sched, [(1, 0.1, 300), (2, 0.2, 300)], until=0.999) == []
    later = sched.handle(None, 1.199)
    assert {(d.rid, d.prefill_instance) for d in later if isinstance(d, Dispatch)} == {(1, 1), (2, 1)}


def test_without_isolation_short_prompts_ride_the_slow_step() -> None:
    sched = scheduler(2, isolate_slow_steps=False)
    running(sched, 0, until=1.0, carry=(500, 4000))
    running(sched, 1, until=1.2)
    out = sent(sched, [(1, 0.1, 300), (2, 0.2, 400)], until=0.999)
    assert {d.prefill_instance for d in out} == {0}


def test_a_long_prompt_waits_for_the_lane_and_joins_it() -> None:
    # Without the lane costs (`lane_cost`) every prompt longer than a chunk waits for the lane, even
    # among few short prompts (`test_sbs_lanes` has the cost rule).
    sched = scheduler(2, lane_cost=False)
    running(sched, 0, until=1.5, carry=(500, 4000))  # the lane: slow anyway, rank 1 free
    running(sched, 1, until=1.0)
    first = sent(sched, [(1, 0.1, 300), (2, 0.2, 3000)], until=0.999)
    assert [(d.rid, d.prefill_instance) for d in first] == [(1, 1)]
    lane = [d for d in sched.handle(None, 1.499) if isinstance(d, Dispatch)]
    assert [(d.rid, d.prefill_instance, d.prefill_rank) for d in lane] == [(2, 0, 1)]
