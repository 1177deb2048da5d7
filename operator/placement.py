"""Topology-aware placement of whole engine groups, without a gang scheduler.

kube-scheduler places pods one at a time: with only pod affinity, a group's first pod may land in
a block that cannot hold the rest (a 9-node decode group stranded 7 nodes deep). So before
creating a group the operator picks a topology domain that has room for all of it (best fit:
the fullest domain that still fits, keeping large holes for large groups) and pins the pods there
with node affinity. Pure: the cluster's nodes and pods in, a choice out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

GPU = "nvidia.com/gpu"
DOMAIN_ANNOTATION = "sbs.dev/topology-domain"


def _qty(text: str | int | None) -> int:
    if text is None:
        return 0
    s = str(text)
    return int(s[:-1]) // 1000 if s.endswith("m") else int(s)


def tolerated(taint: dict[str, Any], tolerations: Sequence[dict[str, Any]]) -> bool:
    """Whether a taint is tolerated, by Kubernetes' matching rules (key, operator, value, effect)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _node_ok(node: dict[str, Any], selector: dict[str, str], tolerations: Sequence[dict[str, Any]]) -> bool:
    labels = node["metadata"].get("labels") or {}
    if node.get("spec", {}).get("unschedulable") or any(labels.get(k) != v for k, v in selector.items()):
        return False
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(taint, tolerations):
            return False
    conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready", "True") == "True"


def _gpus_requested(pod: dict[str, Any]) -> int:
    total = 0
    for c in pod.get("spec", {}).get("containers") or []:
        res = c.get("resources") or {}
        total += _qty((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU))
    return total


def free_slots(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    key: str,
    selector: dict[str, str],
    gpus: int,
    tolerations: Sequence[dict[str, Any]] = (),
) -> dict[str, int]:
    """Per domain of label `key`: Ready nodes matching `selector`, with no untolerated NoSchedule or
    NoExecute taint and `gpus` GPUs free, minus pods pinned to the domain but not yet bound (groups
    being created)."""
    used: dict[str, int] = defaultdict(int)
    pending: dict[str, int] = defaultdict(int)
    for p in pods:
        phase = (p.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            continue
        node = p.get("spec", {}).get("nodeName")
        if node:
            used[node] += _gpus_requested(p)
        else:
            domain = (p["metadata"].get("annotations") or {}).get(DOMAIN_ANNOTATION)
            if domain and _gpus_requested(p) >= gpus:
                pending[domain] += 1
    free: dict[str, int] = defaultdict(int)
    for n in nodes:
        domain = (n["metadata"].get("labels") or {}).get(key)
        if domain is None or not _node_ok(n, selector, tolerations):
            continue
        alloc = _qty(((n.get("status") or {}).get("allocatable") or {}).get(GPU))
        if alloc - used[n["metadata"]["name"]] >= gpus:
            free[domain] += 1
    return {d: free[d] - pending.get(d, 0) for d in sorted(free)}


def choose(free: dict[str, int], need: int) -> str | None:
    """Best fit: the domain with the fewest free slots that still holds `need` (ties by name)."""
    fits = [(slots, domain) for domain, slots in free.items() if slots >= need]
    return min(fits)[1] if fits else None


def pin(pod: dict[str, Any], key: str, domain: str) -> dict[str, Any]:
    """`pod` required to run in `domain` of `key` (and annotated with it)."""
    spec = dict(pod["spec"])
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    expr = {"key": key, "operator": "In", "values": [domain]}
    terms = [
        {**t, "matchExpressions": [*(t.get("matchExpressions") or []), expr]}
        for t in required.get("nodeSelectorTerms") or [{}]
    ]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity
    meta = dict(pod["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), DOMAIN_ANNOTATION: domain}
    return {**pod, "metadata": meta, "spec": spec}
