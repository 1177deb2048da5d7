"""A rebuild over a new membership (`Scheduler.rebuilt`, `carry`) keeps what the core knows.

Shape as in `fakes`: prefill instances of 4 ranks × 1000 tokens (a 500-token prompt costs 0.06 s),
one decode instance of 4 ranks.
"""

from __future__ import annotations

import random

import pytest
from sbs.scheduler.core.carry import match
from sbs.scheduler.core.events import RequestArrived, RequestFinished, StepCompleted
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Dispatch, InstanceSpec, Role

from tests.scheduler.core.fakes import (
    CAPACITY,
    FakeCluster,
    arrive,
    decode_specs,
    make_scheduler,
    prefill_specs,
    req,
)


def busy_scheduler() -> Scheduler:
    """SBS over prefill-0 and prefill-1: both busy with a bypass step from t=0 (prefill-0 also with the
    rest of a chunked 2500-token prompt), one step of prefill-0 reported, three requests buffered."""
    sched = make_scheduler()
    (d0,) = arrive(sched, 1, 0.0, 2500)
    (d1,) = arrive(sched, 2, 0.0, 500)
    assert (d0.prefill_instance, d1.prefill_instance) == (0, 1)
    step = sched.instances[0].planned[0][1]
    # prefill-0's first step ran 1.5× its prediction and the chunked prompt's next chunk follows.
    assert sched.handle(StepCompleted(0, 0.0, 1.5 * step, (), True), 1.5 * step) == []
    for rid in (3, 4, 5):
        assert arrive(sched, rid, 0.01) == []
    return sched


def fresh_scheduler(sched: Scheduler, prefill: list[InstanceSpec]) -> Scheduler:
    """What a rebuild built before this change: a core from scratch."""
    return Scheduler(prefill, sched.state.decode_specs, settings=sched.settings, capacity=CAPACITY)


def test_a_rebuild_from_scratch_forgets_that_instances_are_busy() -> None:
    """The issue: every instance of a new core looks idle, so buffered work is bypassed into engines
    that are busy (and queues there)."""
    old = busy_scheduler()
    new = fresh_scheduler(old, prefill_specs(3))
    assert all(st.idle(0.02) and st.step_ewma_s == 0.0 for st in new.instances)
    assert not new.flights and sum(new.prefill.tokens) == 0


def test_a_rebuild_keeps_the_beliefs_about_instances_in_both_memberships() -> None:
    old = busy_scheduler()
    new = old.rebuilt(prefill_specs(3), decode_specs(1), 0.02)
    for i in (0, 1):
        a, b = old.instances[i], new.instances[i]
        assert (b.busy_until_s, list(b.planned), b.step_ewma_s, b.error_ewma) == (
            a.busy_until_s,
            list(a.planned),
            a.step_ewma_s,
            a.error_ewma,
        )
        assert b.carries == a.carries and b.carries is not a.carries
    assert new.instances[0].carries and new.instances[0].error_ewma > 1.0
    assert new.instances[2].idle(0.0) and new.instances[2].step_ewma_s == 0.0
    assert new.prefill.count[:8] == old.prefill.count and new.prefill.tokens[:8] == old.prefill.tokens
    assert new.prefill.count[8:] == [0] * 4
    assert new.decode.count == old.decode.count and new.decode.tokens == old.decode.tokens
    assert new.flights == old.flights
    queued, was = new.state.queued, old.state.queued
    assert queued[:8] == was and queued[0] is not was[0] and queued[8:] == [{}] * 4
    assert any(queued[:4])  # prefill-0's chunked prompt, for `chunk_sync`
    assert list(new.buffer) == list(old.buffer) == [3, 4, 5]
    # The old core is left as it was.
    assert old.instances[0].carries and len(old.instances[2:]) == 0


def test_after_a_rebuild_only_the_new_instance_gets_a_bypass_release() -> None:
    old = busy_scheduler()
    new = old.rebuilt(prefill_specs(3), decode_specs(1), 0.02)
    out = new.handle(None, 0.02)
    assert {(d.prefill_instance, d.reason) for d in out if isinstance(d, Dispatch)} == {(2, "bypass")}
    # Built from scratch (buffered requests fed again), the busy prefill-0 and prefill-1 get one each.
    from_scratch = fresh_scheduler(old, prefill_specs(3))
    out = [d for rid in (3, 4, 5) for d in from_scratch.handle(RequestArrived(req(rid, 0.01)), 0.02)]
    assert {(d.prefill_instance, d.reason) for d in out if isinstance(d, Dispatch)} == {
        (0, "bypass"),
        (1, "bypass"),
        (2, "bypass"),
    }


def test_a_rebuild_over_the_same_membership_changes_no_decision() -> None:
    a = busy_scheduler()
    b = a.rebuilt(prefill_specs(2), decode_specs(1), 0.02)
    events = [
        (None, 0.03),
        (RequestArrived(req(6, 0.04, 800)), 0.04),
        (StepCompleted(1, 0.0, 0.07, (2,), False), 0.07),
        (None, 0.2),
        (RequestFinished(2, 0.3), 0.3),
        (StepCompleted(0, 0.2, 0.12, (1,), False), 0.33),
        (None, 0.4),
        (None, 1.0),
    ]
    for ev, t in events:
        assert a.handle(ev, t) == b.handle(ev, t)
        assert a.next_deadline() == b.next_deadline()
    assert a.flights == b.flights and a.prefill.tokens == b.prefill.tokens


def test_finishing_carried_flights_frees_the_new_core_and_legs_on_removed_instances_are_dropped() -> None:
    old = busy_scheduler()
    # prefill-0 leaves (its request's decode leg stays on decode-0); prefill-1 and decode-0 stay.
    new = old.rebuilt(prefill_specs(2)[1:], decode_specs(1), 0.02)
    assert new.flights[2][0] == 0 and 1 in new.state.prefilled
    assert new.prefill.count == old.prefill.count[4:8]
    for rid in (1, 2):
        new.state.on_finished(rid, 0.5, None)
    assert sum(new.prefill.count) == sum(new.prefill.tokens) == 0
    assert sum(new.decode.count) == sum(new.decode.tokens) == 0
    # decode-0 leaves: no flight keeps a leg anywhere but prefill-0.
    moved = old.rebuilt(prefill_specs(2), [InstanceSpec("decode-1", Role.DECODE, 4, 0, 10_000)], 0.02)
    assert {f[4] for f in moved.flights.values()} == {None} and sum(moved.decode.count) == 0
    moved.state.on_finished(1, 0.5, None)
    moved.state.on_finished(2, 0.5, None)
    assert sum(moved.prefill.count) == 0


def test_a_reshaped_instance_starts_fresh_and_a_buffered_prompt_too_long_now_is_not_carried() -> None:
    old = busy_scheduler()
    old.handle(RequestArrived(req(9, 0.01, 9000)), 0.01)
    reshaped = [InstanceSpec("prefill-0", Role.PREFILL, 2, 1000, 100_000), *prefill_specs(2)[1:]]
    small = decode_specs(1, kv=5000)
    new = old.rebuilt(reshaped, small, 0.02)
    assert new.instances[0].idle(0.0) and new.instances[1].busy_until_s == old.instances[1].busy_until_s
    assert 1 not in new.flights and 2 in new.flights
    assert 9 in old.buffer and list(new.buffer) == [3, 4, 5]


def test_match_pairs_equal_specs_once_each() -> None:
    p = prefill_specs(3)
    assert match([p[0], p[1], p[0]], [p[0], p[2], p[0], p[0]]) == {0: 0, 2: 2}


@pytest.mark.parametrize("policy", ["round_robin", "sglang", "eft"])
def test_the_immediate_policies_carry_their_flights(policy: str) -> None:
    old = make_scheduler(policy)
    for rid in range(4):
        arrive(old, rid, 0.0)
    new = old.rebuilt(prefill_specs(3), decode_specs(1), 0.01)
    assert new.flights == old.flights and not new.buffer
    assert [st.unpinned_tokens for st in new.instances[:2]] == [st.unpinned_tokens for st in old.instances]
    for rid in range(4):
        new.handle(RequestFinished(rid, 0.1), 0.1)
    assert not new.flights and sum(new.prefill.tokens) == 0
    assert all(st.unpinned_tokens == 0 for st in new.instances)


def test_under_load_a_core_rebuilt_every_100_ms_decides_exactly_as_one_never_rebuilt() -> None:
    """Busy engines, chunked prompts and step reports in flight across the rebuilds (same membership)."""
    rng = random.Random(7)
    t, requests = 0.0, []
    for rid in range(400):
        t += rng.expovariate(60.0)
        requests.append(req(rid, t, rng.randint(100, 2500)))
    logs = []
    for rebuild in (False, True):
        cluster = FakeCluster(make_scheduler(prefill=3)).arrive(*requests)
        for k in range(1, 80):
            cluster.run(until=0.1 * k)
            if rebuild:
                old = cluster.loop.scheduler
                cluster.sched = cluster.loop.scheduler = old.rebuilt(
                    old.prefill_specs, decode_specs(1), 0.1 * k
                )
        cluster.run()
        logs.append(cluster.log)
    assert len(logs[0]) == len(logs[1]) == len(requests)
    assert logs[0] == logs[1]
