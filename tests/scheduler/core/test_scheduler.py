"""Scheduler orchestration: `handle(event, now)` and `next_deadline()` for SBS and the baselines.

Shape used throughout (see `fakes`): 2 prefill instances × 4 ranks × 1000 tokens per step, 1 decode
instance × 4 ranks × 10,000 KV tokens; a 500-token prompt costs 0.06 s, a full chunk 0.11 s.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core.events import (
    EngineHealth,
    LoadReported,
    RequestCancelled,
    RequestFinished,
    StepCompleted,
)
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.types import Dispatch, RankLoad, Reject, Role

from tests.scheduler.core.fakes import (
    CAPACITY,
    CHUNK,
    RANKS,
    FakeCluster,
    arrive,
    dispatches,
    make_scheduler,
    req,
)

BASELINES = ("round_robin", "random", "least_load", "power_of_two", "sglang")
LEAD_S = 0.002  # BatchingSettings.lead_s default


def busy_both(sched, t: float = 0.0, tokens: tuple[int, int] = (500, 500)) -> None:
    """Give each prefill instance one bypass step (rids 100 and 101, of `tokens`) at `t`."""
    for i, (rid, n) in enumerate(zip((100, 101), tokens, strict=True)):
        (d,) = arrive(sched, rid, t, n)
        assert (d.prefill_instance, d.reason) == (i, "bypass")


def rank_tokens(ds: list[Dispatch], tokens: dict[int, int]) -> dict[tuple[int, int], int]:
    """Prompt tokens per (prefill instance, rank) among whole (unchunked) dispatches."""
    out: Counter[tuple[int, int]] = Counter()
    for d in ds:
        out[(d.prefill_instance, d.prefill_rank)] += tokens[d.rid]
    return dict(out)


def loads(*waiting_tokens: int, waiting_reqs: int = 1, used: tuple[int, ...] = ()) -> tuple[RankLoad, ...]:
    used = used or (0,) * len(waiting_tokens)
    return tuple(
        RankLoad(r, 0, waiting_reqs if w else 0, w, u, 100_000)
        for r, (w, u) in enumerate(zip(waiting_tokens, used, strict=True))
    )


# -- low-load bypass ---------------------------------------------------------------------------


def test_idle_instance_gets_request_at_once() -> None:
    sched = make_scheduler()
    decisions = arrive(sched, 0, 3.0)
    assert decisions == [Dispatch(0, 0, 0, 0, 0, "bypass")]
    assert sched.next_deadline() is None
    assert sched.stats.bypass_releases == 1


def test_buffering_adds_no_latency_without_a_queue() -> None:
    sched = make_scheduler()
    spaced = [req(i, 0.5 * i) for i in range(10)]  # each step (0.06 s) ends long before the next arrival
    cluster = FakeCluster(sched).arrive(*spaced)
    cluster.run()
    assert [cluster.dispatch_time(r.rid) for r in spaced] == [r.arrival_s for r in spaced]
    assert {d.reason for d in cluster.dispatched()} == {"bypass"}


# -- staggered release ---------------------------------------------------------------------------


def test_arrivals_are_buffered_while_both_instances_are_busy() -> None:
    sched = make_scheduler()
    busy_both(sched)
    assert arrive(sched, 0, 0.01, 250) == []
    assert arrive(sched, 1, 0.02, 250) == []
    assert list(sched.buffer) == [0, 1]


def test_deadline_is_earliest_predicted_free_time_minus_lead() -> None:
    sched = make_scheduler()
    arrive(sched, 100, 0.0, 500)  # instance 0 free at 0.06
    arrive(sched, 101, 0.0, 1000)  # instance 1 free at 0.11
    arrive(sched, 0, 0.01, 250)
    free = CAPACITY.step_s([500], [0.0])
    assert sched.next_deadline() == pytest.approx(free - LEAD_S)
    assert sched.handle(None, free - LEAD_S - 1e-4) == []


def test_buffered_requests_are_released_together_and_water_filled() -> None:
    sched = make_scheduler()
    busy_both(sched)
    for rid in range(8):
        arrive(sched, rid, 0.01 + 0.001 * rid, 250)
    deadline = sched.next_deadline()
    released = dispatches(sched.handle(None, deadline))
    assert sorted(d.rid for d in released) == list(range(8))
    assert {(d.prefill_instance, d.reason) for d in released} == {(0, "staggered")}
    assert rank_tokens(released, dict.fromkeys(range(8), 250)) == {(0, r): 500 for r in range(RANKS)}
    assert sched.buffer == {}
    assert sched.next_deadline() is None


def test_a_cancelled_buffered_request_leaves_without_a_batch_slot() -> None:
    sched = make_scheduler()
    busy_both(sched)
    for rid in range(4):
        arrive(sched, rid, 0.01 + 0.001 * rid, 250)
    assert sched.handle(RequestCancelled(1), 0.02) == []
    released = dispatches(sched.handle(None, sched.next_deadline()))
    assert sorted(d.rid for d in released) == [0, 2, 3]
    assert sched.stats.cancelled == 1 and sched.buffer == {}


def test_a_cancelled_dispatched_request_frees_its_decode_rank() -> None:
    sched = make_scheduler()
    assert dispatches(arrive(sched, 7, 0.0, 500))
    assert 7 in sched.flights
    sched.handle(RequestCancelled(7), 0.01)
    assert 7 not in sched.flights


@pytest.mark.parametrize("policy", ["sglang", "least_load"])
def test_immediate_baselines_reject_retryable_when_no_decode_is_healthy(policy: str) -> None:
    sched = make_scheduler(policy)
    sched.handle(EngineHealth(Role.DECODE, 0, False), 0.0)
    (decision,) = arrive(sched, 1, 0.0, 300)
    assert isinstance(decision, Reject) and decision.retryable and "decode" in decision.reason
    sched.handle(EngineHealth(Role.DECODE, 0, True), 0.1)
    assert dispatches(arrive(sched, 2, 0.1, 300))


def test_sbs_holds_then_rejects_retryable_when_no_decode_is_healthy() -> None:
    sched = make_scheduler()
    sched.handle(EngineHealth(Role.DECODE, 0, False), 0.0)
    assert arrive(sched, 1, 0.0, 300) == []  # held, not sent to an unhealthy decode
    deadline = sched.next_deadline()
    assert deadline is not None
    (decision,) = sched.handle(None, deadline)
    assert isinstance(decision, Reject) and decision.retryable and "decode" in decision.reason
    assert sched.buffer == {}


def test_release_never_exceeds_a_rank_chunk() -> None:
    sched = make_scheduler()
    busy_both(sched)
    sizes = {rid: n for rid, n in enumerate([700, 300, 600, 400, 900, 100])}
    for rid, n in sizes.items():
        arrive(sched, rid, 0.01, n)
    released = dispatches(sched.handle(None, sched.next_deadline()))
    assert sorted(d.rid for d in released) == sorted(sizes)  # both instances are due: all go out
    per_rank = rank_tokens(released, sizes)
    assert max(per_rank.values()) <= CHUNK


def test_leftover_requests_stay_buffered_in_arrival_order_and_go_first() -> None:
    sched = make_scheduler()
    busy_both(sched, tokens=(500, 1000))  # instance 0 is due first, alone
    for rid in range(6):  # room for four full chunks
        arrive(sched, rid, 0.01 + 0.001 * rid, 1000)
    first = dispatches(sched.handle(None, sched.next_deadline()))
    assert sorted(d.rid for d in first) == [0, 1, 2, 3]
    assert list(sched.buffer) == [4, 5]
    for rid in (6, 7, 8, 9):
        arrive(sched, rid, 0.05, 1000)
    second = dispatches(sched.handle(None, sched.next_deadline()))
    assert second[0].prefill_instance == 1
    assert sorted(d.rid for d in second) == [4, 5, 6, 7]
    assert list(sched.buffer) == [8, 9]


def test_long_prompt_commits_its_carry_on_its_rank_in_next_step() -> None:
    sched = make_scheduler(adaptive_cap=False)  # full chunks: a capped step would make the carry's look slow
    (first,) = arrive(sched, 0, 0.0, 2500)
    arrive(sched, 1, 0.0, 1000)  # instance 1 busy as long as instance 0
    carry = sched.instances[0].carries[first.prefill_rank]
    assert (carry.rid, carry.remaining, carry.done) == (0, 1500, 1000)
    for rid in (2, 3, 4):
        arrive(sched, rid, 0.01, 300)
    released = dispatches(sched.handle(None, sched.next_deadline()))
    assert {d.prefill_instance for d in released} == {0}
    assert first.prefill_rank not in {d.prefill_rank for d in released}  # its rank is full with the carry
    assert (carry.remaining, carry.done) == (500, 2000)


def test_long_prompts_share_a_release_one_chunk_per_rank() -> None:
    sched = make_scheduler()
    busy_both(sched, tokens=(500, 1000))  # instance 0 is due first, alone
    for rid in range(3):
        arrive(sched, rid, 0.01, 2500)
    released = dispatches(sched.handle(None, sched.next_deadline()))
    assert sorted(d.rid for d in released) == [0, 1, 2]  # three ranks take a 1000-token chunk each
    assert len({d.prefill_rank for d in released}) == 3


def test_carry_only_step_is_predicted_when_engine_continues_a_chunked_prompt() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 2500)
    full = CAPACITY.step_s([CHUNK], [0.0])
    sched.handle(StepCompleted(0, 0.0, full, (), next_step_queued=True), full + 0.001)
    st0 = sched.instances[0]
    assert len(st0.planned) == 1
    assert st0.busy_until_s == pytest.approx(2 * full)


# -- step reports ----------------------------------------------------------------------------------


def test_step_completed_with_nothing_queued_makes_instance_idle() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)
    sched.handle(StepCompleted(0, 0.0, 0.07, (0,), next_step_queued=False), 0.071)
    st0 = sched.instances[0]
    assert st0.idle(0.071)
    assert st0.busy_until_s == pytest.approx(0.07)
    assert st0.step_ewma_s == pytest.approx(0.07)


def test_step_sent_after_engine_went_idle_is_kept() -> None:
    sched = make_scheduler()
    busy_both(sched)
    arrive(sched, 0, 0.01, 500)
    (late,) = dispatches(sched.handle(None, sched.next_deadline()))  # sent at 0.058, in transit
    assert late.prefill_instance == 0
    # The engine ended its step at 0.06 before the batch reached it, and said nothing was queued.
    sched.handle(StepCompleted(0, 0.0, 0.06, (100,), next_step_queued=False), 0.061)
    st0 = sched.instances[0]
    assert len(st0.planned) == 1
    assert not st0.idle(0.061)
    assert st0.busy_until_s == pytest.approx(0.06 + CAPACITY.step_s([500], [0.0]))


def test_step_report_feeds_prediction_error() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)  # predicted 0.06
    sched.handle(StepCompleted(0, 0.0, 0.12, (0,)), 0.121)
    assert sched.instances[0].error_ewma > 1.0


# -- guards: max hold and suspects ------------------------------------------------------------


def test_max_hold_force_releases_oldest_when_instances_never_report() -> None:
    sched = make_scheduler(max_hold_s=0.5)
    cluster = FakeCluster(sched, silent={0, 1})
    # 100 and 101 start both instances; 0 and 1 are staggered behind them; then nothing is due.
    cluster.arrive(req(100, 0.0), req(101, 0.0), req(0, 0.01), req(1, 0.059), req(2, 0.1))
    cluster.run(until=2.0)
    t, held = next((t, d) for t, d in cluster.log if d.rid == 2)
    assert held.reason == "max_hold"
    assert t == pytest.approx(0.1 + 0.5)
    assert sched.stats.forced_releases == 1


def test_overrunning_instance_is_skipped_until_it_reports_again() -> None:
    sched = make_scheduler()
    busy_both(sched)
    sched.handle(StepCompleted(1, 0.0, 0.06, (101,)), 0.061)  # instance 1 reports; 0 stays silent
    (d,) = arrive(sched, 0, 5.0)
    assert sched.instances[0].suspect
    assert d.prefill_instance == 1
    sched.handle(EngineHealth(Role.PREFILL, 1, healthy=False), 5.0)
    assert arrive(sched, 1, 5.01) == []  # nobody available: held
    (late,) = sched.handle(StepCompleted(0, 0.0, 5.05, (100,)), 5.051)
    assert not sched.instances[0].suspect
    assert (late.rid, late.prefill_instance) == (1, 0)


def test_deadline_moves_on_when_every_instance_is_suspect() -> None:
    sched = make_scheduler()
    busy_both(sched)
    assert arrive(sched, 0, 5.0) == []  # both instances overran by far: suspect
    assert all(st.suspect for st in sched.instances)
    deadline = sched.next_deadline()
    assert deadline is not None
    sched.handle(None, deadline)
    after = sched.next_deadline()
    assert after is None or after > deadline


# -- tier-3 snapshots -----------------------------------------------------------------------------


def test_load_report_replaces_counters_and_reapplies_unseen_dispatches() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)  # instance 0 rank 0, long before the snapshot
    (d,) = arrive(sched, 1, 0.098, 400)  # instance 1 rank 0, within transit of the snapshot
    assert (d.prefill_instance, d.prefill_rank) == (1, 0)
    sched.handle(LoadReported(Role.PREFILL, 0, 0.1, loads(700, 0, 300, 0)), 0.102)
    sched.handle(LoadReported(Role.PREFILL, 1, 0.1, loads(0, 0, 0, 0)), 0.102)
    assert sched.prefill.tokens == [700, 0, 300, 0, 400, 0, 0, 0]
    assert sched.prefill.count == [1, 0, 1, 0, 1, 0, 0, 0]


def test_load_report_readmits_a_suspect_instance() -> None:
    sched = make_scheduler()
    busy_both(sched)
    sched.handle(EngineHealth(Role.PREFILL, 1, healthy=False), 0.0)
    assert arrive(sched, 0, 5.0) == []  # instance 0 overran by far: suspect; 1 is down
    assert sched.instances[0].suspect
    decisions = sched.handle(LoadReported(Role.PREFILL, 0, 5.0, loads(0, 0, 0, 0)), 5.002)
    assert sched.instances[0].available
    assert [(d.rid, d.prefill_instance) for d in dispatches(decisions)] == [(0, 0)]


def test_completion_already_in_snapshot_is_not_subtracted_twice() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)
    sched.handle(StepCompleted(0, 0.0, 0.06, (0,)), 0.062)  # engine finished at 0.06, told at 0.062
    sched.handle(LoadReported(Role.PREFILL, 0, 0.061, loads(0, 0, 0, 0)), 0.063)  # taken after the finish
    assert min(sched.prefill.count) >= 0
    assert min(sched.prefill.tokens) >= 0


# -- decode side ----------------------------------------------------------------------------------


def test_decode_placement_spreads_batch_evenly() -> None:
    sched = make_scheduler()
    busy_both(sched)
    for rid in range(6):
        arrive(sched, rid, 0.01, 250)
    sched.handle(None, sched.next_deadline())
    assert sched.decode.count == [2, 2, 2, 2]


def test_request_finished_frees_decode_batch_and_kv() -> None:
    sched = make_scheduler()
    (d,) = arrive(sched, 0, 0.0, 500)
    assert sched.decode.count[d.decode_rank] == 1
    assert sched.decode.tokens[d.decode_rank] == 501  # prompt + first token
    sched.handle(StepCompleted(0, 0.0, 0.06, (0,)), 0.061)
    sched.handle(RequestFinished(0), 0.5)
    assert sched.decode.count == [0] * RANKS
    assert sched.decode.tokens == [0] * RANKS
    assert sched.prefill.count == [0] * (2 * RANKS)
    assert sched.flights == {}


def test_request_aborted_before_prefill_frees_prefill_counters() -> None:
    sched = make_scheduler("least_load")
    arrive(sched, 0, 0.0, 500)
    sched.handle(RequestFinished(0), 0.01)
    assert sched.prefill.tokens == [0] * (2 * RANKS)
    assert sched.decode.tokens == [0] * RANKS


def test_finishing_an_unknown_request_is_ignored() -> None:
    sched = make_scheduler()
    assert sched.handle(RequestFinished(42), 1.0) == []


def test_full_decode_falls_back_to_a_healthy_instance() -> None:
    sched = make_scheduler(decode=2, decode_kv=1000)  # one 900-token prompt per decode rank
    sched.handle(EngineHealth(Role.DECODE, 0, healthy=False), 0.0)
    busy_both(sched, tokens=(900, 900))
    for rid in range(4):  # two fit instance 1's free ranks; two find no room
        arrive(sched, rid, 0.01, 900)
    released = dispatches(sched.handle(None, sched.next_deadline()))
    assert len(released) == 4
    assert {d.decode_instance for d in released} == {1}


def test_decode_overflow_is_spread_over_ranks() -> None:
    sched = make_scheduler(decode_kv=1000)  # one 900-token prompt per decode rank
    busy_both(sched, tokens=(900, 900))
    for rid in range(6):  # two fit the free ranks; four wait in decode queues
        arrive(sched, rid, 0.01, 900)
    assert len(dispatches(sched.handle(None, sched.next_deadline()))) == 6
    assert max(sched.decode.count) - min(sched.decode.count) <= 1


# -- rejects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ("sbs", *BASELINES))
def test_prompt_longer_than_decode_kv_is_rejected_naming_sizes(policy: str) -> None:
    sched = make_scheduler(policy, decode_kv=10_000)
    (rej,) = arrive(sched, 0, 0.0, 10_000)
    assert isinstance(rej, Reject)
    assert "10000 tokens" in rej.reason
    assert "(10000 tokens)" in rej.reason
    assert not rej.retryable
    assert sched.stats.rejected == 1
    assert isinstance(arrive(sched, 1, 0.0, 9_999)[0], Dispatch)


# -- immediate baselines --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", BASELINES)
def test_baseline_dispatches_every_request_on_arrival(policy: str) -> None:
    sched = make_scheduler(policy, seed=3)
    for rid in range(20):
        (d,) = arrive(sched, rid, 0.001 * rid, 100 + 37 * rid)
        assert (d.rid, d.reason) == (rid, "immediate")
        assert sched.next_deadline() is None
    assert sched.buffer == {}


def test_round_robin_cycles_ranks() -> None:
    sched = make_scheduler("round_robin")
    ds = [arrive(sched, rid, 0.0)[0] for rid in range(10)]
    assert [(d.prefill_instance, d.prefill_rank) for d in ds] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (0, 0), (0, 1),
    ]  # fmt: skip
    assert [d.decode_rank for d in ds] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_least_load_picks_rank_with_fewest_outstanding_tokens() -> None:
    sched = make_scheduler("least_load")
    sched.handle(LoadReported(Role.PREFILL, 0, 0.0, loads(900, 800, 50, 700)), 0.0)
    sched.handle(LoadReported(Role.PREFILL, 1, 0.0, loads(600, 400, 500, 300)), 0.0)
    (a,) = arrive(sched, 0, 1.0, 200)
    assert (a.prefill_instance, a.prefill_rank) == (0, 2)  # 50 → 250
    (b,) = arrive(sched, 1, 1.0, 200)
    assert (b.prefill_instance, b.prefill_rank) == (0, 2)  # still least: 250 < 300
    (c,) = arrive(sched, 2, 1.0, 200)
    assert (c.prefill_instance, c.prefill_rank) == (1, 3)  # 450 > 300


def test_power_of_two_never_picks_the_most_loaded_rank() -> None:
    sched = make_scheduler("power_of_two", seed=7)
    sched.handle(LoadReported(Role.PREFILL, 0, 0.0, loads(10**6, 10, 20, 30)), 0.0)
    sched.handle(LoadReported(Role.PREFILL, 1, 0.0, loads(40, 50, 60, 70)), 0.0)
    picks = Counter()
    for rid in range(200):
        (d,) = arrive(sched, rid, 1.0, 1)
        picks[(d.prefill_instance, d.prefill_rank)] += 1
    assert picks[(0, 0)] == 0
    assert len(picks) > 1


def test_random_baseline_is_reproducible_for_a_seed() -> None:
    def ranks(seed: int) -> list[tuple[int, int]]:
        sched = make_scheduler("random", seed=seed)
        return [(d.prefill_instance, d.prefill_rank) for rid in range(30) for d in arrive(sched, rid, 0.0)]

    assert ranks(5) == ranks(5)
    assert ranks(5) != ranks(6)


def test_sglang_leaves_ranks_to_engine_and_round_robins_instances() -> None:
    sched = make_scheduler("sglang")
    ds = [arrive(sched, rid, 0.0)[0] for rid in range(5)]
    assert [d.prefill_instance for d in ds] == [0, 1, 0, 1, 0]
    assert {d.prefill_rank for d in ds} == {None}
    assert {d.decode_rank for d in ds} == {None}
    assert sched.instances[0].unpinned_tokens == 3 * 500
    sched.handle(StepCompleted(0, 0.0, 0.1, (0, 2)), 0.1)
    assert sched.instances[0].unpinned_tokens == 500


@pytest.mark.parametrize("policy", ("sbs", *BASELINES))
def test_unhealthy_prefill_instance_is_skipped(policy: str) -> None:
    sched = make_scheduler(policy, seed=1)
    sched.handle(EngineHealth(Role.PREFILL, 0, healthy=False), 0.0)
    cluster = FakeCluster(sched).arrive(*(req(rid, 0.01 * rid) for rid in range(12)))
    cluster.run()
    assert len(cluster.dispatched()) == 12
    assert {d.prefill_instance for d in cluster.dispatched()} == {1}


def test_recovered_instance_gets_work_again() -> None:
    sched = make_scheduler("round_robin")
    sched.handle(EngineHealth(Role.PREFILL, 0, healthy=False), 0.0)
    assert arrive(sched, 0, 0.0)[0].prefill_instance == 1
    sched.handle(EngineHealth(Role.PREFILL, 0, healthy=True), 0.1)
    assert {arrive(sched, rid, 0.1)[0].prefill_instance for rid in range(1, 9)} == {0, 1}


# -- invariants over random arrival sequences --------------------------------------------------

arrivals = st.lists(
    st.tuples(st.floats(0.0, 0.05, allow_nan=False), st.integers(1, 3000)), min_size=1, max_size=40
)


def play(policy: str, seq: list[tuple[float, int]], seed: int = 0) -> tuple[FakeCluster, list[str]]:
    sched = make_scheduler(policy, seed=seed)
    problems: list[str] = []

    def check(now: float, decisions: list) -> None:
        for d in dispatches(decisions):
            if not sched.instances[d.prefill_instance].available:
                problems.append(f"t={now}: rid {d.rid} sent to unavailable instance {d.prefill_instance}")
        idle = [i for i, s in enumerate(sched.instances) if s.available and s.idle(now)]
        if sched.buffer and idle:
            problems.append(f"t={now}: {len(sched.buffer)} buffered while instances {idle} idle")

    cluster = FakeCluster(sched)
    cluster.checks.append(check)
    t = 0.0
    requests = []
    for rid, (gap, tokens) in enumerate(seq):
        t += gap
        requests.append(req(rid, t, tokens))
    cluster.arrive(*requests)
    cluster.at(0.03, EngineHealth(Role.PREFILL, 1, healthy=False))
    cluster.at(0.3, EngineHealth(Role.PREFILL, 1, healthy=True))
    cluster.run()
    return cluster, problems


@pytest.mark.parametrize("policy", ["sbs", "random"])
@settings(max_examples=60, deadline=None)
@given(seq=arrivals)
def test_every_request_is_dispatched_exactly_once_to_available_instances(
    policy: str, seq: list[tuple[float, int]]
) -> None:
    cluster, problems = play(policy, seq, seed=11)
    assert problems == []
    assert sorted(d.rid for d in cluster.dispatched()) == list(range(len(seq)))
    assert cluster.rejected() == []
    sched = cluster.sched
    assert sched.buffer == {}
    assert sched.flights == {}  # every request finished and was released everywhere
    assert sched.decode.count == [0] * RANKS


@pytest.mark.parametrize("policy", ["sbs", "random"])
@settings(max_examples=30, deadline=None)
@given(seq=arrivals)
def test_decisions_are_identical_for_the_same_seed(policy: str, seq: list[tuple[float, int]]) -> None:
    first, _ = play(policy, seq, seed=4)
    second, _ = play(policy, seq, seed=4)
    assert first.log == second.log


def test_a_repeated_step_report_only_adds_its_requests() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)
    arrive(sched, 1, 0.0, 500)
    sched.handle(StepCompleted(0, 0.0, 0.12, (0,), next_step_queued=False), 0.121)
    st0 = sched.instances[0]
    before = (st0.step_ewma_s, st0.error_ewma, st0.busy_until_s, list(st0.planned))
    assert 1 not in sched.state.prefilled
    # the service heard the second answer of that step later: same end, its request completed too
    sched.handle(StepCompleted(0, 0.05, 0.07, (1,), next_step_queued=False), 0.2)
    assert 1 in sched.state.prefilled
    assert (st0.step_ewma_s, st0.error_ewma, st0.busy_until_s, list(st0.planned)) == before
    # a later step is a step of its own
    sched.handle(StepCompleted(0, 0.3, 0.05, (), next_step_queued=False), 0.351)
    assert st0.step_ewma_s != before[0] and st0.busy_until_s == pytest.approx(0.35)


def test_admission_lag_estimate_rises_fast_falls_slowly_and_moves_the_release() -> None:
    sched = make_scheduler()
    st0 = sched.instances[0]
    policy = sched.policy
    b = policy.batching  # type: ignore[attr-defined]
    assert sbs_timing.lead_s(st0, b) == b.lead_s  # nothing measured: the transit margin alone
    sched.handle(StepCompleted(0, 0.0, 0.1, (), admission_s=0.04), 0.101)
    assert st0.admission_s == pytest.approx(0.02)  # half way up
    sched.handle(StepCompleted(0, 0.2, 0.1, (), admission_s=0.04), 0.301)
    assert st0.admission_s == pytest.approx(0.03)
    sched.handle(StepCompleted(0, 0.4, 0.1, (), admission_s=0.0), 0.501)  # none measured: unchanged
    assert st0.admission_s == pytest.approx(0.03)
    sched.handle(StepCompleted(0, 0.6, 0.1, (), admission_s=0.01), 0.701)
    assert 0.03 - 0.5 * 0.02 < st0.admission_s < 0.03  # falls by the step weight: slower than it rose
    running = st0.planned[0][1] if st0.planned else st0.step_ewma_s
    margin = st0.admission_s + 2 * st0.step_dev * running
    assert sbs_timing.lead_s(st0, b) == pytest.approx(b.lead_s + margin)
