"""Autoscaling API: per-role scale targets (`SBSRoleScaler`, with a `/scale` subresource) and the
cluster-scoped `SBSAutoscalingPolicy`. The CRDs are generated from these types like the
SBSDeployment's.

Who owns a role's group count is explicit (`spec.<role>.groupsOwner` of the SBSDeployment):
- `Static`: `spec.<role>.groups` (GitOps); the role's scaler mirrors it and writes to it are undone;
- `External`: the role's scaler `spec.replicas`, written by HPA, KEDA, an SBSAutoscalingPolicy or a
  person; `spec.<role>.groups` is then only the initial value.
So the operator, GitOps and an autoscaler never write the same field.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sbs.operator.api import ApiModel, Condition, Rule, _model_config

SCALER_KIND = "SBSRoleScaler"
SCALER_PLURAL = "sbsrolescalers"
SCALER_SINGULAR = "sbsrolescaler"
SCALER_SHORT = ("sbsrs",)
POLICY_KIND = "SBSAutoscalingPolicy"
POLICY_PLURAL = "sbsautoscalingpolicies"
POLICY_SINGULAR = "sbsautoscalingpolicy"
POLICY_SHORT = ("sbsap",)

Role = Literal["prefill", "decode"]


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class RoleScalerSpec(ApiModel):
    """The number of engine groups of one role of one SBSDeployment (`kubectl scale` / HPA target)."""

    deployment: str = Field(min_length=1, max_length=63, description="The SBSDeployment, same namespace.")
    role: Role
    replicas: int = Field(ge=0, le=256, description="Engine groups of the role.")


class RoleScalerStatus(_Status):
    replicas: int = Field(default=0, description="Groups the operator runs for the role (any readiness).")
    ready: int = 0
    selector: str = Field(default="", description="Label selector of the role's leader pods (one per group).")
    owner: str = Field(default="", description="Who owns replicas: Static (the SBSDeployment) or External.")


class LabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


GROUP_LIMITS_RULES = (
    Rule("self.minGroups <= self.maxGroups", "must be at least minGroups", ".maxGroups",
         lambda g: g.min_groups <= g.max_groups),
)  # fmt: skip


class GroupLimits(ApiModel):
    model_config = _model_config(GROUP_LIMITS_RULES)
    rules: ClassVar[tuple[Rule, ...]] = GROUP_LIMITS_RULES

    min_groups: int = Field(default=1, ge=0, le=256)
    max_groups: int = Field(default=8, ge=0, le=256)


RATIO_RULES = (
    Rule("self.minPrefillPerDecode <= self.maxPrefillPerDecode", "must be at least minPrefillPerDecode",
         ".maxPrefillPerDecode", lambda r: r.min_prefill_per_decode <= r.max_prefill_per_decode),
)  # fmt: skip


class RatioBand(ApiModel):
    """Allowed prefill groups per decode group."""

    model_config = _model_config(RATIO_RULES)
    rules: ClassVar[tuple[Rule, ...]] = RATIO_RULES

    min_prefill_per_decode: float = Field(default=0.25, gt=0, le=64)
    max_prefill_per_decode: float = Field(default=8.0, gt=0, le=64)


class SloTargets(ApiModel):
    ttft_p90_seconds: float = Field(default=2.0, gt=0, le=600, description="TTFT p90 the prefill side keeps.")
    tpot_p90_seconds: float = Field(
        default=0.1, gt=0, le=10, description="TPOT p90 target (reported; see docs)."
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


class Decision(_Status):
    time: str
    namespace: str
    deployment: str
    prefill_from: int
    prefill_to: int
    decode_from: int
    decode_to: int
    reason: str


class AutoscalingPolicyStatus(_Status):
    observed_generation: int = 0
    selected: int = 0
    gpus_desired: int = 0
    last_decision: Decision | None = None
    decisions: list[Decision] = Field(
        default_factory=list, description="The most recent decisions, newest last."
    )
    conditions: list[Condition] = Field(default_factory=list)
