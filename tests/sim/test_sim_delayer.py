"""SGLang's prefill delayer in the simulator (`+delayer` policies): the `DelayerGate` the emulator shares
holds a prompt on one DP rank for `max_delay_passes` passes of `IDLE_PASS_MS`, lets prompts on every rank
go together, and records one prefill attempt per rank and pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings import scheduling
from sbs.sim.cluster import PRESETS, ClusterConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.emulator.settings import EngineSettings
from sbs.sim.engine import PrefillEngine, PrefillJob
from sbs.sim.prefill_delayer import IDLE_PASS_MS, MAX_DELAY_PASSES, DelayerGate
from sbs.sim.simulator import SimResult, Simulation
from sbs.sim.trace import Trace, build_trace

from tests.sim.test_cli import azure_csv, compare
from tests.sim.test_simulator import workload

SMALL = PRESETS["small"].model_copy(update={"jitter_cv": 0.0})
ONE_PREFILL = SMALL.model_copy(update={"prefill": SMALL.prefill.model_copy(update={"instances": 1})})
RANKS = SMALL.prefill.dp_size


def run(trace: Trace, policy: str, cluster: ClusterConfig = SMALL) -> tuple[Simulation, SimResult]:
    sim = Simulation(trace, cluster, scheduling.policy_settings(policy))
    return sim, sim.run()


def same_time(n: int) -> Trace:
    return build_trace("burst", [0.0] * n, [500] * n, [4] * n)


def test_a_lone_prompt_waits_out_the_passes() -> None:
    _, plain = run(same_time(1), "sglang")
    sim, held = run(same_time(1), "sglang+delayer")
    waited = held.recorder.ttft()[0] - plain.recorder.ttft()[0]
    assert waited == pytest.approx((MAX_DELAY_PASSES - 1) * IDLE_PASS_MS / 1e3)  # the 30th pass times out
    assert [g.held for g in sim.gates if g is not None] == [MAX_DELAY_PASSES - 1, 0]
    assert held.events == plain.events + MAX_DELAY_PASSES - 1  # one re-check event per held pass


def test_prompts_on_every_rank_start_together() -> None:
    _, plain = run(same_time(RANKS), "sglang", ONE_PREFILL)
    sim, held = run(same_time(RANKS), "sglang+delayer", ONE_PREFILL)
    # Plain, the first dispatch starts a step alone (then the other 15); with the delayer the burst's
    # other dispatches land during the held pass, and the next pass prefills all of them in one step.
    assert plain.recorder.prefill_imbalance == pytest.approx([RANKS, RANKS / (RANKS - 1)])
    assert held.recorder.prefill_imbalance == [1.0]
    assert sim.gates[0] is not None and sim.gates[0].held == 1
    assert held.recorder.ttft().max() < plain.recorder.ttft().max()


def test_runs_are_deterministic_and_complete() -> None:
    trace = workload(0.7)
    (_, a), (_, b) = run(trace, "least_load+delayer"), run(trace, "least_load+delayer")
    slo = {"slo_ttft_s": 2.0, "slo_tpot_s": 0.1}
    assert a.recorder.summary(**slo) == b.recorder.summary(**slo)
    assert a.events == b.events
    assert a.recorder.summary(**slo)["completed"] == len(trace)
    assert np.array_equal(a.recorder.ttft(), b.recorder.ttft())
    _, plain = run(trace, "least_load")
    assert a.policy == "least_load+delayer" and a.events > plain.events


def engine(ranks: int = 2) -> PrefillEngine:
    return PrefillEngine(
        InstanceSpec("p0", Role.PREFILL, ranks, 1000, 100_000), CostModel(), prefix_cache=False
    )


def test_a_held_pass_runs_started_chunks_and_records_one_attempt_per_rank() -> None:
    eng, gate = engine(), DelayerGate(2)
    eng.submit(PrefillJob(1, 1500, ()), 0)  # two chunks
    eng.submit(PrefillJob(2, 300, ()), 1)
    assert gate.start_step(eng, 0.0) > 0  # both ranks can: no wait
    eng.finish_step()
    eng.submit(PrefillJob(3, 300, ()), 0)  # behind the started prompt; rank 1 has nothing
    assert gate.start_step(eng, 1.0) > 0  # held for new prompts, but the chunk goes on
    assert gate.held == 1 and eng.step_batches() == [1, 0]
    eng.finish_step()
    assert [b.largest for b in gate.batches] == [1, 1]  # the chunk ran: its batch, not a held estimate
    assert [len(b._sizes) for b in gate.batches] == [2, 1]


def test_a_held_rank_records_what_it_would_have_taken() -> None:
    eng, gate = engine(), DelayerGate(2)
    for rid in range(3):
        eng.submit(PrefillJob(rid, 300, ()), 0)
    assert gate.start_step(eng, 0.0) == 0.0 and eng.has_work() and not eng.busy()
    assert [b.largest for b in gate.batches] == [3, 0]
    capped = DelayerGate(2, max_running_per_rank=4)
    assert capped.start_step(eng, 0.0, running=[2, 0]) == 0.0
    assert capped.batches[0].largest == 2  # its queue, capped by its free running slots


def test_after_max_delay_passes_a_lone_prompt_starts() -> None:
    eng, gate = engine(), DelayerGate(2, max_delay_passes=3)
    eng.submit(PrefillJob(1, 300, ()), 0)
    assert [gate.start_step(eng, float(t)) > 0 for t in range(3)] == [False, False, True]


def test_the_emulator_and_the_simulator_share_the_pass_and_defaults() -> None:
    s = EngineSettings()
    assert (s.idle_pass_ms, s.prefill_delayer_max_delay_passes) == (IDLE_PASS_MS, MAX_DELAY_PASSES)


def test_compare_reports_the_delayer_variant(tmp_path: Path) -> None:
    result = compare(azure_csv(tmp_path / "t.csv"), "--policies", "sglang,sglang+delayer")
    assert result.exit_code == 0, result.output
    assert "sglang+delayer" in result.output
