"""Reconciliation as a pure function: (spec, observed engine pods, restart records, now) → what to do.

Level-based: nothing here remembers the previous call. The same inputs give the same plan, and a
converged deployment gives an empty one.

Per role, group `index` may have instances of several template hashes (old and new during an
update). The rules, in order:
- a failed instance (a pod Failed, restarted or missing; Running but not Ready, or on a NotReady
  node, for `restartPolicy.notReadySeconds`) is deleted whole; it is recreated at the current
  template after an exponential backoff, until the restart budget is spent;
- pods are "missing" only once their group was created whole: the leader, created first, is marked
  `sbs.dev/group-complete` after the last pod. A group without the mark was interrupted mid-creation
  (an API error, a lost leadership): its missing pods are created, in its domain, and no restart is
  spent (an old template's unfinished group is deleted instead);
- force deletion, the one rule: a pod is force-deleted (grace 0, preconditioned on its UID) only
  when it is already being deleted and its node has been NotReady for `notReadySeconds` (the
  kubelet cannot confirm; what `node.kubernetes.io/out-of-service` does by hand). Its containers
  may still run behind a partition, which is harmless here: no Service or the scheduler's discovery
  lists a pod that is gone from the API, the rest of its group is deleted (its collectives break),
  and the recreated group is placed on Ready nodes;
- a group pinned to a topology domain that cannot take it (every pod not bound yet unschedulable
  there for `REPLACE_AFTER_S`, whether or not some are bound) is deleted and placed again, with no
  restart spent;
- indices at or above `groups` are drained, then deleted (scale down);
- an index with no instance gets one (creation, or recreation after backoff);
- an index with a ready current instance drains, then deletes, its older ones;
- an index with only old instances is updated when the role's budget allows: a surge instance
  beside the old one (`maxSurge`) or the old one drained first (`maxUnavailable`), and only while
  this role's progress leads the other role's by at most `maxSkewPercent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sbs.kube import timestamps
from sbs.operator import api
from sbs.operator.group_state import Instance, group_instances

REPLACE_AFTER_S = 15.0
"""A group pinned to a domain where it cannot finish is deleted and placed again after this: long
enough for kube-scheduler to see pods that were terminating there go, short beside a group's start."""


@dataclass
class GroupAction:
    role: str
    index: int
    thash: str
    reason: str
    domain: str | None = None
    unfinished: bool = False
    """Completing a group whose other pods exist: its missing pods go to its `domain` (if any)."""


@dataclass
class Plan:
    create: list[GroupAction] = field(default_factory=list)
    drain: list[GroupAction] = field(default_factory=list)
    delete: list[GroupAction] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) for Kubernetes Events."""
    restarts: list[api.GroupRestart] = field(default_factory=list)
    requeue_after: float | None = None
    unschedulable: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    """Groups Kueue has not admitted yet, with its reason (filled by the reconciler, see kueue.py)."""
    role_status: dict[str, api.RoleStatus] = field(default_factory=dict)
    progressing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Groups left failed: restart budget spent, or restartPolicy None."""
    mark: list[GroupAction] = field(default_factory=list)
    """Whole groups whose leader lacks the `COMPLETE` mark."""
    force_delete: list[dict[str, Any]] = field(default_factory=list)
    """Pods stuck Terminating on a NotReady node (see the force-deletion rule)."""

    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.drain) + len(self.delete) + len(self.mark) + len(self.force_delete)


def _backoff(policy: api.RestartPolicy, count: int) -> float:
    return float(min(policy.backoff_seconds * 2 ** max(count - 1, 0), policy.max_backoff_seconds))


class _Roller:
    """Plans one role; shares the Plan and the restart records with the other role."""

    def __init__(
        self,
        dep: api.SBSDeployment,
        role: str,
        thash: str,
        instances: dict[int, list[Instance]],
        restarts: dict[tuple[str, int], api.GroupRestart],
        plan: Plan,
        now: float,
        down: Mapping[str, float],
    ) -> None:
        self.dep, self.role, self.thash, self.now, self.plan = dep, role, thash, now, plan
        self.spec = dep.spec.role(role)
        self.instances = instances
        self.restarts = restarts
        self.down = down

    def _record_restart(self, index: int) -> None:
        key = (self.role, index)
        rec = self.restarts.get(key) or api.GroupRestart(role=self.role, index=index)
        rec.count += 1
        rec.last_restart_time = timestamps.rfc3339(self.now)
        rec.failed = rec.count > self.dep.spec.restart_policy.max_restarts
        self.restarts[key] = rec

    def _retire(self, inst: Instance, reason: str) -> None:
        """Drain, then delete once `drainSeconds` passed (no drain when nothing serves from it)."""
        since = inst.drain_since
        wait = self.dep.spec.update_strategy.drain_seconds
        if wait == 0 or (not inst.ready and since is None):
            self.plan.delete.append(GroupAction(self.role, inst.index, inst.thash, reason))
        elif since is None:
            self.plan.drain.append(GroupAction(self.role, inst.index, inst.thash, reason))
            self.plan.wake_in(wait)
        elif self.now - since >= wait:
            self.plan.delete.append(GroupAction(self.role, inst.index, inst.thash, reason))
        else:
            # Still draining: the rollout (or scale-down) is not done, so the deployment is not Ready
            # yet; it would otherwise flip Ready -> Progressing -> Ready when the group is deleted.
            self.plan.progressing.append(f"{self.role} group {inst.index} ({inst.thash[:5]}) draining")
            self.plan.wake_in(wait - (self.now - since))

    def failures(self) -> set[int]:
        """Delete failed groups whole; returns their indices (recreated once their pods are gone)."""
        policy = self.dep.spec.restart_policy
        limit = policy.not_ready_seconds
        deleted = set()
        for index, insts in self.instances.items():
            for inst in list(insts):
                if inst.terminating:
                    self.plan.force_delete += inst.stuck(self.now, limit, self.down) if limit else []
                    continue
                handled = self._replace_stranded(index, inst) or self._finish(index, inst)
                if handled:
                    if handled == "deleted":
                        deleted.add(index)
                    continue
                why = inst.failure(self.now, limit, self.down)
                if why is None:
                    wait = inst.wait_for_not_ready(self.now, limit, self.down)
                    if wait is not None:
                        self.plan.wake_in(wait)
                    if not inst.complete and len(inst.pods) == inst.expected:
                        self.plan.mark.append(GroupAction(self.role, index, inst.thash, "Created"))
                    continue
                if policy.policy == "None":
                    self.plan.failed.append(f"{self.role} group {index}: {why} (restartPolicy None)")
                    continue
                insts.remove(inst)
                deleted.add(index)
                self.plan.delete.append(GroupAction(self.role, index, inst.thash, f"GroupFailed: {why}"))
                if index < self.spec.groups:
                    self._record_restart(index)
                    rec = self.restarts[(self.role, index)]
                    msg = (
                        f"{self.role} group {index}: {why}; recreating the whole group (restart {rec.count})"
                    )
                    if rec.failed:
                        msg = f"{self.role} group {index}: {why}; restart budget spent, group marked failed"
                    self.plan.events.append(
                        ("Warning", "GroupRecreated" if not rec.failed else "GroupFailed", msg)
                    )
        return deleted

    def _replace_stranded(self, index: int, inst: Instance) -> str | None:
        """A group unschedulable in its pinned domain for `REPLACE_AFTER_S` is deleted, to be placed again."""
        stranded = inst.stranded_since()
        if stranded is None:
            return None
        if self.now - stranded < REPLACE_AFTER_S:
            self.plan.wake_in(REPLACE_AFTER_S - (self.now - stranded))
            return None
        self.instances[index].remove(inst)
        self.plan.delete.append(GroupAction(self.role, index, inst.thash, "Replace"))
        msg = f"{self.role} group {index}: unschedulable in its topology domain; placing it again"
        self.plan.events.append(("Warning", "GroupReplaced", msg))
        return "deleted"

    def _finish(self, index: int, inst: Instance) -> str | None:
        """An unfinished group: completed at the current template, deleted at an old one (no restart)."""
        if not inst.unfinished():
            return None
        if inst.thash == self.thash:
            self.plan.create.append(GroupAction(self.role, index, inst.thash, "Complete", inst.domain, True))
            return "kept"
        self.instances[index].remove(inst)
        self.plan.delete.append(GroupAction(self.role, index, inst.thash, "Unfinished"))
        return "deleted"

    def run(self, other_progress: float) -> None:
        just_deleted = self.failures()
        strategy = self.dep.spec.update_strategy
        policy = self.dep.spec.restart_policy
        n = self.spec.groups
        updated_ready = ready = surge = unavailable = 0
        candidates: list[int] = []
        for index in sorted(set(self.instances) | set(range(n))):
            insts = [i for i in self.instances.get(index, []) if not i.terminating]
            dying = [i for i in self.instances.get(index, []) if i.terminating]
            if dying or index in just_deleted:
                self.plan.progressing.append(f"{self.role} group {index} terminating")
                self.plan.wake_in(2.0)
            if index >= n:
                for inst in insts:
                    self._retire(inst, "ScaledDown")
                continue
            new = next((i for i in insts if i.thash == self.thash), None)
            old = [i for i in insts if i.thash != self.thash]
            if any(i.ready for i in insts):
                ready += 1
            else:
                unavailable += 1
            if new is not None and old:
                surge += 1
            if new is not None and new.ready and not old:
                updated_ready += 1
            for inst in insts:
                msg = inst.unschedulable()
                if msg:
                    self.plan.unschedulable.append(f"{self.role} group {index}: {msg}")
            if new is None and not old:
                if not dying and index not in just_deleted:
                    self._create_missing(index, policy)
            elif new is not None and old:
                if new.ready:
                    for inst in old:
                        self._retire(inst, "Replaced")
                else:
                    self.plan.progressing.append(f"{self.role} group {index} updating")
            elif new is None:
                candidates.append(index)
            elif not new.ready:
                self.plan.progressing.append(f"{self.role} group {index} starting")
            else:
                rec = self.restarts.get((self.role, index))
                if (
                    rec
                    and not rec.failed
                    and self.now - timestamps.parse(rec.last_restart_time) >= policy.reset_after_seconds
                ):
                    del self.restarts[(self.role, index)]
        progress = updated_ready / n if n else 1.0
        for index in candidates:
            if (progress - other_progress) * 100 > strategy.max_skew_percent:
                self.plan.progressing.append(f"{self.role} update waits for the other role (maxSkew)")
                break
            if surge < strategy.max_surge:
                surge += 1
                self.plan.create.append(GroupAction(self.role, index, self.thash, "RollingUpdate"))
            elif unavailable < strategy.max_unavailable:
                unavailable += 1
                for inst in self.instances[index]:
                    if not inst.terminating:
                        self._retire(inst, "RollingUpdate")
            else:
                break
            progress += 1 / n
        if candidates:
            self.plan.progressing.append(
                f"{self.role} rolling update: {len(candidates)} groups on an old revision"
            )
        self.plan.role_status[self.role] = api.RoleStatus(
            desired=n, ready=ready, updated=updated_ready, summary=f"{ready}/{n}", revision=self.thash
        )

    def _create_missing(self, index: int, policy: api.RestartPolicy) -> None:
        rec = self.restarts.get((self.role, index))
        if rec is not None and rec.last_restart_time:
            if rec.failed:
                self.plan.failed.append(
                    f"{self.role} group {index}: restart budget spent ({rec.count - 1} restarts)"
                )
                return
            due = timestamps.parse(rec.last_restart_time) + _backoff(policy, rec.count)
            if self.now < due:
                self.plan.progressing.append(f"{self.role} group {index} recreation backing off")
                self.plan.wake_in(due - self.now)
                return
        self.plan.create.append(GroupAction(self.role, index, self.thash, "Recreate" if rec else "Create"))


def progress_of(spec: api.RoleSpec, thash: str, instances: dict[int, list[Instance]]) -> float:
    """Fraction of a role's groups that run the current template and are ready, with no old instance left."""
    if spec.groups == 0:
        return 1.0
    done = 0
    for index in range(spec.groups):
        insts = [i for i in instances.get(index, []) if not i.terminating]
        if insts and all(i.thash == thash for i in insts) and all(i.ready for i in insts):
            done += 1
    return done / spec.groups


def plan(
    dep: api.SBSDeployment,
    pods: list[dict[str, Any]],
    thashes: dict[str, str],
    now: float,
    down: Mapping[str, float] | None = None,
) -> Plan:
    """What to change so the engine groups converge on `dep.spec`; `thashes` = current template per
    role; `down` = NotReady nodes by name, with the (wall) time each went NotReady."""
    out = Plan()
    observed = group_instances(pods, dep.spec)
    restarts = {(r.role, r.index): r.model_copy() for r in dep.status.group_restarts}
    progress = {r: progress_of(dep.spec.role(r), thashes[r], observed[r]) for r in api.ROLES}
    for role in api.ROLES:
        other = next(r for r in api.ROLES if r != role)
        _Roller(dep, role, thashes[role], observed[role], restarts, out, now, down or {}).run(progress[other])
    out.restarts = sorted(
        (r for r in restarts.values() if r.index < dep.spec.role(r.role).groups),
        key=lambda r: (r.role, r.index),
    )
    return out
