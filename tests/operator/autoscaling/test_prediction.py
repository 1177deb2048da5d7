"""Predictive sizing: the scheduler's observed workload replayed in the simulator on the deployment's
own group shapes; its plan is a floor under the reactive recommendation."""

from __future__ import annotations

import math

from sbs.operator import api
from sbs.operator.autoscaling import decision, policy_api, prediction

SPEC = api.SBSDeploymentSpec.model_validate({
    "model": {"path": "/m"},
    "prefill": {"groups": 1, "nodesPerGroup": 2, "chunkedPrefillSize": 262144},
    "decode": {"groups": 1, "nodesPerGroup": 2, "maxRunningRequests": 4096},
})  # fmt: skip
POLICY = policy_api.AutoscalingPolicySpec.model_validate({
    "prefill": {"minGroups": 1, "maxGroups": 6}, "decode": {"minGroups": 1, "maxGroups": 2},
    "slo": {"ttftP90Seconds": 2.0, "tpotP90Seconds": 0.2},
    "predictive": {"enabled": True, "horizonSeconds": 20},
})  # fmt: skip


def lengths(counts: dict[float, int]) -> decision.Histogram:
    total, out = 0, []
    for le in (256, 1024, 4096, 8192, math.inf):
        total += counts.get(le, 0)
        out.append((float(le), float(total)))
    return decision.Histogram(tuple(out))


def test_the_simulated_cluster_has_the_deployments_group_shapes() -> None:
    c = prediction.sim_cluster(SPEC)
    assert (c.prefill.nodes_per_instance, c.prefill.dp_size, c.prefill.chunk_tokens) == (2, 16, 16384)
    assert (c.decode.dp_size, c.decode.max_running_requests) == (16, 256)


def test_samples_follow_the_histogram() -> None:
    got = prediction.samples(lengths({1024: 30, 4096: 10}))
    assert sorted(set(got)) == [640, 2560] and got.count(640) == 30 and got.count(2560) == 10
    assert len(prediction.samples(lengths({1024: 30_000}), max_samples=100)) == 100


def test_more_observed_load_plans_more_prefill_groups() -> None:
    prompts, outputs = lengths({4096: 200, 8192: 100}), lengths({256: 300})
    light = prediction.predict(SPEC, POLICY, 2.0, prompts, outputs, None)
    heavy = prediction.predict(SPEC, POLICY, 60.0, prompts, outputs, None)
    assert light is not None and heavy is not None and light.feasible and heavy.feasible
    assert light.prefill_groups == 1
    assert heavy.prefill_groups > light.prefill_groups
    assert prediction.predict(SPEC, POLICY, 0.0, prompts, outputs, None) is None  # nothing observed


def test_the_prediction_is_a_floor_under_the_reactive_recommendation() -> None:
    quiet = decision.Observation(0.1, 0.0, 1.0, 100)  # reactive alone would scale down
    mem = decision.Memory()
    out = decision.decide(
        2, 1, quiet, POLICY, mem, 0.0, gpus_per_group=(16, 16), budget_left=None, floor=(4, 1)
    )
    assert (out.prefill, out.decode) == (4, 1) and out.reason.startswith("predicted need 4P+1D")
