"""A membership change rebuilds a pool's core from the old one (`Pools.rebuild`, `Scheduler.rebuilt`):
the engines' state, the flights and the buffer move over; no request is lost or sent twice."""

from __future__ import annotations

import asyncio

from sbs.scheduler.core.types import Dispatch, Reject
from sbs.scheduler.service.discovery import ChangeKind, EngineChange
from sbs.scheduler.service.jobs import JobState

from tests.scheduler.service.test_dispatcher import accept, make_dispatcher


async def test_removing_an_engine_keeps_the_flights_on_the_others_and_the_buffer() -> None:
    d = await make_dispatcher(prefill=2)
    try:
        first, second, third = accept(d), accept(d), accept(d)
        assert [j.state for j in (first, second, third)] == [JobState.DISPATCHED] * 2 + [JobState.BUFFERED]
        assert (first.prefill_engine.key, second.prefill_engine.key) == ("prefill-0", "prefill-1")
        old = d.pools.by_revision["static"]
        pe1 = d.registry.engines["prefill-1"]
        d.steps.prefill_sent(second, pe1)
        d.watcher.apply_change(EngineChange(ChangeKind.REMOVE, d.registry.engines["prefill-0"].record))
        new = d.pools.by_revision["static"]
        assert new is not old and [e.key for e in new.prefill] == ["prefill-1"]
        # prefill-1 is still busy with `second`: `third` stays buffered, once, and is not sent again.
        assert list(new.core.buffer) == [third.rid] and not third.decision.done()
        assert new.core.instances[0].busy_until_s == old.core.instances[1].busy_until_s
        # `first`'s prefill engine left; its decode leg is still accounted, and freed when it ends.
        assert first.rid in new.core.state.prefilled and first.generation == new.generation
        used = sum(new.core.decode.tokens)
        d.finish(first, None)
        assert sum(new.core.decode.tokens) == used - first.request.prompt_tokens - 1
        # The answer of a prefill sent before the rebuild completes an inferred step of the new core.
        d.steps.prefill_answered(second, pe1, 0, True)
        async with asyncio.timeout(2):
            while second.rid not in new.core.state.prefilled:
                await asyncio.sleep(0.005)
        # prefill-1 is free: `third` goes there, and is all it holds.
        assert third.state is JobState.DISPATCHED and third.prefill_engine is pe1
        assert sum(new.core.prefill.count) == 1 and set(new.core.flights) == {second.rid, third.rid}
    finally:
        await d.close()


async def test_a_rejected_request_awaiting_its_answer_is_not_fed_to_the_new_core() -> None:
    d = await make_dispatcher(prefill=2)
    try:
        job = accept(d)
        pool = d.pools.by_revision["static"]
        d.feed(pool, None)
        job.state, job.decision = JobState.BUFFERED, asyncio.get_running_loop().create_future()
        job.decision.set_result(Reject(job.rid, "test", retryable=True))  # the relay answers it next
        d.watcher.apply_change(EngineChange(ChangeKind.REMOVE, d.registry.engines["prefill-1"].record))
        new = d.pools.by_revision["static"]
        assert new is not pool and job.rid not in new.core.buffer
        assert isinstance(job.decision.result(), Reject)
    finally:
        await d.close()


async def test_an_engine_added_takes_the_buffered_work_while_the_busy_one_keeps_its_step() -> None:
    d = await make_dispatcher(prefill=1)
    try:
        busy = accept(d)
        waiting = [accept(d) for _ in range(3)]
        assert all(j.state is JobState.BUFFERED for j in waiting)
        rec = d.registry.engines["prefill-0"].record
        added = EngineChange(ChangeKind.ADD, type(rec)(**{**_fields(rec), "key": "prefill-5"}))
        d.watcher.apply_change(added)
        async with asyncio.timeout(2):
            while len(d.pools.by_revision["static"].prefill) < 2:
                await asyncio.sleep(0.001)
        sent = [j.decision.result() for j in waiting if j.decision.done()]
        assert sent and all(isinstance(x, Dispatch) and x.prefill_instance == 1 for x in sent)
        assert busy.rid in d.pools.by_revision["static"].core.flights
        assert d.pools.by_revision["static"].core.stats.bypass_releases == 1  # the new engine's only
    finally:
        await d.close()


def _fields(rec: object) -> dict[str, object]:
    return {name: getattr(rec, name) for name in rec.__dataclass_fields__}  # type: ignore[attr-defined]
