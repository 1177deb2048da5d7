"""Per-role scale targets: one SBSRoleScaler per role of each SBSDeployment (pure parts).

`desired_groups` says how many groups a role should have given who owns the count; `scaler` builds
the object created once (its `spec.replicas` is then written only by its owner), `scaler_status` what
its status should say.
"""

from __future__ import annotations

from typing import Any

from sbs.kube import labels
from sbs.operator import api, child_names
from sbs.operator.autoscaling import role_scaler_api

SCALER = "scaler"


def scaler_name(dep_name: str, role: str) -> str:
    return f"{dep_name}-{role}"


def leader_selector(dep_name: str, role: str) -> str:
    return labels.selector_string(labels.leader_selector(dep_name, role))


def scaler(dep: api.SBSDeployment, role: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": role_scaler_api.KIND,
        "metadata": {
            "name": scaler_name(dep.name, role),
            "namespace": dep.namespace,
            "labels": {**labels.common_labels(dep.name, SCALER), labels.ROLE: role},
            "ownerReferences": [child_names.owner_reference(dep)],
        },
        "spec": {"deployment": dep.name, "role": role, "replicas": dep.spec.role(role).groups},
    }


def desired_groups(dep: api.SBSDeployment, role: str, observed: dict[str, Any] | None) -> int:
    """The role's group count: the spec's when Static (or no scaler yet), the scaler's when External."""
    r = dep.spec.role(role)
    if r.groups_owner == "External" and observed is not None:
        return int((observed.get("spec") or {}).get("replicas", r.groups))
    return r.groups


def scaler_status(dep: api.SBSDeployment, role: str, groups: int, ready: int) -> dict[str, Any]:
    return role_scaler_api.RoleScalerStatus(
        replicas=groups, ready=ready, selector=leader_selector(dep.name, role),
        owner=dep.spec.role(role).groups_owner,
    ).model_dump(by_alias=True, mode="json")  # fmt: skip


def effective(dep: api.SBSDeployment, groups: dict[str, int]) -> api.SBSDeployment:
    """`dep` with each role's `groups` replaced by the count its owner decided."""
    spec = dep.spec.model_copy(
        update={r: dep.spec.role(r).model_copy(update={"groups": groups[r]}) for r in api.ROLES}
    )
    return dep.model_copy(update={"spec": spec})
