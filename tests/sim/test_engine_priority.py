"""SGLang's priority scheduling in the engine models, and the `+prio` baselines that feed it SBS's key."""

from __future__ import annotations

import sys
from collections import deque

import pytest
from sbs.scheduler.core.policies.immediate import SBS_ORDER, engine_priority
from sbs.scheduler.core.policies.sbs_timing import priority_key
from sbs.scheduler.core.types import Dispatch, InstanceSpec, Role
from sbs.settings import scheduling
from sbs.sim.costmodel import CostModel
from sbs.sim.engine import DecodeEngine, DecodeJob, PrefillEngine, PrefillJob
from sbs.sim.engine_priority import PriorityOrder
from sbs.sim.simulator import Simulation

from tests.scheduler.core.fakes import CAPACITY, arrive, dispatches, make_scheduler, req
from tests.sim.test_simulator import CLUSTER, COST, workload

CHUNK = 1000


def prefill(priority: PriorityOrder | None, ranks: int = 1) -> PrefillEngine:
    spec = InstanceSpec("p", Role.PREFILL, ranks, CHUNK, 100_000)
    return PrefillEngine(spec, CostModel(), prefix_cache=False, priority=priority)


def order(eng: PrefillEngine) -> list[int]:
    """The rids in the order their prefills finish."""
    out: list[int] = []
    while eng.has_work():
        eng.start_step(0.0)
        out += [j.rid for j in eng.finish_step().finished]
    return out


def submit(eng: PrefillEngine, jobs: list[tuple[int, int, int | None]]) -> None:
    for rid, tokens, prio in jobs:
        eng.submit(PrefillJob(rid, tokens, (), priority=prio), 0)


def test_key_orders_higher_values_first_by_default_and_lower_with_the_flag() -> None:
    default, low = PriorityOrder(), PriorityOrder(low_values_first=True)
    assert default.key(5) < default.key(1) and low.key(1) < low.key(5)
    # no priority: SGLang's lowest one, so last; it ties (FCFS) with the extreme value of that side
    assert default.key(None) == default.key(-sys.maxsize - 1) > default.key(-(10**15))
    assert low.key(None) == low.key(sys.maxsize) > low.key(10**15)
    assert PriorityOrder(default=7).key(None) == PriorityOrder().key(7)


def test_prefill_queue_takes_priority_order_with_fcfs_tiebreak() -> None:
    eng = prefill(PriorityOrder())
    submit(eng, [(1, 600, 1), (2, 600, None), (3, 600, 5), (4, 600, 5), (5, 600, 3)])
    assert order(eng) == [3, 4, 5, 1, 2]
    low = prefill(PriorityOrder(low_values_first=True))
    submit(low, [(1, 600, 1), (2, 600, None), (3, 600, 5), (4, 600, 5), (5, 600, 3)])
    assert order(low) == [1, 5, 3, 4, 2]


def test_started_chunk_is_not_passed() -> None:
    eng = prefill(PriorityOrder())
    submit(eng, [(1, 2500, 0)])
    eng.start_step(0.0)  # rid 1's first chunk runs
    submit(eng, [(2, 300, 100)])  # arrives mid-step with a far better priority
    eng.finish_step()
    eng.start_step(0.1)
    assert [(j.rid, n) for j, n in eng._step_jobs[0]] == [(1, 1000)]  # the chunk goes on, alone
    eng.finish_step()
    assert order(eng) == [1, 2]  # 500 of rid 1 then rid 2 share the last step, rid 1 first


def test_jobs_in_the_running_step_are_not_passed() -> None:
    eng = prefill(PriorityOrder())
    submit(eng, [(1, 400, 0), (2, 400, 0)])
    eng.start_step(0.0)
    submit(eng, [(3, 400, 9)])  # better priority, but 1 and 2 are already being prefilled
    assert [j.rid for j in eng.queues[0]] == [1, 2, 3]
    assert [j.rid for j in eng.finish_step().finished] == [1, 2]


def test_off_is_fcfs_whatever_the_priorities() -> None:
    eng = prefill(None)
    submit(eng, [(1, 600, 1), (2, 600, None), (3, 600, 5)])
    assert order(eng) == [1, 2, 3]


def test_equal_priorities_step_exactly_as_fcfs() -> None:
    jobs = [(rid, 300 + 170 * rid, 4) for rid in range(12)]
    runs = []
    for prio in (None, PriorityOrder()):
        eng = prefill(prio, ranks=2)
        for rid, tokens, p in jobs:
            eng.submit(PrefillJob(rid, tokens, (), priority=p), rid % 2)
        steps = []
        while eng.has_work():
            d = eng.start_step(0.0)
            rec = eng.finish_step()
            steps.append((d, rec.rank_tokens, [j.rid for j in rec.finished]))
        runs.append(steps)
    assert runs[0] == runs[1]


def test_decode_admits_waiting_requests_in_priority_order() -> None:
    spec = InstanceSpec("d", Role.DECODE, 1, 0, 100_000, max_running_requests=1)
    for prio, first in ((PriorityOrder(), [2, 3, 1, 0]), (None, [0, 1, 2, 3])):
        eng = DecodeEngine(spec, CostModel(), priority=prio)
        for rid, p in enumerate((0, 1, 3, 2)):
            eng.reserve(0, 100)
            eng.add(DecodeJob(rid, 0, 100, 1, priority=p))
        joined = []
        while eng.has_work():
            eng.start_step(0.0)
            joined += eng.running.first_token
            eng.finish_step()
        assert joined == first


def test_insert_respects_fixed_prefix_only() -> None:
    q: deque[PrefillJob] = deque(PrefillJob(r, 10, (), priority=0) for r in range(3))
    q[0].remaining = 5  # started
    PriorityOrder().insert(q, PrefillJob(9, 10, (), priority=1), lambda j: j.remaining >= 0)
    assert [j.rid for j in q] == [0, 9, 1, 2]


# -- the core: `+prio` dispatches carry SBS's release key ------------------------------------------


@pytest.mark.parametrize("policy", ["least_load+prio", "eft+prio", "sglang+prio", "round_robin+prio"])
def test_dispatch_carries_sbs_release_key(policy: str) -> None:
    sched = make_scheduler(policy)
    [d] = dispatches(arrive(sched, 1, 2.5, tokens=3000))
    key = priority_key(2.5, 3000, CAPACITY, scheduling.BatchingSettings())
    assert key > 2.5  # the size-aware part is there
    assert d.priority == -round(key * 1_000_000) == engine_priority(req(1, 2.5, 3000), CAPACITY)
    [plain] = dispatches(arrive(make_scheduler(policy.split("+")[0]), 1, 2.5, tokens=3000))
    assert plain.priority is None


def test_priority_order_is_sbs_release_order() -> None:
    """A short prompt arriving a little after a long one gets the higher priority, as SBS releases it
    first; one arriving long after does not (the size term is capped)."""
    assert scheduling.BatchingSettings() == SBS_ORDER
    long_ = engine_priority(req(1, 10.0, 8000), CAPACITY)
    short = engine_priority(req(2, 10.05, 200), CAPACITY)
    late = engine_priority(req(3, 10.0 + SBS_ORDER.size_priority_max_s + 0.01, 200), CAPACITY)
    assert short > long_ > late


def test_dispatch_default_has_no_priority() -> None:
    assert Dispatch(1, 0, 0, 0, 0).priority is None


# -- whole runs ---------------------------------------------------------------------------------------


def test_prio_variant_runs_and_reorders() -> None:
    trace = workload(1.2, seed=3)  # queues long enough to reorder
    base = Simulation(trace, CLUSTER, scheduling.policy_settings("least_load"), cost=COST)
    prio = Simulation(trace, CLUSTER, scheduling.policy_settings("least_load+prio"), cost=COST)
    assert prio.prefill[0].priority == PriorityOrder() and base.prefill[0].priority is None
    assert prio.decode[0].priority == PriorityOrder()
    a, b = base.run(), prio.run()
    assert b.policy == "least_load+prio"
    slo = {"slo_ttft_s": 2.0, "slo_tpot_s": 0.1}
    sa, sb = a.recorder.summary(**slo), b.recorder.summary(**slo)
    assert sa["completed"] == sb["completed"] == len(trace)
    assert (a.recorder.first_token != b.recorder.first_token).any()  # the engines reordered something
