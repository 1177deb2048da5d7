"""The `oracle` policy (clairvoyant reference, simulator only) and the zero-queue bound beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench.field_table import best_immediate
from sbs.scheduler.core.policies.oracle import Clairvoyant, Foresight
from sbs.scheduler.core.types import Request
from sbs.settings import scheduling
from sbs.sim import oracle, report
from sbs.sim.cluster import PRESETS
from sbs.sim.costmodel import CostModel
from sbs.sim.errors import ClusterConfigError
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.runner import RunSpec, run_one
from sbs.sim.simulator import Simulation
from sbs.sim.trace import Trace, build_trace
from sbs.sim.workload import bursty

from tests.sim.test_cli import azure_csv, compare

CLUSTER = PRESETS["small"].model_copy(update={"jitter_cv": 0.0})
"""No step-time noise: the bound is then exact for every request."""
COST = CostModel()
SLO = {"slo_ttft_s": 2.0, "slo_tpot_s": 0.1}
# Mostly short prompts, a few longer than a rank's 8192-token chunk.
MIX: Trace = build_trace(
    "mix", [0.0] * 8, [300, 600, 900, 1200, 2500, 400, 12000, 20000], [40, 80, 60, 120, 60, 30, 50, 50]
)


@pytest.fixture(scope="module")
def bursts() -> Trace:
    """About 300 requests at 0.6 of nominal, with bursts of 3× the base rate: queues form, then drain."""
    mean_prompt = sum(r.prompt_tokens for r in MIX.requests) / len(MIX)
    rate = 0.6 * nominal_prefill_tok_s(CLUSTER, COST, MIX) / mean_prompt
    base = rate * 60.0 / (50.0 + 10.0 * 3.0)
    span = 300 / rate
    return bursty(
        base_rate_rps=base, burst_rate_rps=3 * base, period_s=span / 3, burst_s=span / 18,
        duration_s=span, seed=3, lengths=MIX,
    )  # fmt: skip


def run(trace: Trace, policy: scheduling.PolicySettings | str) -> dict:
    pol = scheduling.policy_settings(policy) if isinstance(policy, str) else policy
    return run_one(RunSpec(trace, CLUSTER, pol), **SLO)


@pytest.fixture(scope="module")
def runs(bursts: Trace) -> dict[str, dict]:
    names = ("oracle", "sbs", "eft", "round_robin")
    out = {n: run(bursts, n) for n in names}
    out["oracle-h0"] = run(bursts, scheduling.OraclePolicy(horizon_s=0.0))
    return out


def test_the_oracle_serves_every_request_deterministically(runs: dict, bursts: Trace) -> None:
    s = runs["oracle"]["summary"]
    assert s["completed"] == len(bursts) and s["dropped"] == 0
    assert run(bursts, "oracle")["ttft"] == runs["oracle"]["ttft"]
    assert s["oracle_fill_target"] in scheduling.OraclePolicy().fill_targets


def test_the_oracle_beats_the_immediate_policies_and_sbs(runs: dict) -> None:
    mean = {k: v["summary"]["ttft_mean_s"] for k, v in runs.items()}
    assert mean["oracle"] < mean["round_robin"]
    assert mean["oracle"] < mean["eft"]
    assert mean["oracle"] <= mean["sbs"]  # else the reference is a straw man


def test_horizon_zero_degrades_gracefully(runs: dict, bursts: Trace) -> None:
    blind, seeing = runs["oracle-h0"]["summary"], runs["oracle"]["summary"]
    assert blind["completed"] == len(bursts) and blind["dropped"] == 0
    assert blind["ttft_mean_s"] < runs["eft"]["summary"]["ttft_mean_s"]  # exact step times still pay
    assert blind["ttft_mean_s"] <= 1.05 * runs["sbs"]["summary"]["ttft_mean_s"]  # SBS, better informed
    # The oracle keeps, in hindsight, the better of holding and not: on this mix the holds lose (1.363 s
    # against 1.346 s), so this fails if `simulate` tries only the holding runs.
    assert seeing["ttft_mean_s"] <= blind["ttft_mean_s"]
    sim = Simulation(bursts, CLUSTER, scheduling.OraclePolicy(horizon_s=0.0, fill_targets=()), cost=COST)
    sim.run()
    assert isinstance(sim.scheduler.policy, Clairvoyant) and sim.scheduler.policy.holds == 0


def test_no_request_beats_the_zero_queue_bound(runs: dict, bursts: Trace) -> None:
    bound = oracle.zero_queue_ttft(bursts, CLUSTER, COST)
    for name, r in runs.items():
        got = r["ttft"]  # in rid order: every request completed
        assert len(got) == len(bound)
        assert all(g >= b - 1e-9 for g, b in zip(got, bound, strict=True)), name


def test_foresight_shows_only_the_horizon() -> None:
    reqs = [Request(i, float(t), 100, 10) for i, t in enumerate((0.0, 0.5, 1.0, 2.5, 4.0))]
    sight = Foresight(reqs, horizon_s=2.0)
    assert [r.rid for r in sight.upcoming(0.0, 10.0)] == [1, 2]
    assert [r.rid for r in sight.upcoming(0.5, 1.0)] == [2]
    assert [r.rid for r in Foresight(reqs, 0.0).upcoming(0.0, 10.0)] == []
    with pytest.raises(ValueError, match="arrival order"):
        Foresight(list(reversed(reqs)), 1.0)


def test_the_oracle_needs_one_scheduler(bursts: Trace) -> None:
    two = CLUSTER.model_copy(update={"scheduler_replicas": 2})
    with pytest.raises(ClusterConfigError, match="scheduler_replicas must be 1"):
        Simulation(bursts, two, scheduling.OraclePolicy(), cost=COST)


def test_the_oracle_is_no_baseline_and_sbs_is_measured_against_it() -> None:
    def summary(mean: float) -> dict[str, float]:
        return {"ttft_mean_s": mean, "ttft_p90_s": 2 * mean, "throughput_tok_s": 1.0, "goodput_rps": 1.0}

    results = [
        {"policy": "sbs", "summary": summary(1.2)},
        {"policy": "eft", "summary": summary(2.0)},
        {"policy": "oracle", "summary": {**summary(1.0), "oracle_fill_target": 0.5}},
    ]
    assert report.ratios_vs_best_baseline(results, "sbs")["base"] == "eft"
    bound = {"ttft_mean_s": 0.5, "ttft_p90_s": 0.8}
    table = report.table(results, slo_ttft_s=2, slo_tpot_s=0.1, bound=bound)
    assert "sbs vs best immediate baseline (eft)" in table
    assert "sbs vs oracle: TTFT mean +20%, p90 +20% (oracle's step cap 0.5)" in table
    assert "TTFT mean 0.500, p90 0.800; mean above it: sbs +140%, oracle +100%" in table
    assert "oracle" in scheduling.SIM_POLICY_NAMES and "oracle" not in scheduling.POLICY_NAMES
    caps = {"sbs": 9.0, "oracle": 8.0, "eft": 5.0, "sglang": 4.0}
    assert best_immediate({k: {"capacity_tok_s": v} for k, v in caps.items()}) == ("eft", 5.0)


def test_compare_prints_the_distance_to_the_oracle_and_the_bound(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = compare(azure_csv(tmp_path / "t.csv"), "--policies", "sbs,eft,oracle", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "sbs vs best immediate baseline (eft)" in result.output
    assert "sbs vs oracle: TTFT mean" in result.output
    assert "zero-queue bound (no policy beats it)" in result.output
    doc = json.loads(out.read_text())
    bound, policies = doc["zero_queue_bound"]["ttft_mean_s"], doc["policies"]
    assert 0 < bound <= min(s["ttft_mean_s"] for s in policies.values())
    assert policies["oracle"]["completed"] == 40
