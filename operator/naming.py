"""Names, labels and annotations of the objects the operator owns (one vocabulary for all of them).

Engine pods carry the labels the scheduler discovers them by: deployment, role, group, rank,
leader, serving revision (prefill and decode pair only within one) and the role's template hash
(what a rolling update replaces). Leaders carry the bootstrap port (ours, and SGLang router's
`sglang.ai/bootstrap-port`), their DP size and, while a group drains, `sbs.dev/draining`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sbs.operator import api

PREFIX = "sbs.dev/"
DEPLOYMENT = PREFIX + "deployment"
COMPONENT = PREFIX + "component"
ROLE = PREFIX + "role"
GROUP = PREFIX + "group"
RANK = PREFIX + "rank"
LEADER = PREFIX + "leader"
REVISION = PREFIX + "revision"
TEMPLATE_HASH = PREFIX + "template-hash"
GROUP_ID = PREFIX + "group-id"

BOOTSTRAP_PORT = PREFIX + "bootstrap-port"
SGLANG_BOOTSTRAP_PORT = "sglang.ai/bootstrap-port"
DP_SIZE = PREFIX + "dp-size"
ENGINE_PORT = PREFIX + "port"
DRAINING = PREFIX + "draining"
DRAIN_SINCE = PREFIX + "drain-since"
SPEC_HASH = PREFIX + "spec-hash"
"""On every child but pods: hash of what the operator applied, so unchanged children are not rewritten."""

ENGINE = "engine"
SCHEDULER = "scheduler"
FIELD_MANAGER = "sbs-operator"


def short_hash(obj: Any, length: int = 10) -> str:
    """A stable hex digest of a JSON-able value."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def common_labels(dep_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "sbs",
        "app.kubernetes.io/instance": dep_name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "sbs-operator",
        DEPLOYMENT: dep_name,
        COMPONENT: component,
    }


def engine_selector(dep_name: str) -> dict[str, str]:
    return {DEPLOYMENT: dep_name, COMPONENT: ENGINE}


def scheduler_selector(dep_name: str) -> dict[str, str]:
    return {DEPLOYMENT: dep_name, COMPONENT: SCHEDULER}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


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
