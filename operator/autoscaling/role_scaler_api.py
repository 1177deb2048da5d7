"""The `SBSRoleScaler` API (`sbs.dev/v1alpha1`): one per role of each SBSDeployment, a `/scale`
target (`kubectl scale`, HPA, KEDA) whose `spec.replicas` is the role's engine groups. The CRD is
generated from these types.

Who owns a role's group count is explicit (`spec.<role>.groupsOwner` of the SBSDeployment):
- `Static`: `spec.<role>.groups` (GitOps); the role's scaler mirrors it and writes to it are undone;
- `External`: the role's scaler `spec.replicas`, written by HPA, KEDA, an SBSAutoscalingPolicy or a
  person; `spec.<role>.groups` is then only the initial value.
So the operator, GitOps and an autoscaler never write the same field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sbs.operator.crd_model import ApiModel, StatusModel

KIND = "SBSRoleScaler"
PLURAL = "sbsrolescalers"
SINGULAR = "sbsrolescaler"
SHORT_NAMES = ("sbsrs",)

Role = Literal["prefill", "decode"]


class RoleScalerSpec(ApiModel):
    """The number of engine groups of one role of one SBSDeployment (`kubectl scale` / HPA target)."""

    deployment: str = Field(min_length=1, max_length=63, description="The SBSDeployment, same namespace.")
    role: Role
    replicas: int = Field(ge=0, le=256, description="Engine groups of the role.")


class RoleScalerStatus(StatusModel):
    replicas: int = Field(default=0, description="Groups the operator runs for the role (any readiness).")
    ready: int = 0
    selector: str = Field(default="", description="Label selector of the role's leader pods (one per group).")
    owner: str = Field(default="", description="Who owns replicas: Static (the SBSDeployment) or External.")
