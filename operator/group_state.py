"""The observed state of engine groups: their pods, grouped per (role, index, template hash), and
what those pods say: failed, hung, on a NotReady node, stuck Terminating, unfinished, stranded."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sbs.kube import labels, timestamps
from sbs.operator import api
from sbs.operator.placement import DOMAIN_ANNOTATION as DOMAIN

COMPLETE = labels.PREFIX + "group-complete"
"""On a group's leader once every pod of the group was created."""


def _since(conditions: list[dict[str, Any]], type_: str) -> tuple[str | None, float | None]:
    """(status, lastTransitionTime) of a condition; the time None when absent or unparseable."""
    cond = next((c for c in conditions if c.get("type") == type_), None)
    if cond is None:
        return None, None
    try:
        return cond.get("status"), timestamps.parse(cond.get("lastTransitionTime") or "")
    except ValueError:
        return cond.get("status"), None


def hung_since(pod: dict[str, Any]) -> float | None:
    """When a Running pod whose containers all started (startup probe passed) stopped being Ready;
    None while it is Ready, still starting, or not Running."""
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    if status.get("phase") != "Running" or not containers or not all(c.get("started") for c in containers):
        return None
    ready, since = _since(status.get("conditions") or [], "Ready")
    return since if ready == "False" else None


@dataclass
class Instance:
    """The observed pods of one (role, index, template hash)."""

    role: str
    index: int
    thash: str
    expected: int
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def leader(self) -> dict[str, Any] | None:
        return next((p for p in self.pods if p["metadata"]["labels"].get(labels.RANK) == "0"), None)

    @property
    def terminating(self) -> bool:
        return any(p["metadata"].get("deletionTimestamp") for p in self.pods)

    @property
    def complete(self) -> bool:
        """Every pod was created (the leader carries the mark)."""
        return ((self.leader or {}).get("metadata", {}).get("annotations") or {}).get(COMPLETE) == "true"

    @property
    def domain(self) -> str | None:
        """The topology domain its pods were pinned to, if any."""
        return next(
            (d for p in self.pods if (d := (p["metadata"].get("annotations") or {}).get(DOMAIN))), None
        )

    def crashed(self) -> str | None:
        """A pod that failed or restarted, or None."""
        for p in self.pods:
            name = p["metadata"]["name"]
            status = p.get("status") or {}
            if status.get("phase") == "Failed":
                return f"pod {name} failed ({status.get('reason') or 'Error'})"
            for cs in status.get("containerStatuses") or []:
                if cs.get("restartCount", 0) > 0:
                    return f"pod {name} restarted"
        return None

    def unfinished(self) -> bool:
        """Created only in part by an interrupted reconcile (leader there, unmarked, no crash)."""
        return (
            len(self.pods) < self.expected
            and self.leader is not None
            and not self.complete
            and not self.crashed()
        )

    def failure(
        self, now: float = 0.0, not_ready_s: float = 0.0, down: Mapping[str, float] | None = None
    ) -> str | None:
        """Why this group cannot serve any more (a lost, hung or unreachable rank), or None. `down`:
        NotReady nodes, by name, with the time they went NotReady."""
        crashed = self.crashed()
        if crashed:
            return crashed
        if len(self.pods) < self.expected:
            return f"{self.expected - len(self.pods)} of {self.expected} pods missing"
        if not not_ready_s:
            return None
        for p in self.pods:
            name, node = p["metadata"]["name"], p.get("spec", {}).get("nodeName")
            since = (down or {}).get(node or "")
            if since is not None and now - since >= not_ready_s:
                return f"pod {name}: node {node} NotReady for {now - since:.0f} s"
            since = hung_since(p)
            if since is not None and now - since >= not_ready_s:
                return f"pod {name} Running but not Ready for {now - since:.0f} s"
        return None

    def stuck(self, now: float, not_ready_s: float, down: Mapping[str, float]) -> list[dict[str, Any]]:
        """Its pods being deleted on a node NotReady for `not_ready_s` (the kubelet cannot confirm)."""
        out = []
        for p in self.pods:
            since = down.get(p.get("spec", {}).get("nodeName") or "")
            if p["metadata"].get("deletionTimestamp") and since is not None and now - since >= not_ready_s:
                out.append(p)
        return out

    def wait_for_not_ready(self, now: float, not_ready_s: float, down: Mapping[str, float]) -> float | None:
        """Seconds until a NotReady pod or node of this group reaches `not_ready_s`, if one is pending."""
        waits = []
        for p in self.pods:
            for since in (down.get(p.get("spec", {}).get("nodeName") or ""), hung_since(p)):
                if since is not None:
                    waits.append(max(since + not_ready_s - now, 0.0))
        return min(waits) if not_ready_s and waits else None

    @property
    def ready(self) -> bool:
        if len(self.pods) != self.expected or self.terminating:
            return False
        for p in self.pods:
            status = p.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if status.get("phase") != "Running" or conditions.get("Ready") != "True":
                return False
        return True

    def unschedulable(self) -> str | None:
        for p in self.pods:
            for c in (p.get("status") or {}).get("conditions") or []:
                if (
                    c["type"] == "PodScheduled"
                    and c["status"] == "False"
                    and c.get("reason") == "Unschedulable"
                ):
                    return c.get("message") or "Unschedulable"
        return None

    def stranded_since(self) -> float | None:
        """When this group, pinned to a topology domain, became unable to finish there: every pod not
        bound yet is unschedulable (the domain filled up or its nodes went away after placement; pods
        already bound are of no use without the rest); None otherwise."""
        since = []
        for p in self.pods:
            if DOMAIN not in (p["metadata"].get("annotations") or {}):
                return None
            if p.get("spec", {}).get("nodeName"):
                continue
            cond = next(
                (c for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"),
                None,
            )
            if not cond or cond["status"] != "False" or cond.get("reason") != "Unschedulable":
                return None
            try:
                since.append(timestamps.parse(cond.get("lastTransitionTime", "")))
            except ValueError:
                return None
        return max(since) if since else None

    @property
    def drain_since(self) -> float | None:
        leader = self.leader
        annotations = (leader or {}).get("metadata", {}).get("annotations") or {}
        if annotations.get(labels.DRAINING) != "true":
            return None
        try:
            return timestamps.parse(annotations.get(labels.DRAIN_SINCE, ""))
        except ValueError:
            return 0.0


def group_instances(
    pods: list[dict[str, Any]], spec: api.SBSDeploymentSpec
) -> dict[str, dict[int, list[Instance]]]:
    """Observed pods grouped by role → index → instances (one per template hash)."""
    by_key: dict[tuple[str, int, str], Instance] = {}
    for p in pods:
        found = p["metadata"].get("labels") or {}
        role, thash = found.get(labels.ROLE), found.get(labels.TEMPLATE_HASH, "")
        if role not in api.ROLES or not found.get(labels.GROUP, "").isdigit():
            continue
        key = (role, int(found[labels.GROUP]), thash)
        if key not in by_key:
            by_key[key] = Instance(role, key[1], thash, spec.role(role).nodes_per_group)
        by_key[key].pods.append(p)
    out: dict[str, dict[int, list[Instance]]] = {r: defaultdict(list) for r in api.ROLES}
    for inst in by_key.values():
        # pods of an older template may have another size; compare with their own labels' count
        out[inst.role][inst.index].append(inst)
    return out
