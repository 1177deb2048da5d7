"""The engine's snapshot corrects which chunk a rank's long prompt is on (`chunk_sync`).

Shape as in `fakes`: one prefill instance of 4 ranks × 1000-token chunks.
"""

from __future__ import annotations

import pytest
from sbs.scheduler.core import chunk_sync, engine_steps
from sbs.scheduler.core.events import LoadReported, RequestCancelled, StepCompleted
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.state import Carry
from sbs.scheduler.core.types import RankLoad, Role
from sbs.settings import scheduling

from tests.scheduler.core.fakes import CAPACITY, CHUNK, arrive, make_scheduler


def load(rank: int, waiting_tokens: int) -> RankLoad:
    return RankLoad(rank, 0, 1 if waiting_tokens else 0, waiting_tokens, 0, 100_000)


# -- reading a snapshot -----------------------------------------------------------------------------


def test_a_chunked_prompts_remaining_is_the_snapshots_tokens_less_the_requests_behind_it() -> None:
    queued = [
        {2: (400, 0.0, False), 1: (3500, 0.0, True), 7: (600, 0.2, False)},
        {},
        {3: (1800, 0.0, True)},
        {4: (2000, 0.9, True)},
    ]
    loads = (load(0, 1500 + 600), load(1, 0), load(2, 1800), load(3, 1200))
    # rank 0: 1500 of request 1 left (request 2, sent with it, may be done: not counted; request 7 waits
    # behind it); rank 2: request 3 not started; rank 3: request 4 sent too late for the snapshot
    assert chunk_sync.in_progress(queued, loads, 0.5) == {0: (1, 1500, 3500)}


def test_a_request_sent_with_the_chunked_prompt_and_still_waiting_only_lengthens_its_remaining() -> None:
    queued = [{1: (3500, 0.0, True), 2: (400, 0.0, False)}]
    assert chunk_sync.in_progress(queued, (load(0, 1500 + 400),), 0.5) == {0: (1, 1900, 3500)}


def test_only_a_prompt_planned_in_chunks_is_taken_for_the_one_in_progress() -> None:
    # Request 5 (unchunked, oldest) may have started after request 6 (the handshakes of a release end
    # in any order): 600 tokens done are not read as 600 of request 5's.
    queued = [{5: (3000, 0.0, False), 6: (900, 0.0, False)}]
    assert chunk_sync.in_progress(queued, (load(0, 3300),), 1.0) == {}


def test_a_snapshot_that_fits_no_prompt_in_progress_says_nothing() -> None:
    queued = [{1: (3500, 0.0, True), 2: (400, 0.5, False)}, {5: (900, 0.0, True)}]
    # rank 0: no more than the request behind it (request 1 finished, its answer in transit); rank 1:
    # no tokens
    assert chunk_sync.in_progress(queued, (load(0, 300), load(1, 0)), 1.0) == {}


# -- correcting the carries ------------------------------------------------------------------------


def long_prompt_released() -> tuple[Scheduler, int]:
    """A 3500-token prompt bypassed to the idle instance at t=0: its rank and the carry of 2500."""
    sched = make_scheduler(prefill=1)
    (d,) = arrive(sched, 1, 0.0, 3500)
    rank = d.prefill_rank
    assert rank is not None and sched.instances[0].carries[rank] == Carry(1, rank, 2500, 1000)
    assert sched.state.queued[rank] == {1: (3500, 0.0, True)}
    return sched, rank


def snapshot(sched: Scheduler, rank: int, tokens: int, at: float = 0.3) -> None:
    """Instance 0's snapshot at `at`: `tokens` uncached tokens waiting on `rank`, none elsewhere."""
    loads = tuple(load(r, tokens if r == rank else 0) for r in range(4))
    sched.handle(LoadReported(Role.PREFILL, 0, at, loads), at)


def test_a_carry_counted_a_chunk_ahead_of_the_engine_is_set_back_by_the_snapshot() -> None:
    # The core believed two chunks done and one left; the engine, late, is only on its second chunk.
    sched, rank = long_prompt_released()
    st0 = sched.instances[0]
    st0.carries[rank] = Carry(1, rank, 500, 3000)
    snapshot(sched, rank, 2500)
    assert st0.carries[rank] == Carry(1, rank, 2500 - CHUNK, 2000)  # what the running step leaves


def test_a_prompt_the_running_step_finishes_loses_its_carry_and_an_unseen_one_keeps_its_own() -> None:
    sched, rank = long_prompt_released()
    st0 = sched.instances[0]
    other = (rank + 1) % 4
    engine_steps.roll_carries(st0, 0.299, CAPACITY)  # as a release's tick does first
    st0.carries[other] = Carry(9, other, 2000, 1000)  # released just before the snapshot was taken
    sched.state.queue_prefill(0, [other], [9], [3000], [2000], 0.299)
    snapshot(sched, rank, 800)
    assert rank not in st0.carries and st0.carries[other] == Carry(9, other, 2000, 1000)


def test_a_snapshot_of_a_prompt_not_started_leaves_the_carry_as_planned() -> None:
    sched, rank = long_prompt_released()
    snapshot(sched, rank, 3500, at=0.001)  # the first chunk has not begun (or the snapshot predates it)
    assert sched.instances[0].carries[rank] == Carry(1, rank, 2500, 1000)


def test_a_snapshot_first_retires_the_steps_the_core_has_not_yet_rolled() -> None:
    # No request arrived since the release at 0, so no tick rolled the carry: the core still believes
    # the first chunk's step (ended 0.11) is running. The engine, on time, is in the third chunk at
    # 0.25 (500 left after it). The second and third chunks' steps go on the timeline, not lost: the
    # instance is busy until the third ends at 0.33, and the last 500 tokens follow (before the fix
    # the core took the snapshot's running step for the one it believed running, and had the rank
    # free at 0.11 + the last chunk).
    sched, rank = long_prompt_released()
    st0 = sched.instances[0]
    snapshot(sched, rank, 1500, at=0.25)
    assert st0.carries[rank] == Carry(1, rank, 500, 3000)
    assert st0.busy_until_s == pytest.approx(0.33) and st0.planned[-1] == pytest.approx((0.22, 0.11))


@pytest.mark.parametrize("told", [True, False])
def test_a_prompt_the_snapshot_shows_going_on_keeps_its_rank_busy(told: bool) -> None:
    sched, rank = long_prompt_released()
    st0 = sched.instances[0]
    st0.carries.clear()  # the core believed the prompt done
    sched.handle(StepCompleted(0, 0.0, 0.11, (), next_step_queued=True), 0.2)
    if told:  # the engine, late, is on the prompt's second chunk; its third follows
        snapshot(sched, rank, 2000)
    out = arrive(sched, 10, 0.31, 400)
    if told:  # the third chunk is predicted from the second's end: the request waits for that step
        assert out == [] and st0.planned[-1] == pytest.approx((0.22, 0.11)) and not st0.carries
    else:  # the rank looked free: the request goes at once, to queue behind the chunks there
        assert [d.prefill_rank for d in out] == [rank] and st0.planned[-1] == pytest.approx((0.31, 0.05))


def test_answers_and_cancellations_take_requests_off_their_rank_queue() -> None:
    sched = make_scheduler(prefill=2)
    arrive(sched, 1, 0.0, 3500)
    (d2,) = arrive(sched, 2, 0.0, 300)
    assert d2.prefill_instance == 1 and sched.state.queued[4 + d2.prefill_rank] == {2: (300, 0.0, False)}
    sched.handle(RequestCancelled(2), 0.01)
    sched.handle(StepCompleted(0, 0.0, 0.4, (1,), next_step_queued=False), 0.4)
    assert sched.state.queued == [{}] * 8


def test_with_chunk_sync_off_a_snapshot_leaves_the_carries_to_the_cores_own_steps() -> None:
    sched, _ = long_prompt_released()
    off = Scheduler(
        sched.state.prefill_specs,
        sched.state.decode_specs,
        settings=scheduling.SchedulerSettings(policy=scheduling.SbsPolicy(chunk_sync=False)),
        capacity=CAPACITY,
    )
    (d,) = arrive(off, 1, 0.0, 3500)
    snapshot(off, d.prefill_rank, 2500)
    assert off.instances[0].carries[d.prefill_rank] == Carry(1, d.prefill_rank, 2500, 1000)
    assert sched.state.chunk_sync and not off.state.chunk_sync
    assert not any(off.state.queued)  # nothing booked that nothing reads
