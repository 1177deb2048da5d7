"""Predictive sizing for the autoscaler: the workload a scheduler observed, replayed in the calibrated
simulator (`sbs.sim.sizing`) on the deployment's own group shapes, gives the group counts that meet
the SLOs before the queues say so. Pure apart from the CPU it burns (run it in a thread)."""

from __future__ import annotations

from sbs.operator import api
from sbs.operator.autoscaling import policy_api
from sbs.operator.autoscaling.decision import Histogram
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK, per_rank
from sbs.sim.cluster import ClusterConfig, RoleConfig
from sbs.sim.sizing import PlanLimits, PlanResult, Slo, plan_groups
from sbs.sim.workload import synthetic_from_observed


def sim_cluster(dep: api.SBSDeploymentSpec) -> ClusterConfig:
    """The simulator's cluster with the deployment's group shapes (counts are the plan's to choose)."""

    def role(r: api.RoleSpec) -> RoleConfig:
        dp = r.attn_dp_size
        chunk = per_rank(r.chunked_prefill_size, dp) if r.chunked_prefill_size else DEFAULT_CHUNK_PER_RANK
        running = per_rank(r.max_running_requests, dp) if r.max_running_requests else 0
        return RoleConfig(
            instances=max(r.groups, 1), nodes_per_instance=r.nodes_per_group, gpus_per_node=r.gpus_per_node,
            chunk_tokens=max(chunk, 64), max_running_requests=running,
        )  # fmt: skip

    return ClusterConfig(name="sbsdeployment", prefill=role(dep.prefill), decode=role(dep.decode))


def samples(hist: Histogram, max_samples: int = 2000) -> list[int]:
    """Lengths drawn from a histogram window: each bucket's midpoint, repeated in proportion."""
    out: list[int] = []
    total = hist.count
    if total <= 0:
        return out
    scale = min(1.0, max_samples / total)
    prev_le, prev_c = 0.0, 0.0
    for le, c in hist.buckets:
        n = round((c - prev_c) * scale)
        upper = prev_le * 2 if le == float("inf") else le
        out += [max(int((prev_le + upper) / 2), 1)] * n
        prev_le, prev_c = (le if le != float("inf") else prev_le), c
    return out


def predict(
    spec: api.SBSDeploymentSpec,
    policy: policy_api.AutoscalingPolicySpec,
    rate_per_s: float,
    prompts: Histogram,
    outputs: Histogram,
    max_gpus: int | None,
) -> PlanResult | None:
    """The plan for the observed workload, or None when there is too little of it to size from."""
    p_samples, o_samples = samples(prompts), samples(outputs)
    if rate_per_s <= 0 or not p_samples or not o_samples:
        return None
    trace = synthetic_from_observed(
        rate_per_s, p_samples, o_samples, float(policy.predictive.horizon_seconds), seed=0
    )
    pre, dec = policy.prefill, policy.decode
    limits = PlanLimits(
        min_prefill_groups=max(pre.min_groups, 1), max_prefill_groups=max(pre.max_groups, 1),
        min_decode_groups=max(dec.min_groups, 1), max_decode_groups=max(dec.max_groups, 1), max_gpus=max_gpus,
    )  # fmt: skip
    slo = Slo(policy.slo.ttft_p90_seconds, policy.slo.tpot_p90_seconds)
    return plan_groups(trace, sim_cluster(spec), slo, limits=limits)
