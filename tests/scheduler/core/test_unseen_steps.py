"""Steps the core never hears of, or hears of without their start (SGLang reports no steps: only the
answers of the requests a step finished, `step_report`), and steps the engine starts by itself."""

from __future__ import annotations

import math

import pytest
from sbs.scheduler.core import engine_steps
from sbs.scheduler.core.events import StepCompleted
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.state import Carry
from sbs.scheduler.core.step_report import SAME_STEP_S, step_start

from tests.scheduler.core.fakes import CAPACITY, CHUNK, arrive, dispatches, make_scheduler

# -- when a reported step began -------------------------------------------------------------------


def test_a_request_that_entered_after_the_previous_report_times_the_step() -> None:
    assert step_start(1.2, 1.0, 1.5) == (1.2, True)


def test_only_continued_prompts_finished_the_step_starts_at_the_previous_end_untimed() -> None:
    assert step_start(-math.inf, 1.0, 1.5) == (1.0, False)
    assert step_start(1.0 + SAME_STEP_S / 2, 1.0, 1.5) == (1.0 + SAME_STEP_S / 2, False)


def test_nothing_bounds_the_start_of_a_first_untimed_step() -> None:
    assert step_start(-math.inf, -math.inf, 2.0) == (2.0, False)


# -- the core -------------------------------------------------------------------------------------


def test_an_untimed_report_leaves_the_step_averages_alone() -> None:
    sched = make_scheduler()
    arrive(sched, 0, 0.0, 500)
    st0 = sched.instances[0]
    sched.handle(StepCompleted(0, 0.0, 0.5, (0,), timed=False), 0.501)
    assert (st0.step_ewma_s, st0.error_ewma, st0.step_dev) == (0.0, 1.0, 0.0)
    assert 0 in sched.state.prefilled and st0.idle(0.501)


def test_a_timed_report_retires_the_releases_of_steps_that_finished_nothing() -> None:
    sched = make_scheduler(prefill=1)
    st0 = sched.instances[0]
    st0.planned.extend([(0.0, 0.11), (0.1, 0.11), (0.2, 0.06)])  # three steps sent; two reported nothing
    st0.busy_until_s = 0.28
    sched.handle(StepCompleted(0, 0.22, 0.06, (), next_step_queued=False), 0.281)
    assert not st0.planned
    assert st0.error_ewma == pytest.approx(1.0)  # compared with the last one's prediction (0.06)


def test_an_untimed_report_retires_the_steps_at_least_half_over_by_its_end() -> None:
    sched = make_scheduler(prefill=1)
    st0 = sched.instances[0]
    st0.planned.extend([(0.0, 0.2), (0.15, 0.2), (0.3, 0.2)])
    sched.handle(StepCompleted(0, 0.0, 0.3, (), next_step_queued=True, timed=False), 0.301)
    assert list(st0.planned) == [(0.3, 0.2)]  # the second was predicted to end at 0.35
    assert st0.busy_until_s == pytest.approx(0.5)


def test_a_release_split_by_the_engine_keeps_its_prediction_and_predicts_the_rest() -> None:
    sched = make_scheduler(prefill=1)
    state, st0 = sched.state, sched.instances[0]
    # One release at 0.2 put 20 tokens on rank 0 and 900 on rank 1, predicted as one 0.1 s step.
    for rid, rank, tokens in ((1, 0, 20), (2, 1, 900)):
        state.flights[rid] = (0, rank, tokens, 0, rank, tokens + 1)
        state.prefill.add(0, rank, 1, tokens, 0.2)
    st0.planned.append((0.2, 0.1))
    st0.busy_until_s = 0.3
    # Request 1 became schedulable first and ran alone; 2 runs in the step after it.
    alone = CAPACITY.step_s([20], [0.0])
    end = 0.2 + alone
    sched.handle(StepCompleted(0, 0.2, alone, (1,), next_step_queued=True), end + 0.001)
    assert st0.error_ewma == 1.0  # not a step of the release: says nothing of the prediction
    assert st0.busy_until_s == pytest.approx(end + CAPACITY.step_s([0, 900], [0.0, 900.0**2]))


def test_a_finished_chunked_prompt_drops_its_carry_even_if_its_chunks_went_unseen() -> None:
    sched = make_scheduler(prefill=1)
    (first,) = dispatches(arrive(sched, 0, 0.0, 2500))
    st0 = sched.instances[0]
    assert first.prefill_rank in st0.carries
    sched.handle(StepCompleted(0, 0.2, 0.06, (0,), next_step_queued=False, timed=False), 0.3)
    assert not st0.carries


def test_the_engine_continues_left_behind_work_within_a_chunk_per_rank() -> None:
    sched = make_scheduler(prefill=1, adaptive_cap=False)
    arrive(sched, 0, 0.0, 2 * CHUNK)  # a chunked prompt on one rank
    st0 = sched.instances[0]
    (rank,) = st0.carries
    sched.handle(StepCompleted(0, 0.0, 0.11, (), next_step_queued=True), 0.111)
    second = CAPACITY.step_s([CHUNK], [float(2 * CHUNK) ** 2 - CHUNK**2])  # its second chunk
    assert st0.busy_until_s == pytest.approx(0.11 + second)
    assert not st0.carries and rank is not None


def _one_step_of_two(sched: Scheduler) -> None:
    """Requests 0 and 1, 400 tokens each on ranks 0 and 1, released at 0 as one 0.05 s step."""
    state = sched.state
    for rid, rank in ((0, 0), (1, 1)):  # one step ran both
        state.flights[rid] = (0, rank, 400, 0, rank, 401)
        state.prefill.add(0, rank, 1, 400, 0.0)
    sched.instances[0].planned.append((0.0, 0.05))


def test_a_step_guessed_from_unanswered_work_is_dropped_when_the_answers_come() -> None:
    sched = make_scheduler(prefill=1)
    _one_step_of_two(sched)
    st0 = sched.instances[0]
    # The first answer of the step: the service still holds request 1 as sent and not answered.
    sched.handle(StepCompleted(0, 0.0, 0.05, (0,), next_step_queued=True), 0.051)
    guessed = CAPACITY.step_s([0, 400], [0.0, 400.0**2])
    assert st0.planned and st0.busy_until_s == pytest.approx(0.05 + guessed)
    # Its answer, with the same step's end: nothing was left behind after all.
    sched.handle(StepCompleted(0, 0.05 - 1e-6, 1e-6, (1,), timed=False), 0.06)
    assert not st0.planned and st0.busy_until_s == pytest.approx(0.05)


def test_a_step_guessed_from_a_carry_whose_prompt_ran_whole_is_dropped_when_its_answer_comes() -> None:
    # A capped release planned request 1 in two parts (300 of its 400 tokens left as a carry), but the
    # engine's chunk held it whole; the first answer of the step leaves the carry in place.
    sched = make_scheduler(prefill=1)
    _one_step_of_two(sched)
    st0 = sched.instances[0]
    st0.carries[1] = Carry(1, 1, 300, 100)
    sched.handle(StepCompleted(0, 0.0, 0.05, (0,), next_step_queued=True), 0.051)
    assert st0.planned and st0.busy_until_s > 0.05  # a continued chunk, as far as the core knows
    sched.handle(StepCompleted(0, 0.05 - 1e-6, 1e-6, (1,), timed=False), 0.06)
    assert not st0.carries and not st0.planned and st0.busy_until_s == pytest.approx(0.05)


def test_a_step_guessed_from_a_real_chunked_prompt_stands_through_the_steps_other_answers() -> None:
    sched = make_scheduler(prefill=1)
    _one_step_of_two(sched)
    st0 = sched.instances[0]
    st0.carries[1] = Carry(1, 1, 2 * CHUNK, 100)  # request 1 goes on for two more chunks
    sched.handle(StepCompleted(0, 0.0, 0.05, (0,), next_step_queued=True), 0.051)
    busy = st0.busy_until_s
    sched.handle(StepCompleted(0, 0.05 - 1e-6, 1e-6, (2,), timed=False), 0.06)  # another answer
    assert st0.carries and st0.planned and st0.busy_until_s == busy


def test_a_guess_from_a_carry_is_dropped_when_a_later_release_brought_the_carries_left() -> None:
    sched = make_scheduler(prefill=1)
    _one_step_of_two(sched)
    st0 = sched.instances[0]
    st0.carries[1] = Carry(1, 1, 2 * CHUNK, 100)  # request 1 seemed to go on
    sched.handle(StepCompleted(0, 0.0, 0.05, (0,), next_step_queued=True), 0.051)  # guessed from it
    st0.planned.append((0.06, 0.1))  # then a release, with a chunked prompt of its own on rank 2
    st0.busy_until_s += 0.1
    st0.carries[2] = Carry(5, 2, CHUNK, 0)
    sched.handle(StepCompleted(0, 0.05 - 1e-6, 1e-6, (1,), timed=False), 0.07)  # request 1 ran whole
    assert 1 not in st0.carries and list(st0.planned) == [(0.06, 0.1)]
    assert st0.busy_until_s == pytest.approx(0.15)


def _chunk_step_then_release(sched: Scheduler) -> None:
    """Instance 0: a guessed chunk-only step (0.0-0.11), then a release queued behind it (0.11-0.22),
    and a prompt that goes on for three more chunks, so neither step answers anything."""
    st0 = sched.instances[0]
    st0.carries[0] = Carry(9, 0, 3 * CHUNK, CHUNK)
    st0.planned.extend([(0.0, 0.11), (0.1, 0.11)])
    st0.busy_until_s = 0.22


def test_time_retires_a_chunk_step_that_sends_no_answer_so_the_instance_is_offered_work_again() -> None:
    # Unretired, the stale guess kept the instance from ever being offered work (or taken as a
    # long-prompt lane) until an answer came.
    sched = make_scheduler(prefill=1)
    _chunk_step_then_release(sched)
    st0 = sched.instances[0]
    b = sched.policy.batching
    assert sbs_timing.release_time(st0, b=b, idle_from=-math.inf) == math.inf
    arrive(sched, 1, 0.15, 500)  # any event runs the timer
    assert list(st0.planned) == [(0.1, 0.11)] and st0.busy_until_s == pytest.approx(0.22)
    assert sbs_timing.release_time(st0, b=b, idle_from=-math.inf) < math.inf


def test_when_every_planned_step_is_over_the_engine_goes_on_with_the_carries() -> None:
    sched = make_scheduler(prefill=1)
    _chunk_step_then_release(sched)
    st0 = sched.instances[0]
    engine_steps.roll_carries(st0, 0.25, CAPACITY)
    assert list(st0.planned) == [(0.22, pytest.approx(0.11))] and st0.busy_until_s == pytest.approx(0.33)
    assert st0.carries[0].remaining == 2 * CHUNK
