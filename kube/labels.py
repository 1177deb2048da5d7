"""The label and annotation vocabulary of SBS's Kubernetes objects, shared by the operator (which
writes it) and the scheduler's discovery (which selects engines by it).

Engine pods carry their deployment, role, group, rank, leader flag, serving revision (prefill and
decode pair only within one) and the role's template hash (what a rolling update replaces). Leaders
carry the bootstrap port (ours, and SGLang router's `sglang.ai/bootstrap-port`), their DP size and,
while a group drains, `sbs.dev/draining`.
"""

from __future__ import annotations

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
HTTP_PORT_NAME = "http"
"""The container port an engine serves HTTP on."""


def common_labels(dep_name: str, component: str) -> dict[str, str]:
    """The labels of every object of one deployment's `component`."""
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


def leader_selector(dep_name: str, role: str | None = None) -> dict[str, str]:
    """The leader pods (one per engine group) of a deployment, or of one of its roles."""
    return {**engine_selector(dep_name), **({ROLE: role} if role else {}), LEADER: "true"}


def selector_string(labels: dict[str, str]) -> str:
    """`k=v,...` in key order, as the API's `labelSelector` takes it."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
