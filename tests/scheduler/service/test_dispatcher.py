"""The dispatcher without engines: admission, the core's decisions, orphans, rebuilds, step inference.

Engines are static records with their whole shape given (no `/server_info`) at a closed port; the
poll period is long, so they stay usable for the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sbs.scheduler.core.events import StepCompleted
from sbs.scheduler.core.types import Dispatch, Role
from sbs.scheduler.service import protocol, step_inference
from sbs.scheduler.service.config_file import build_settings
from sbs.scheduler.service.discovery import ChangeKind, EngineChange, EngineRecord, StaticSource
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.scheduler.service.jobs import Job, JobState, Overloaded
from sbs.scheduler.service.metrics import Metrics
from sbs.settings.service import EstimateSettings

DEAD = "http://127.0.0.1:9"
SHAPE = {"dp_size": 2, "chunk_tokens": 1000, "kv_capacity_tokens": 100_000, "bootstrap_port": 1}


def record(key: str, role: Role, revision: str = "static") -> EngineRecord:
    return EngineRecord(
        key,
        role,
        DEAD,
        revision=revision,
        dp_size=2,
        chunk_tokens=1000,
        kv_capacity_tokens=100_000,
        bootstrap_port=1,
    )


async def make_dispatcher(policy: str = "sbs", *, prefill: int = 1, **settings: Any) -> Dispatcher:
    data: dict[str, Any] = {
        "scheduler": {"policy": {"type": policy}},
        "engines": {
            "prefill": [{"url": DEAD, **SHAPE} for _ in range(prefill)],
            "decode": [{"url": DEAD, **SHAPE}],
            "loads_period_s": 60,
        },
        # A 1000-token step is predicted to take 10 s: whatever is not bypassed stays buffered.
        "capacity": {"fixed_s": 0.1, "per_token_s": 0.01, "per_pair_s": 0},
        **settings,
    }
    dispatcher = Dispatcher(build_settings(data), Metrics())
    await dispatcher.start([StaticSource(dispatcher.settings.engines)])
    async with asyncio.timeout(2):
        while not dispatcher.ready():
            await asyncio.sleep(0.001)
    return dispatcher


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    d = await make_dispatcher()
    yield d
    await d.close()


def accept(dispatcher: Dispatcher, tokens: int = 500, **kw: Any) -> Job:
    body = {"input_ids": [1] * tokens}
    parsed = protocol.parse(protocol.GENERATE, body, EstimateSettings())
    return dispatcher.accept(protocol.GENERATE, body, parsed, f"r{len(dispatcher.jobs)}", kw.get("timeout"))


def counted(dispatcher: Dispatcher, name: str) -> float:
    return sum(s.value for f in dispatcher.metrics.registry.collect() for s in f.samples if s.name == name)


def steps_fed(d: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> list[StepCompleted]:
    """The `StepCompleted` events the dispatcher feeds its cores from now on (they still go in)."""
    seen: list[StepCompleted] = []
    feed = d.feed

    def spy(pool: Any, event: Any) -> None:
        if isinstance(event, StepCompleted):
            seen.append(event)
        feed(pool, event)

    monkeypatch.setattr(d, "feed", spy)
    return seen


def sent_to_prefill(d: Dispatcher, n: int) -> tuple[list[Job], Any]:
    """`n` accepted jobs whose prefill side was sent to prefill-0 now, and that engine."""
    jobs = [accept(d) for _ in range(n)]
    pe = d.registry.engines["prefill-0"]
    for j in jobs:
        j.prefill_engine = pe
        d.steps.prefill_sent(j, pe)
    return jobs, pe


async def test_an_idle_instance_gets_work_at_once_and_the_next_request_waits_in_the_buffer(
    dispatcher: Dispatcher,
) -> None:
    first, second = accept(dispatcher), accept(dispatcher)
    assert first.state is JobState.DISPATCHED and isinstance(first.decision.result(), Dispatch)
    assert first.decision.result().reason == "bypass"
    assert second.state is JobState.BUFFERED and not second.decision.done()
    assert dispatcher.metrics.registry.get_sample_value("sbs_buffered_requests") == 1
    assert dispatcher.metrics.registry.get_sample_value("sbs_outstanding_requests") == 2


async def test_admission_limits() -> None:
    d = await make_dispatcher(admission={"max_buffered_requests": 1, "max_outstanding_requests": 3})
    try:
        accept(d), accept(d)
        with pytest.raises(Overloaded) as err:
            accept(d)
        assert (err.value.status, err.value.reason) == (429, "buffer_full")
    finally:
        await d.close()


async def test_a_request_cancelled_while_buffered_is_freed_when_released(dispatcher: Dispatcher) -> None:
    first, second = accept(dispatcher), accept(dispatcher)
    dispatcher.finish(second, "deadline")
    dispatcher.finish(first, None)  # the instance is free: the core releases `second`, which is gone
    core = dispatcher.pools.by_revision["static"].core
    started = first.dispatched_s
    dispatcher.feed(
        dispatcher.pools.by_revision["static"],
        StepCompleted(0, started, dispatcher.now() - started, (first.rid,), False),
    )
    assert second.rid not in core.buffer and second.rid not in core.flights
    assert sum(core.decode.count) == 0 and sum(core.prefill.count) == 0
    assert counted(dispatcher, "sbs_requests_accepted_total") == 2
    assert (
        counted(dispatcher, "sbs_requests_completed_total")
        + counted(dispatcher, "sbs_requests_errored_total")
        == 2
    )


async def test_a_new_engine_rebuilds_the_core_and_buffered_requests_move_with_it(
    dispatcher: Dispatcher,
) -> None:
    first, second = accept(dispatcher), accept(dispatcher)
    old = dispatcher.pools.by_revision["static"]
    dispatcher.watcher.apply_change(EngineChange(ChangeKind.ADD, record("prefill-9", Role.PREFILL)))
    async with asyncio.timeout(2):
        while dispatcher.pools.by_revision["static"] is old:
            await asyncio.sleep(0.001)
    new = dispatcher.pools.by_revision["static"]
    assert [e.key for e in new.prefill] == ["prefill-0", "prefill-9"]
    # The buffered request moved to the new core, which sent it to the new, idle engine; prefill-0 is
    # still busy with `first`, whose flight the new core carries.
    assert second.decision.done() and isinstance(second.decision.result(), Dispatch)
    assert second.prefill_engine is new.prefill[1] and second.decision.result().reason == "bypass"
    assert new.generation == old.generation == first.generation == second.generation
    busy = new.core.instances[0]
    assert busy.planned and busy.busy_until_s == old.core.instances[0].busy_until_s
    assert set(new.core.flights) == {first.rid, second.rid} and sum(new.core.prefill.count[:2]) == 1
    dispatcher.finish(first, None)  # the new core frees what it holds
    assert set(new.core.flights) == {second.rid} and sum(new.core.prefill.count[:2]) == 0
    assert new.outstanding == 1


async def test_removing_the_last_prefill_of_a_revision_fails_its_buffered_requests_retryably(
    dispatcher: Dispatcher,
) -> None:
    accept(dispatcher)
    second = accept(dispatcher)
    rec = dispatcher.registry.engines["prefill-0"].record
    dispatcher.watcher.apply_change(EngineChange(ChangeKind.REMOVE, rec))
    assert not dispatcher.ready() and "static" not in dispatcher.pools.by_revision
    reject = second.decision.result()
    assert reject.retryable and "no usable engines" in reject.reason
    with pytest.raises(Overloaded) as err:
        accept(dispatcher)
    assert err.value.status == 503


async def test_prefill_answers_close_together_are_one_inferred_step(monkeypatch: pytest.MonkeyPatch) -> None:
    d = await make_dispatcher("round_robin")
    try:
        seen = steps_fed(d, monkeypatch)
        jobs, pe = sent_to_prefill(d, 3)
        d.steps.prefill_answered(jobs[0], pe, 0, True)
        d.steps.prefill_answered(jobs[1], pe, 0, True)
        d.steps.prefill_answered(jobs[2], pe, 0, False)  # failed or cancelled: not a completion
        await asyncio.sleep(0.02)
        assert len(seen) == 1
        step = seen[0]
        assert step.finished_rids == (jobs[0].rid, jobs[1].rid) and not step.next_step_queued
        assert jobs[0].prefilled and not jobs[2].prefilled
    finally:
        await d.close()


async def test_engine_failure_makes_it_unusable_to_the_core() -> None:
    d = await make_dispatcher("least_load", prefill=2)
    try:
        d.watcher.engine_failed(d.registry.engines["prefill-0"])
        assert {e.engine: e.state for e in d.snapshot().engines}["prefill-0"] == "suspect"
        assert all(accept(d).decision.result().prefill_instance == 1 for _ in range(5))
    finally:
        await d.close()


async def test_stamped_prefill_answers_time_their_steps_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    d = await make_dispatcher("round_robin")
    try:
        seen = steps_fed(d, monkeypatch)
        shift = 1_000_000.0
        monkeypatch.setattr(step_inference, "wall_clock", lambda: d.now() + shift)
        jobs, pe = sent_to_prefill(d, 5)
        t0 = d.now() + shift  # Unix seconds of "now"
        # step A ran jobs 0 and 1 (stamped a few µs apart, as two DP ranks do); job 2 was the last
        # chunk of a prompt begun earlier and finished in step B
        d.steps.prefill_answered(jobs[1], pe, 0, True, (t0 - 0.30, t0 - 0.2, -1.0))
        d.steps.prefill_answered(jobs[0], pe, 0, True, (t0 - 0.30, t0 - 0.2 + 1e-5, -1.0))
        d.steps.prefill_answered(jobs[2], pe, 0, True, (t0 - 0.9, t0 - 0.05, -1.0))
        await asyncio.sleep(0.02)
        assert [s.finished_rids for s in seen] == [(jobs[1].rid, jobs[0].rid), (jobs[2].rid,)]
        a, b = seen
        assert a.started_s == pytest.approx(t0 - 0.30 - shift) and a.duration_s == pytest.approx(0.1)
        assert b.started_s == pytest.approx(a.started_s + a.duration_s)  # it went on after step A
        assert b.duration_s == pytest.approx(0.15)
        assert a.timed and not b.timed  # no request of step B entered in it: only its end is known
        assert not (a.next_step_queued or b.next_step_queued)  # jobs 3, 4 were sent after both ended
        # a late answer of step B: reported again with step B's end, adding only its request
        d.steps.prefill_answered(jobs[3], pe, 0, True, (t0 - 0.2, t0 - 0.05 + 1e-4, -1.0))
        await asyncio.sleep(0.02)
        late = seen[-1]
        assert late.finished_rids == (jobs[3].rid,)
        assert late.started_s + late.duration_s == pytest.approx(b.started_s + b.duration_s, abs=1e-9)
        assert jobs[3].prefilled
    finally:
        await d.close()


async def test_stamped_answers_time_admission_unless_it_was_seen_at_a_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = await make_dispatcher("round_robin")
    try:
        steps = steps_fed(d, monkeypatch)
        shift = 1_000_000.0
        monkeypatch.setattr(step_inference, "wall_clock", lambda: d.now() + shift)
        t0 = d.now() + shift  # the jobs are sent now
        jobs, pe = sent_to_prefill(d, 4)
        # one step from t0 + 0.1 to t0 + 0.2: job 0 was schedulable 30 ms before it, job 1 at its start
        d.steps.prefill_answered(jobs[0], pe, 0, True, (t0 + 0.1, t0 + 0.2, 0.03))
        d.steps.prefill_answered(jobs[1], pe, 0, True, (t0 + 0.1, t0 + 0.2, 0.0))
        # the next step: job 2 became schedulable 5 ms after that step's end (a busy engine's poll),
        # job 3's answer has no queue_time
        d.steps.prefill_answered(jobs[2], pe, 0, True, (t0 + 0.205, t0 + 0.3, 0.0))
        d.steps.prefill_answered(jobs[3], pe, 0, True, (t0 + 0.205, t0 + 0.3, -1.0))
        await asyncio.sleep(0.02)
        assert [len(s.finished_rids) for s in steps] == [2, 2]
        assert steps[0].admission_s == pytest.approx(0.1, abs=0.01)  # the later of 70 and 100 ms
        assert steps[1].admission_s == 0.0  # nothing timed it
        assert d.pools.of(pe)[0].core.instances[0].admission_s == pytest.approx(0.05, abs=0.005)
    finally:
        await d.close()


async def test_unanswered_work_and_long_prompts_shape_the_reported_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = await make_dispatcher("round_robin")
    try:
        seen = steps_fed(d, monkeypatch)
        shift = 1_000_000.0
        monkeypatch.setattr(step_inference, "wall_clock", lambda: d.now() + shift)
        t0 = d.now() + shift  # the jobs are sent now
        jobs, pe = sent_to_prefill(d, 3)
        chunk = pe.spec.chunk_tokens
        jobs[1].request = dataclasses.replace(jobs[1].request, prompt_tokens=2 * chunk)
        # step A (t0+0.1 .. t0+0.2) finished job 0; jobs 1 and 2, sent before it ended, had not answered
        d.steps.prefill_answered(jobs[0], pe, 0, True, (t0 + 0.1, t0 + 0.2, -1.0))
        await asyncio.sleep(0.02)
        assert seen[-1].timed and seen[-1].next_step_queued
        # step B finished only job 1, a two-chunk prompt that entered in step A: B's start is unknown
        d.steps.prefill_answered(jobs[1], pe, 0, True, (t0 + 0.1, t0 + 0.5, -1.0))
        await asyncio.sleep(0.02)
        b = seen[-1]
        assert not b.timed and b.started_s == pytest.approx(t0 + 0.2 - shift)
        assert b.started_s + b.duration_s == pytest.approx(t0 + 0.5 - shift)
    finally:
        await d.close()
