"""Pure status computation: counts, phase and `metav1.Condition`s (Ready, Progressing, Degraded).

Conditions keep their `lastTransitionTime` while their status is unchanged, so an unchanged world
gives an identical status and the operator writes nothing.
"""

from __future__ import annotations

from typing import Any

from sbs.kube import timestamps
from sbs.operator import api, group_plan

GPU_HINTS = ("nvidia.com/gpu",)


def condition(
    existing: list[api.Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: float,
    generation: int,
) -> api.Condition:
    value = "True" if status else "False"
    prev = next((c for c in existing if c.type == type_), None)
    since = (
        prev.last_transition_time if prev is not None and prev.status == value else timestamps.rfc3339(now)
    )
    return api.Condition(
        type=type_, status=value, reason=reason, message=message[:1024], last_transition_time=since,
        observed_generation=generation,
    )  # fmt: skip


def scheduler_status(
    dep: api.SBSDeployment, deployment: dict[str, Any] | None, endpoint: str
) -> api.SchedulerStatus:
    desired = dep.spec.scheduler.replicas
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    return api.SchedulerStatus(endpoint=endpoint, ready=ready, desired=desired, summary=f"{ready}/{desired}")


def degraded_reason(p: group_plan.Plan, problem: str | None) -> tuple[str, str] | None:
    """(reason, message) of the most serious problem, or None."""
    if problem:
        return problem.split(":", 1)[0], problem
    if p.failed:
        return "GroupFailed", "; ".join(p.failed)
    if p.queued:
        return "QueuedByKueue", "; ".join(p.queued[:4])
    if p.unschedulable:
        gpu = any(h in m for m in p.unschedulable for h in GPU_HINTS)
        return ("InsufficientGPUs" if gpu else "Unschedulable"), "; ".join(p.unschedulable[:4])
    return None


def build(
    dep: api.SBSDeployment,
    p: group_plan.Plan,
    *,
    scheduler: api.SchedulerStatus,
    revision: str,
    now: float,
    problem: str | None = None,
) -> api.SBSDeploymentStatus:
    """The status to write; `problem` is "Reason: message" for a spec the operator cannot act on."""
    gen = dep.generation
    old = dep.status.conditions
    roles = {r: p.role_status.get(r, api.RoleStatus(desired=dep.spec.role(r).groups)) for r in api.ROLES}
    groups_ready = all(s.ready >= s.desired for s in roles.values())
    sched_ready = scheduler.ready >= min(1, scheduler.desired)
    ready = groups_ready and sched_ready and problem is None
    if ready:
        ready_reason, ready_msg = "AllGroupsReady", "every engine group and the scheduler are ready"
    elif problem is not None:
        ready_reason, ready_msg = problem.split(":", 1)[0], problem
    elif not groups_ready:
        ready_reason = "GroupsNotReady"
        ready_msg = ", ".join(f"{r} {s.ready}/{s.desired}" for r, s in roles.items())
    else:
        ready_reason, ready_msg = "SchedulerNotReady", f"scheduler {scheduler.summary}"
    moving = bool(p.create or p.drain or p.delete or p.progressing) or not groups_ready
    if moving:
        prog_reason = (
            "RollingUpdate"
            if any("updat" in m or "old revision" in m for m in p.progressing)
            else ("Reconciling")
        )
        prog_msg = "; ".join(dict.fromkeys(p.progressing)) or "creating or replacing engine groups"
    else:
        prog_reason, prog_msg = "Complete", "all groups run the current revision"
    degraded = degraded_reason(p, problem)
    progressing = moving and problem is None
    conditions = [
        condition(old, "Ready", ready, ready_reason, ready_msg, now, gen),
        condition(old, "Progressing", progressing, prog_reason, prog_msg, now, gen),
        condition(old, "Degraded", degraded is not None, *(degraded or ("AsExpected", "")), now, gen),
        *kstatus(old, progressing, prog_reason, prog_msg, degraded, now, gen),
    ]
    if p.failed or problem:
        phase = "Failed"
    elif degraded is not None:
        phase = "Degraded"
    elif ready and not moving:
        phase = "Ready"
    elif any(s.ready for s in roles.values()) or moving:
        phase = "Progressing"
    else:
        phase = "Pending"
    return api.SBSDeploymentStatus(
        observed_generation=gen,
        phase=phase,
        revision=revision,
        prefill=roles["prefill"],
        decode=roles["decode"],
        scheduler=scheduler,
        group_restarts=p.restarts,
        conditions=conditions,
    )


def kstatus(
    old: list[api.Condition],
    progressing: bool,
    reason: str,
    message: str,
    degraded: tuple[str, str] | None,
    now: float,
    gen: int,
) -> list[api.Condition]:
    """Flux's kstatus reads only `Reconciling` and `Stalled` (abnormal-true conditions): mirror
    Progressing and Degraded there, so Flux tells a rollout or a stuck deployment from a healthy one.
    A stalled deployment is not also reconciling (kstatus takes the first true one)."""
    reconciling = progressing and degraded is None
    return [
        condition(old, "Stalled", degraded is not None, *(degraded or ("AsExpected", "")), now, gen),
        condition(old, "Reconciling", reconciling, reason if reconciling else "Complete", message, now, gen),
    ]


def invalid(
    prev: api.SBSDeploymentStatus, problem: str, generation: int, now: float
) -> api.SBSDeploymentStatus:
    """Status of a spec the operator cannot act on: counts kept, every condition names the problem."""
    reason = problem.split(":", 1)[0]
    conditions = [
        condition(prev.conditions, type_, type_ in ("Degraded", "Stalled"), reason, problem, now, generation)
        for type_ in ("Ready", "Progressing", "Degraded", "Reconciling", "Stalled")
    ]
    return prev.model_copy(
        update={"observed_generation": generation, "phase": "Failed", "conditions": conditions}
    )
