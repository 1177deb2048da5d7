"""Names of the objects the operator creates for an SBSDeployment, and their owner reference."""

from __future__ import annotations

from typing import Any

from sbs.operator import api

FIELD_MANAGER = "sbs-operator"


def engine_service(dep_name: str) -> str:
    """The headless Service giving every engine pod a stable DNS name."""
    return f"{dep_name}-engines"


def scheduler_name(dep_name: str) -> str:
    return f"{dep_name}-scheduler"


def group_id(dep_name: str, role: str, index: int, template_hash: str) -> str:
    return f"{dep_name}-{role}-{index}-{template_hash[:5]}"


def hostname(role: str, index: int, template_hash: str, rank: int) -> str:
    """The pod's hostname under the headless Service (unique per revision, so surges never clash)."""
    return f"{role}-{index}-{template_hash[:5]}-{rank}"


def pod_name(dep_name: str, role: str, index: int, template_hash: str, rank: int) -> str:
    return f"{dep_name}-{hostname(role, index, template_hash, rank)}"


def leader_address(dep: api.SBSDeployment, role: str, index: int, template_hash: str) -> str:
    host = hostname(role, index, template_hash, 0)
    return f"{host}.{engine_service(dep.name)}.{dep.namespace}.svc"


def owner_reference(dep: api.SBSDeployment) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": dep.name,
        "uid": dep.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
