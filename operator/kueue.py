"""Engine groups as Kueue pod groups: all-or-nothing admission under a ClusterQueue's quota, and
placement by Kueue's Topology Aware Scheduling inside one domain of the role's `topologyKey`.

Pure builders (`pod_fields`, `creation_order`) and a few small API calls (is the LocalQueue there, a
group's Workload, its pending reason). Each group is one pod group named by its group id: Kueue
creates one Workload of that name, admits it whole or not at all, and ungates the pods with a
nodeSelector per pod. The group is marked not retriable: the operator never replaces one pod of a
group, it recreates the whole group, so once every pod of it has stopped (deleted with the group,
or garbage-collected with the deployment) Kueue finishes the Workload, gives its quota back and lets
the pods go. A group the operator deletes has its Workload deleted too, at once.
"""

from __future__ import annotations

import logging
from typing import Any

from sbs.kube import labels, timestamps
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.operator import api

log = logging.getLogger("sbs.operator")

API_VERSION = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
TOTAL_COUNT = "kueue.x-k8s.io/pod-group-total-count"
RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"


def pod_fields(
    dep: api.SBSDeployment, role: str, gid: str, queue: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that make a group's pods one Kueue pod group in `queue`.

    Every pod of a group has the same shape (requests, ports, selectors, affinity), so the Workload
    has one PodSet, and its required topology holds the whole group in one domain."""
    r = dep.spec.role(role)
    annotations = {TOTAL_COUNT: str(r.nodes_per_group), RETRIABLE: "false"}
    if r.topology_key:
        annotations[REQUIRED_TOPOLOGY] = r.topology_key
    return {QUEUE_LABEL: queue, GROUP_LABEL: gid}, annotations


def creation_order(actions: list[Any]) -> list[Any]:
    """Groups to submit, index by index with the roles alternating (prefill 0, decode 0, prefill 1,
    ...): Kueue admits a queue's Workloads in creation order (BestEffortFIFO lets a smaller one
    that fits pass), so a deployment's first decode group never waits behind all of its prefill."""
    return sorted(actions, key=lambda a: (a.index, api.ROLES.index(a.role)))


def queue_path(namespace: str, queue: str) -> str:
    return f"{collection_path(API_VERSION, 'localqueues', namespace)}/{queue}"


def workload_path(namespace: str, gid: str) -> str:
    return f"{collection_path(API_VERSION, 'workloads', namespace)}/{gid}"


async def queue_exists(client: KubeClient, namespace: str, queue: str) -> bool:
    """The LocalQueue is there (False when it, or Kueue's CRDs, or the permission to read it, are not)."""
    try:
        return await client.get_or_none(queue_path(namespace, queue)) is not None
    except ApiError as exc:
        if exc.status in (403, 404):
            return False
        raise


def is_kueue_group(pods: list[dict[str, Any]]) -> bool:
    return any(GROUP_LABEL in (p["metadata"].get("labels") or {}) for p in pods)


async def delete_workload(client: KubeClient, namespace: str, gid: str) -> None:
    """Give the group's quota back: Kueue strips its pods' finalizers as the Workload goes."""
    await client.delete(workload_path(namespace, gid), missing_ok=True)


NO_WORKLOAD_AFTER_S = 30.0
"""A gated group with no Workload this long after its pods were created is reported (Kueue creates one
within a second where it manages the namespace)."""


def pending_reason(workload: dict[str, Any]) -> str | None:
    """Why Kueue has not admitted a Workload, in its own words; None once admitted, and while Kueue has
    said nothing yet (a Workload it has just created: not a problem to report)."""
    conditions = {c["type"]: c for c in (workload.get("status") or {}).get("conditions") or []}
    admitted = conditions.get("Admitted")
    if admitted is not None and admitted.get("status") == "True":
        return None
    for type_ in ("QuotaReserved", "Admitted"):
        c = conditions.get(type_)
        if c is not None and c.get("status") == "False" and c.get("message"):
            return f"{c.get('reason', 'Pending')}: {c['message']}"
    return None


async def queued(
    client: KubeClient, dep: api.SBSDeployment, pods: list[dict[str, Any]], now: float
) -> list[str]:
    """`<role> group <i>: Kueue <reason>: <message>` for each Kueue group whose pods are still gated
    and that Kueue has given a reason for (or no Workload at all, `NO_WORKLOAD_AFTER_S` on)."""
    gated: dict[str, dict[str, Any]] = {}
    for p in pods:
        meta = p["metadata"]
        if GROUP_LABEL in (meta.get("labels") or {}) and (p.get("spec") or {}).get("schedulingGates"):
            gated.setdefault(meta["labels"][GROUP_LABEL], meta)
    out = []
    for gid, meta in sorted(gated.items()):
        workload = await client.get_or_none(workload_path(dep.namespace, gid))
        if workload is not None:
            reason = pending_reason(workload)
        elif _age(meta, now) >= NO_WORKLOAD_AFTER_S:
            reason = f"no Workload after {NO_WORKLOAD_AFTER_S:.0f} s (is the namespace managed by Kueue?)"
        else:
            reason = None
        if reason is not None:
            found = meta["labels"]
            out.append(f"{found[labels.ROLE]} group {found[labels.GROUP]}: Kueue {reason}")
    return out


def _age(meta: dict[str, Any], now: float) -> float:
    created = meta.get("creationTimestamp")
    return now - timestamps.parse(created) if created else 0.0
