"""The hooks `sbs.sim.engine` gives the emulator: aborting queued or running jobs between steps."""

from __future__ import annotations

from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.sim.costmodel import CostModel
from sbs.sim.engine import DecodeEngine, DecodeJob, PrefillEngine, PrefillJob

COST = CostModel()


def test_prefill_abort_drops_a_queued_job_and_its_tokens() -> None:
    eng = PrefillEngine(InstanceSpec("p", Role.PREFILL, 2, 1000, 100_000), COST)
    eng.submit(PrefillJob(1, 500, ()), 0)
    eng.submit(PrefillJob(2, 700, ()), 0)
    assert eng.abort(2) and not eng.abort(2)
    assert [j.rid for j in eng.queues[0]] == [1] and eng.queued_tokens[0] == 500
    eng.start_step(0.0)
    assert [j.rid for j in eng.finish_step().finished] == [1]


def test_decode_abort_frees_batch_slot_and_kv() -> None:
    eng = DecodeEngine(InstanceSpec("d", Role.DECODE, 1, 1000, 100_000), COST)
    for rid in (1, 2):
        eng.reserve(0, 101)
        eng.add(DecodeJob(rid, 0, 101, 10))
    eng.start_step(0.0)
    eng.finish_step()
    assert int(eng.kv[0]) == 2 * 101 + 2
    assert eng.abort(2)
    assert int(eng.batch[0]) == 1 and int(eng.kv[0]) == 101 + 1
    eng.reserve(0, 50)
    eng.unreserve(0, 50)
    assert eng.reserved == [0] and eng.reserved_kv == [0]
    while eng.has_work():
        eng.start_step(0.0)
        finished = eng.finish_step().finished
    assert finished == [1] and int(eng.kv[0]) == 0 and int(eng.batch[0]) == 0
