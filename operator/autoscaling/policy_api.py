"""The cluster-scoped `SBSAutoscalingPolicy` API (`sbs.dev/v1alpha1`): which SBSDeployments it
scales, within which group limits, P:D band, GPU budget and SLOs, and the decisions it recorded. The
CRD is generated from these types.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from sbs.operator.api import Condition
from sbs.operator.crd_model import ApiModel, Rule, StatusModel, rules_config

KIND = "SBSAutoscalingPolicy"
PLURAL = "sbsautoscalingpolicies"
SINGULAR = "sbsautoscalingpolicy"
SHORT_NAMES = ("sbsap",)


class LabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


GROUP_LIMITS_RULES = (
    Rule("self.minGroups <= self.maxGroups", "must be at least minGroups", ".maxGroups",
         lambda g: g.min_groups <= g.max_groups),
)  # fmt: skip


class GroupLimits(ApiModel):
    model_config = rules_config(GROUP_LIMITS_RULES)
    rules: ClassVar[tuple[Rule, ...]] = GROUP_LIMITS_RULES

    min_groups: int = Field(default=1, ge=0, le=256)
    max_groups: int = Field(default=8, ge=0, le=256)


RATIO_RULES = (
    Rule("self.minPrefillPerDecode <= self.maxPrefillPerDecode", "must be at least minPrefillPerDecode",
         ".maxPrefillPerDecode", lambda r: r.min_prefill_per_decode <= r.max_prefill_per_decode),
)  # fmt: skip


class RatioBand(ApiModel):
    """Allowed prefill groups per decode group."""

    model_config = rules_config(RATIO_RULES)
    rules: ClassVar[tuple[Rule, ...]] = RATIO_RULES

    min_prefill_per_decode: float = Field(default=0.25, gt=0, le=64)
    max_prefill_per_decode: float = Field(default=8.0, gt=0, le=64)


class SloTargets(ApiModel):
    ttft_p90_seconds: float = Field(default=2.0, gt=0, le=600, description="TTFT p90 the prefill side keeps.")
    tpot_p90_seconds: float = Field(
        default=0.1, gt=0, le=10, description="TPOT p90 the decode side keeps (streamed requests)."
    )


class Signals(ApiModel):
    """Thresholds on the scheduler's metrics, per deployment, over one sync window."""

    queue_wait_p90_seconds: float = Field(
        default=1.0, gt=0, le=600, description="Scheduler queue wait p90 limit."
    )
    scale_down_below_fraction: float = Field(
        default=0.4,
        gt=0,
        lt=1,
        description="Scale down when TTFT p90 and queue wait are below this × target.",
    )
    metrics_url_annotation: str = Field(
        default="sbs.dev/scheduler-metrics-url",
        description="SBSDeployment annotation overriding where the scheduler's /metrics is scraped.",
    )


class Behaviour(ApiModel):
    sync_period_seconds: int = Field(default=15, ge=1, le=3600)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=86_400)
    cooldown_seconds: int = Field(default=120, ge=0, le=86_400, description="Minimum time between changes.")
    max_step_groups: int = Field(
        default=2, ge=1, le=64, description="Largest change of one role in one step."
    )


class Predictive(ApiModel):
    """Size ahead of load: replay the observed workload in the calibrated simulator (`sbs-sim plan`)."""

    enabled: bool = False
    interval_seconds: int = Field(
        default=60, ge=5, le=3600, description="How often a deployment is re-planned."
    )
    min_requests: int = Field(default=50, ge=1, le=1_000_000, description="Observed requests needed to plan.")
    horizon_seconds: int = Field(
        default=60, ge=5, le=3600, description="Simulated seconds of the observed load."
    )


class AutoscalingPolicySpec(ApiModel):
    """Scales the External-owned roles of the selected SBSDeployments within limits, ratio and budget."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector, description="SBSDeployments, any namespace."
    )
    prefill: GroupLimits = Field(default_factory=GroupLimits)
    decode: GroupLimits = Field(default_factory=GroupLimits)
    gpu_budget: int | None = Field(default=None, ge=0, description="GPUs the selected deployments may use.")
    ratio: RatioBand = Field(default_factory=RatioBand)
    slo: SloTargets = Field(default_factory=SloTargets)
    signals: Signals = Field(default_factory=Signals)
    behaviour: Behaviour = Field(default_factory=Behaviour)
    predictive: Predictive = Field(default_factory=Predictive)


class Decision(StatusModel):
    time: str
    namespace: str
    deployment: str
    prefill_from: int
    prefill_to: int
    decode_from: int
    decode_to: int
    reason: str


class AutoscalingPolicyStatus(StatusModel):
    observed_generation: int = 0
    selected: int = 0
    gpus_desired: int = 0
    last_decision: Decision | None = None
    decisions: list[Decision] = Field(
        default_factory=list, description="The most recent decisions, newest last."
    )
    conditions: list[Condition] = Field(default_factory=list)
