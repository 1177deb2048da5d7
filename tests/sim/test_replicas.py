"""Scheduler replicas in the simulator: ownership partitions, routing of arrivals and reports, whole runs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sbs.scheduler.core.events import LoadReported, RequestArrived, RequestFinished, StepCompleted
from sbs.scheduler.core.types import Dispatch, InstanceSpec, RankLoad, Request, Role
from sbs.settings import scheduling
from sbs.sim.cluster import PRESETS, ClusterConfig, RoleConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.errors import ClusterConfigError
from sbs.sim.replicas import Replicas, partition
from sbs.sim.simulator import SimResult, Simulation
from sbs.sim.trace import Trace, build_trace
from sbs.sim.workload import synthetic

COST = CostModel()


def specs(n: int, dp: int = 8) -> list[InstanceSpec]:
    return [InstanceSpec(f"prefill-{i}", Role.PREFILL, dp, 8192, 100_000) for i in range(n)]


class StubScheduler:
    """Records what it is handed; dispatches each arrival to its own instance 0."""

    def __init__(self, prefill: Sequence[InstanceSpec]) -> None:
        self.prefill = list(prefill)
        self.seen: list[tuple[object, float]] = []

    def handle(self, event: object, now: float) -> list:
        self.seen.append((event, now))
        if isinstance(event, RequestArrived):
            return [Dispatch(event.request.rid, 0, 0, 0, 0)]
        return []

    def next_deadline(self) -> float | None:
        return None


def stub_replicas(count: int, instances: int = 4, spread: str = "round_robin") -> Replicas:
    return Replicas(
        lambda prefill, _k: StubScheduler(prefill),  # type: ignore[arg-type,return-value]
        specs(instances),
        count=count,
        spread=spread,
        transit_s=0.001,
        seed=0,
        requests=100,
    )


def request(rid: int) -> Request:
    return Request(rid, 0.0, 100, 10)


def test_partition_gives_every_instance_one_owner_and_every_replica_an_instance() -> None:
    parts = partition(specs(16, dp=32), 4)
    assert sorted(i for ids in parts for i in ids) == list(range(16))
    assert [len(ids) for ids in parts] == [4, 4, 4, 4]


def test_more_replicas_than_instances_is_refused() -> None:
    with pytest.raises(ClusterConfigError, match="without one"):
        partition(specs(2), 3)


def test_round_robin_spread_alternates_and_dispatches_carry_the_cluster_index() -> None:
    reps = stub_replicas(2)
    out = [reps.arrive(request(rid), 0.0) for rid in range(4)]
    assert list(reps.accepted_by[:4]) == [0, 1, 0, 1]  # type: ignore[index]
    for rid, decisions in enumerate(out):
        owner = rid % 2
        assert [d.prefill_instance for d in decisions] == [reps.parts[owner][0]]


def test_random_spread_reaches_every_replica_and_is_seeded() -> None:
    a, b = stub_replicas(4, spread="random"), stub_replicas(4, spread="random")
    for rid in range(100):
        a.arrive(request(rid), 0.0)
        b.arrive(request(rid), 0.0)
    assert a.accepted_by == b.accepted_by
    assert set(a.accepted_by) == {0, 1, 2, 3}  # type: ignore[arg-type]


def test_prefill_reports_reach_only_the_owner_renumbered() -> None:
    reps = stub_replicas(2)
    g = reps.parts[1][1]
    reps.deliver(StepCompleted(g, 0.0, 0.5, (), False), 1.0)
    reps.deliver(LoadReported(Role.PREFILL, g, 1.0, ()), 1.0)
    first, second = (c.scheduler.seen for c in reps.cores)  # type: ignore[attr-defined]
    assert first == []
    assert [(type(e).__name__, e.instance) for e, _ in second] == [("StepCompleted", 1), ("LoadReported", 1)]


def test_decode_snapshots_reach_every_replica_and_finishes_the_acceptor() -> None:
    reps = stub_replicas(2)
    reps.arrive(request(0), 0.0)
    reps.arrive(request(1), 0.0)
    snapshot = LoadReported(Role.DECODE, 0, 1.0, (RankLoad(0, 1, 0, 0, 100, 1000),))
    reps.deliver(snapshot, 1.0)
    reps.deliver(RequestFinished(1, 2.0), 2.0)
    first, second = (c.scheduler.seen for c in reps.cores)  # type: ignore[attr-defined]
    assert [e for e, _ in first][1:] == [snapshot]
    assert [e for e, _ in second][1:] == [snapshot, RequestFinished(1, 2.0)]


def test_a_timer_wakes_only_its_replica() -> None:
    reps = stub_replicas(2)
    reps.on_timer(1, 3.0)
    first, second = (c.scheduler.seen for c in reps.cores)  # type: ignore[attr-defined]
    assert (first, second) == ([], [(None, 3.0)])


# -- whole runs -------------------------------------------------------------------------------------

CLUSTER = ClusterConfig(
    name="four",
    prefill=RoleConfig(instances=4, nodes_per_instance=2, chunk_tokens=8192),
    decode=RoleConfig(instances=1, nodes_per_instance=2, max_running_requests=256),
)
MIX: Trace = build_trace("mix", [0.0] * 4, [300, 1200, 2500, 600], [40, 120, 60, 80])


@pytest.fixture(scope="module")
def busy() -> Trace:
    return synthetic(rate_rps=60.0, duration_s=5.0, seed=3, lengths=MIX)


def simulate(trace: Trace, replicas: int, spread: str = "round_robin") -> tuple[Simulation, SimResult]:
    cluster = CLUSTER.model_copy(update={"scheduler_replicas": replicas, "replica_spread": spread})
    sim = Simulation(trace, cluster, scheduling.policy_settings("sbs"), cost=COST)
    return sim, sim.run()


@pytest.mark.parametrize("spread", ["round_robin", "random"])
def test_every_request_completes_with_two_replicas(busy: Trace, spread: str) -> None:
    sim, result = simulate(busy, 2, spread)
    summary = result.recorder.summary(slo_ttft_s=2.0, slo_tpot_s=0.1)
    assert (summary["completed"], summary["dropped"]) == (len(busy), 0)
    assert result.scheduler_stats["released_requests"] == len(busy)
    for core in sim.replicas.cores:  # each replica released some of them
        assert core.scheduler.stats.released_requests > 0


def test_each_replica_dispatches_only_to_the_instances_it_owns(busy: Trace) -> None:
    cluster = CLUSTER.model_copy(update={"scheduler_replicas": 2})
    sim = Simulation(busy, cluster, scheduling.policy_settings("sbs"), cost=COST)
    sent: list[tuple[int, int, int]] = []
    for k, core in enumerate(sim.replicas.cores):
        handle = core.handle

        def recording(event: object, t: float, k: int = k, handle=handle) -> list:
            out = handle(event, t)  # type: ignore[arg-type]
            sent.extend((k, d.rid, d.prefill_instance) for d in out if isinstance(d, Dispatch))
            return out

        core.handle = recording  # type: ignore[method-assign]
    sim.run()
    assert len(sent) == len(busy)
    for k, rid, instance in sent:
        assert sim.replicas.accepted_by[rid] == k  # type: ignore[index]
        assert instance in sim.replicas.parts[k]


def test_replica_runs_are_reproducible(busy: Trace) -> None:
    _, a = simulate(busy, 2, "random")
    _, b = simulate(busy, 2, "random")
    assert a.events == b.events
    assert (a.recorder.first_token == b.recorder.first_token).all()


def test_preset_of_3200_ranks() -> None:
    c = PRESETS["ds3-h800-3200"]
    ranks = c.prefill.instances * c.prefill.dp_size + c.decode.instances * c.decode.dp_size
    assert (c.prefill.instances, c.prefill.dp_size, c.decode.instances, c.decode.dp_size) == (64, 32, 8, 144)
    assert ranks == 3200
