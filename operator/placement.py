"""Topology-aware placement of whole engine groups, without a gang scheduler.

kube-scheduler places pods one at a time: with only pod affinity, a group's first pod may land in
a block that cannot hold the rest (a 9-node decode group stranded 7 nodes deep). So before
creating a group the operator picks a topology domain that has room for all of it (best fit:
the fullest domain that still fits, keeping large holes for large groups) and pins the pods there
with node affinity. Pure: the cluster's nodes and pods (or their `Allocation` summary) in, a choice
out; `cluster_view.py` keeps that summary, shared and cached, for the operator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sbs.kube import timestamps

GPU = "nvidia.com/gpu"
DOMAIN_ANNOTATION = "sbs.dev/topology-domain"


_SUFFIX = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def quantity(text: str | int | float | None) -> float:
    """A Kubernetes resource quantity (`500m`, `64Gi`, `1e3`, `2`) in base units; ValueError if malformed."""
    if text is None:
        return 0.0
    s = str(text).strip()
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E"):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * _SUFFIX[suffix]
    return float(s)


def _qty(text: str | int | None) -> int:
    return int(quantity(text))


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


@dataclass(frozen=True)
class NodeInfo:
    """What placement and node health need of one Node (a few fields, not the whole object)."""

    name: str
    labels: dict[str, str]
    gpus: int
    unschedulable: bool = False
    taints: tuple[dict[str, Any], ...] = ()
    ready: bool = True
    not_ready_since: float | None = None
    """Wall time of the Ready condition's last transition, while it is not True (and parseable)."""
    allocatable: Mapping[str, float] = field(default_factory=dict)
    """Every allocatable resource but GPUs (cpu, memory, RDMA devices, hugepages), in base units."""


def node_info(node: dict[str, Any]) -> NodeInfo:
    status = node.get("status") or {}
    spec = node.get("spec") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    is_ready = ready is None or ready.get("status") == "True"
    since = None
    if not is_ready:
        try:
            since = timestamps.parse(ready.get("lastTransitionTime") or "")  # type: ignore[union-attr]
        except ValueError:
            since = None
    return NodeInfo(
        name=node["metadata"]["name"],
        labels=dict(node["metadata"].get("labels") or {}),
        gpus=_qty((status.get("allocatable") or {}).get(GPU)),
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(spec.get("taints") or ()),
        ready=is_ready,
        not_ready_since=since,
        allocatable={k: quantity(v) for k, v in (status.get("allocatable") or {}).items() if k != GPU},
    )


NOT_READY_TAINT = "node.kubernetes.io/not-ready"
"""Mirrors the Ready condition, a few seconds late: a Ready node still carrying it (a node just
joined) is placed on, since kube-scheduler binds there as soon as the node controller lifts it."""


def _node_ok(node: NodeInfo, selector: dict[str, str], tolerations: Sequence[dict[str, Any]]) -> bool:
    if node.unschedulable or not node.ready or any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    return not any(
        t.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(t, tolerations)
        for t in node.taints
        if t.get("key") != NOT_READY_TAINT
    )


def requests(pod: dict[str, Any]) -> dict[str, float]:
    """What kube-scheduler reserves for `pod` on a node: per resource, the containers' requests (a
    limit stands for a missing request), or an init container's if larger, plus the pod's overhead."""

    def of(container: dict[str, Any]) -> Counter[str]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return Counter({k: quantity(v) for k, v in merged.items()})

    spec = pod.get("spec") or {}
    total: Counter[str] = Counter()
    for c in spec.get("containers") or []:
        total.update(of(c))
    for c in spec.get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total[k], v)
    total.update({k: quantity(v) for k, v in (spec.get("overhead") or {}).items()})
    return dict(total)


def _gpus_requested(pod: dict[str, Any]) -> int:
    return int(requests(pod).get(GPU, 0))


@dataclass
class Allocation:
    """The cluster's GPUs in use: per node, by bound pods; per (domain, GPUs per pod), by pods pinned
    to a domain and not bound yet (groups being created)."""

    nodes: list[NodeInfo] = field(default_factory=list)
    used: Counter[str] = field(default_factory=Counter)
    """GPUs in use per node."""
    used_other: dict[str, Counter[str]] = field(default_factory=dict)
    """Other resources in use per node (those a node lists as allocatable)."""
    pending: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add_pods(self, pods: Iterable[dict[str, Any]]) -> None:
        for p in pods:
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            node = p.get("spec", {}).get("nodeName")
            if node:
                req = requests(p)
                self.used[node] += int(req.pop(GPU, 0))
                if req:
                    self.used_other.setdefault(node, Counter()).update(req)
                continue
            domain = (p["metadata"].get("annotations") or {}).get(DOMAIN_ANNOTATION)
            if domain:
                self.pending[(domain, _gpus_requested(p))] += 1

    def free(
        self,
        *,
        key: str,
        selector: dict[str, str],
        gpus: int,
        tolerations: Sequence[dict[str, Any]] = (),
        reserved: Mapping[str, int] | None = None,
        other: Mapping[str, float] | None = None,
    ) -> dict[str, int]:
        """Per domain of label `key`: Ready nodes matching `selector`, with no untolerated NoSchedule
        or NoExecute taint, `gpus` GPUs and the `other` resources free (cpu, memory, RDMA devices: a
        node whose memory other pods hold is full for kube-scheduler, GPUs free or not), minus
        pending pods of at least `gpus` GPUs pinned there and minus `reserved` nodes (placements not
        listed yet)."""
        other = {k: v for k, v in (other or {}).items() if k != GPU and v > 0}
        free: Counter[str] = Counter()
        for n in self.nodes:
            domain = n.labels.get(key)
            if (
                domain is not None
                and _node_ok(n, selector, tolerations)
                and n.gpus - self.used[n.name] >= gpus
                and self._fits_other(n, other)
            ):
                free[domain] += 1
        pending: Counter[str] = Counter(reserved or {})
        for (domain, each), count in self.pending.items():
            if each >= gpus:
                pending[domain] += count
        return {d: free[d] - pending[d] for d in sorted(free)}

    def _fits_other(self, node: NodeInfo, other: Mapping[str, float]) -> bool:
        used = self.used_other.get(node.name) or Counter()
        # a little slack for float rounding of quantities like 0.1 cpu
        return all(node.allocatable.get(k, 0.0) - used[k] >= v * (1 - 1e-9) for k, v in other.items())


def allocation(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> Allocation:
    out = Allocation(nodes=[node_info(n) for n in nodes])
    out.add_pods(pods)
    return out


def free_slots(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    key: str,
    selector: dict[str, str],
    gpus: int,
    tolerations: Sequence[dict[str, Any]] = (),
    other: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """`Allocation.free` of these nodes and pods."""
    return allocation(nodes, pods).free(
        key=key, selector=selector, gpus=gpus, tolerations=tolerations, other=other
    )


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
