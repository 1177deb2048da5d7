"""The pure reconcile plan: creation, failures and restarts, rolling updates, drains, scale-down, status."""

from __future__ import annotations

import copy

import pytest
from sbs.kube import labels, timestamps
from sbs.operator import api, child_names, engine_pods, group_plan, group_state, placement
from sbs.operator import status as status_mod

NOW = 1_800_000_000.0


def deployment(**spec: object) -> api.SBSDeployment:
    body = {
        "model": {"path": "/m"},
        "prefill": {"groups": 2, "nodesPerGroup": 2, "chunkedPrefillSize": 16384},
        "decode": {"groups": 1, "nodesPerGroup": 3},
        "updateStrategy": {"drainSeconds": 30},
        "restartPolicy": {"backoffSeconds": 10, "maxBackoffSeconds": 40, "maxRestarts": 2},
        **spec,
    }
    return api.SBSDeployment.model_validate(
        {"metadata": {"name": "d", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": body}
    )


def thashes(dep: api.SBSDeployment) -> dict[str, str]:
    return {r: engine_pods.template_hash(dep.spec, r, False) for r in api.ROLES}


def running(pods: list[dict]) -> list[dict]:
    out = copy.deepcopy(pods)
    for p in out:
        p["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return out


def group(
    dep: api.SBSDeployment, role: str, index: int, thash: str | None = None, ready: bool = True
) -> list[dict]:
    """A group as the operator leaves it: every pod created, the leader marked complete."""
    pods = engine_pods.group_pods(dep, role, index, thash or thashes(dep)[role], gang=False)
    pods[0]["metadata"].setdefault("annotations", {})[group_state.COMPLETE] = "true"
    return running(pods) if ready else pods


def converged(dep: api.SBSDeployment) -> list[dict]:
    return [p for role in api.ROLES for i in range(dep.spec.role(role).groups) for p in group(dep, role, i)]


def keys(actions: list[group_plan.GroupAction]) -> list[tuple[str, int]]:
    return sorted((a.role, a.index) for a in actions)


def test_empty_cluster_creates_every_group() -> None:
    dep = deployment()
    p = group_plan.plan(dep, [], thashes(dep), NOW)
    assert keys(p.create) == [("decode", 0), ("prefill", 0), ("prefill", 1)]
    assert not p.delete and not p.drain


def test_converged_deployment_plans_nothing_and_is_ready() -> None:
    dep = deployment()
    p = group_plan.plan(dep, converged(dep), thashes(dep), NOW)
    assert p.writes == 0 and not p.events and p.requeue_after is None
    sched = api.SchedulerStatus(ready=1, desired=1, summary="1/1")
    st = status_mod.build(dep, p, scheduler=sched, revision="r", now=NOW)
    assert st.phase == "Ready"
    assert {c.type: c.status for c in st.conditions} == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
        "Reconciling": "False",  # kstatus (Flux) mirrors
        "Stalled": "False",
    }
    assert st.prefill.summary == "2/2" and st.decode.summary == "1/1"


def test_status_is_stable_when_nothing_changes() -> None:
    dep = deployment()
    p = group_plan.plan(dep, converged(dep), thashes(dep), NOW)
    sched = api.SchedulerStatus(ready=1, desired=1, summary="1/1")
    first = status_mod.build(dep, p, scheduler=sched, revision="r", now=NOW)
    dep.status = first
    again = status_mod.build(dep, p, scheduler=sched, revision="r", now=NOW + 100)
    assert again == first  # lastTransitionTime kept: no write


def test_a_missing_pod_recreates_exactly_that_group_after_backoff() -> None:
    dep = deployment()
    pods = [
        p
        for p in converged(dep)
        if p["metadata"]["name"] != child_names.pod_name("d", "prefill", 1, thashes(dep)["prefill"], 1)
    ]
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert keys(p.delete) == [("prefill", 1)] and not p.create
    assert p.events[0][1] == "GroupRecreated"
    assert [(r.role, r.index, r.count) for r in p.restarts] == [("prefill", 1, 1)]
    dep.status.group_restarts = p.restarts
    rest = [
        x
        for x in pods
        if x["metadata"]["labels"][labels.GROUP_ID]
        != child_names.group_id("d", "prefill", 1, thashes(dep)["prefill"])
    ]
    early = group_plan.plan(dep, rest, thashes(dep), NOW + 5)
    assert not early.create and early.requeue_after == 5.0  # backoff 10 s
    due = group_plan.plan(dep, rest, thashes(dep), NOW + 10)
    assert keys(due.create) == [("prefill", 1)]


def test_failed_or_restarted_pods_fail_the_group() -> None:
    dep = deployment()
    pods = converged(dep)
    pods[0]["status"]["phase"] = "Failed"
    assert keys(group_plan.plan(dep, pods, thashes(dep), NOW).delete) == [("prefill", 0)]
    pods = converged(dep)
    pods[-1]["status"]["containerStatuses"] = [{"name": "sglang", "restartCount": 1}]
    assert keys(group_plan.plan(dep, pods, thashes(dep), NOW).delete) == [("decode", 0)]


def test_terminating_pods_are_waited_for() -> None:
    dep = deployment()
    pods = converged(dep)
    for p in pods:
        if p["metadata"]["labels"][labels.ROLE] == "decode":
            p["metadata"]["deletionTimestamp"] = "2027-01-01T00:00:00Z"
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert not p.create and not p.delete and p.requeue_after is not None


def test_restart_budget_marks_the_group_failed() -> None:
    dep = deployment()
    dep.status.group_restarts = [
        api.GroupRestart(role="decode", index=0, count=2, last_restart_time=timestamps.rfc3339(NOW - 1000))
    ]
    pods = [
        p
        for p in converged(dep)
        if p["metadata"]["labels"][labels.ROLE] != "decode" or p["metadata"]["labels"][labels.RANK] != "2"
    ]
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert p.restarts[0].failed and p.events[0][1] == "GroupFailed"
    dep.status.group_restarts = p.restarts
    rest = [x for x in pods if x["metadata"]["labels"][labels.ROLE] != "decode"]
    later = group_plan.plan(dep, rest, thashes(dep), NOW + 10_000)
    assert not later.create and later.failed
    st = status_mod.build(
        dep, later, scheduler=api.SchedulerStatus(ready=1, desired=1), revision="r", now=NOW
    )
    assert st.phase == "Failed"
    assert next(c for c in st.conditions if c.type == "Degraded").reason == "GroupFailed"


def test_backoff_doubles_and_is_capped() -> None:
    policy = api.RestartPolicy(backoff_seconds=10, max_backoff_seconds=40)
    assert [group_plan._backoff(policy, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 40, 40]


def test_rolling_update_surges_one_group_per_role_and_drains_old_ones() -> None:
    old = deployment()
    pods = converged(old)
    new = deployment(engine={"image": "sglang:next"})
    h = thashes(new)
    p = group_plan.plan(new, pods, h, NOW)
    # one surge group per role, none deleted while the new ones are not ready
    assert keys(p.create) == [("decode", 0), ("prefill", 0)]
    assert not p.delete and not p.drain
    # new prefill 0 ready: old prefill 0 drains; the next prefill group waits for the surge slot
    pods2 = pods + group(new, "prefill", 0) + group(new, "decode", 0, ready=False)
    p2 = group_plan.plan(new, pods2, h, NOW)
    assert keys(p2.drain) == [("prefill", 0)] and not p2.create and not p2.delete
    # after drainSeconds the old group is deleted
    for pod in pods2:
        found = pod["metadata"]["labels"]
        if (
            found[labels.TEMPLATE_HASH] != h["prefill"]
            and found[labels.ROLE] == "prefill"
            and found[labels.GROUP] == "0"
            and found[labels.RANK] == "0"
        ):
            pod["metadata"].setdefault("annotations", {}).update(
                {labels.DRAINING: "true", labels.DRAIN_SINCE: timestamps.rfc3339(NOW)}
            )
    p3 = group_plan.plan(new, pods2, h, NOW + 31)
    assert keys(p3.delete) == [("prefill", 0)]
    assert group_plan.plan(new, pods2, h, NOW + 5).requeue_after == 25.0


def test_a_deployment_draining_an_old_group_is_progressing_not_ready() -> None:
    """Every group of the new template is ready, one old group still drains: the rollout is not done,
    so the phase stays Progressing until the old group is gone (no Ready -> Progressing -> Ready)."""
    old = deployment(prefill={"groups": 1, "nodesPerGroup": 2, "chunkedPrefillSize": 16384})
    new = deployment(
        prefill={"groups": 1, "nodesPerGroup": 2, "chunkedPrefillSize": 16384},
        engine={"image": "sglang:next"},
    )
    h = thashes(new)
    draining = group(old, "prefill", 0)
    leader = next(p for p in draining if p["metadata"]["labels"][labels.RANK] == "0")
    leader["metadata"]["annotations"] = {labels.DRAINING: "true", labels.DRAIN_SINCE: timestamps.rfc3339(NOW)}
    pods = draining + group(new, "prefill", 0) + group(new, "decode", 0)
    sched = api.SchedulerStatus(ready=1, desired=1)

    def phase(at: float) -> tuple[str, group_plan.Plan]:
        p = group_plan.plan(new, pods, h, at)
        return status_mod.build(new, p, scheduler=sched, revision="r", now=at).phase, p

    during, p = phase(NOW + 5)
    assert during == "Progressing" and not p.delete and "prefill group 0" in "; ".join(p.progressing)
    after, p = phase(NOW + 31)
    assert keys(p.delete) == [("prefill", 0)] and after == "Progressing"
    pods[:] = group(new, "prefill", 0) + group(new, "decode", 0)
    assert phase(NOW + 32)[0] == "Ready"


def test_max_unavailable_replaces_in_place_without_surge() -> None:
    old = deployment()
    new = deployment(
        engine={"image": "sglang:next"},
        updateStrategy={"maxSurge": 0, "maxUnavailable": 1, "drainSeconds": 0},
    )
    p = group_plan.plan(new, converged(old), thashes(new), NOW)
    assert not p.create and keys(p.delete) == [("decode", 0), ("prefill", 0)]


def test_skew_holds_back_the_role_that_leads() -> None:
    old = deployment(
        prefill={"groups": 4, "nodesPerGroup": 1, "chunkedPrefillSize": 8},
        decode={"groups": 2, "nodesPerGroup": 1},
    )
    new = deployment(
        engine={"image": "x:2"},
        prefill={"groups": 4, "nodesPerGroup": 1, "chunkedPrefillSize": 8},
        decode={"groups": 2, "nodesPerGroup": 1},
        updateStrategy={"maxSurge": 4, "maxSkewPercent": 0},
    )
    p = group_plan.plan(new, converged(old), thashes(new), NOW)
    created = keys(p.create)
    # with zero skew allowed, each role may start only what keeps it level with the other's progress
    assert ("prefill", 0) in created and ("decode", 0) in created
    assert (
        sum(1 for r, _ in created if r == "prefill") == 1 and sum(1 for r, _ in created if r == "decode") == 1
    )


def test_scale_down_drains_then_deletes_extra_groups() -> None:
    dep = deployment()
    pods = converged(dep)
    smaller = deployment(prefill={"groups": 1, "nodesPerGroup": 2, "chunkedPrefillSize": 16384})
    p = group_plan.plan(smaller, pods, thashes(smaller), NOW)
    assert keys(p.drain) == [("prefill", 1)] and not p.delete


def test_unschedulable_pods_report_insufficient_gpus() -> None:
    dep = deployment()
    pods = converged(dep)
    pending = group(dep, "decode", 0, ready=False)
    for pod in pending:
        pod["status"] = {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/64 nodes are available: 64 Insufficient nvidia.com/gpu.",
        }]}  # fmt: skip
    pods = [x for x in pods if x["metadata"]["labels"][labels.ROLE] != "decode"] + pending
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert not p.delete and not p.create
    st = status_mod.build(dep, p, scheduler=api.SchedulerStatus(ready=1, desired=1), revision="r", now=NOW)
    degraded = next(c for c in st.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "InsufficientGPUs")
    stalled = next(c for c in st.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "InsufficientGPUs")
    assert st.phase == "Degraded" and st.decode.summary == "0/1"


def _stranded(dep: api.SBSDeployment, since: float) -> list[dict]:
    pods = group(dep, "decode", 0, ready=False)
    for pod in pods:
        pod["metadata"].setdefault("annotations", {})["sbs.dev/topology-domain"] = "block-2"
        pod["spec"].pop("nodeName", None)
        pod["status"] = {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "lastTransitionTime": timestamps.rfc3339(since),
            "message": "3 node(s) had untolerated taint(s)",
        }]}  # fmt: skip
    return pods


def test_a_group_stranded_in_its_domain_is_placed_again() -> None:
    dep = deployment()
    pods = [p for p in converged(dep) if p["metadata"]["labels"][labels.ROLE] != "decode"]
    stranded = _stranded(dep, NOW - 10)
    early = group_plan.plan(dep, pods + stranded, thashes(dep), NOW)
    assert not early.delete
    assert early.requeue_after == pytest.approx(group_plan.REPLACE_AFTER_S - 10)  # woken to re-place it
    late = group_plan.plan(dep, pods + stranded, thashes(dep), NOW - 10 + group_plan.REPLACE_AFTER_S)
    assert keys(late.delete) == [("decode", 0)] and late.events[0][1] == "GroupReplaced"
    assert not late.restarts  # not a failure: no restart budget spent
    unpinned = copy.deepcopy(stranded)
    for pod in unpinned:
        del pod["metadata"]["annotations"]["sbs.dev/topology-domain"]
    assert not group_plan.plan(dep, pods + unpinned, thashes(dep), NOW + 31).delete  # nothing better to try


def test_a_half_placed_group_is_placed_again_whole() -> None:
    """Some pods bound in the pinned domain, the rest unschedulable there: the group cannot finish."""
    dep = deployment()
    pods = [p for p in converged(dep) if p["metadata"]["labels"][labels.ROLE] != "decode"]
    half = _stranded(dep, NOW - 20)
    half[0]["spec"]["nodeName"] = "node-0"
    half[0]["status"] = {"phase": "Running"}
    out = group_plan.plan(dep, pods + half, thashes(dep), NOW)
    assert keys(out.delete) == [("decode", 0)] and not out.restarts
    # a pod that kube-scheduler has not tried yet: not stranded (it may fit)
    untried = copy.deepcopy(half)
    untried[-1]["status"] = {"phase": "Pending"}
    assert not group_plan.plan(dep, pods + untried, thashes(dep), NOW).delete


# ---- self-healing: hung groups, NotReady nodes, pods stuck Terminating, interrupted creation ------


def on_nodes(pods: list[dict], prefix: str = "n") -> list[dict]:
    for i, p in enumerate(pods):
        p["spec"]["nodeName"] = f"{prefix}{i}"
    return pods


def hang(pod: dict, since: float, started: bool = True) -> None:
    """The leader's readiness probe fails (since `since`); its startup probe passed when `started`."""
    pod["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "lastTransitionTime": timestamps.rfc3339(since)}
    ]
    pod["status"]["containerStatuses"] = [
        {"name": "sglang", "ready": False, "started": started, "restartCount": 0}
    ]


def test_a_hung_group_is_recreated_after_not_ready_seconds_and_woken_for_it() -> None:
    dep = deployment(restartPolicy={"backoffSeconds": 10, "notReadySeconds": 120})
    pods = converged(dep)
    hang(pods[0], NOW - 100)  # prefill group 0's leader
    early = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert not early.delete and early.requeue_after == 20.0
    late = group_plan.plan(dep, pods, thashes(dep), NOW + 20)
    assert keys(late.delete) == [("prefill", 0)]
    assert "Running but not Ready for 120 s" in late.delete[0].reason
    assert [(r.role, r.index, r.count) for r in late.restarts] == [("prefill", 0, 1)]


def test_a_loading_engine_is_not_hung_and_zero_disables_the_rule() -> None:
    dep = deployment()
    pods = converged(dep)
    hang(pods[0], NOW - 10_000, started=False)  # still loading: the startup probe governs
    assert not group_plan.plan(dep, pods, thashes(dep), NOW).delete
    off = deployment(restartPolicy={"notReadySeconds": 0})
    pods = converged(off)
    hang(pods[0], NOW - 10_000)
    assert not group_plan.plan(off, pods, thashes(off), NOW).delete


def test_a_group_on_a_not_ready_node_is_recreated_after_not_ready_seconds() -> None:
    dep = deployment()  # notReadySeconds defaults to 300
    pods = on_nodes(converged(dep))
    node = pods[-1]["spec"]["nodeName"]  # a decode pod's node
    early = group_plan.plan(dep, pods, thashes(dep), NOW, {node: NOW - 200})
    assert not early.delete and early.requeue_after == 100.0
    late = group_plan.plan(dep, pods, thashes(dep), NOW, {node: NOW - 300})
    assert keys(late.delete) == [("decode", 0)]
    assert f"node {node} NotReady for 300 s" in late.delete[0].reason


def test_only_pods_terminating_on_a_node_not_ready_for_long_enough_are_force_deleted() -> None:
    dep = deployment()
    pods = on_nodes(converged(dep))
    decode = [p for p in pods if p["metadata"]["labels"][labels.ROLE] == "decode"]
    for p in decode:
        p["metadata"]["deletionTimestamp"] = timestamps.rfc3339(NOW - 60)
    dead, alive = decode[0]["spec"]["nodeName"], decode[1]["spec"]["nodeName"]
    p = group_plan.plan(dep, pods, thashes(dep), NOW, {dead: NOW - 300})
    assert [x["metadata"]["name"] for x in p.force_delete] == [decode[0]["metadata"]["name"]]
    assert not p.create and p.writes == 1
    assert not group_plan.plan(dep, pods, thashes(dep), NOW, {dead: NOW - 299}).force_delete
    other = group_plan.plan(dep, pods, thashes(dep), NOW, {alive: NOW - 10_000}).force_delete
    assert [x["metadata"]["name"] for x in other] == [decode[1]["metadata"]["name"]]
    running = on_nodes(converged(dep))  # not being deleted: never force-deleted
    assert not group_plan.plan(dep, running, thashes(dep), NOW, {dead: NOW - 10_000}).force_delete
    off = deployment(restartPolicy={"notReadySeconds": 0})
    assert not group_plan.plan(off, pods, thashes(off), NOW, {dead: NOW - 10_000}).force_delete


def test_a_group_whose_creation_was_interrupted_is_completed_without_a_restart() -> None:
    dep = deployment()
    pods = converged(dep)
    unfinished = [p for p in pods if p["metadata"]["labels"][labels.ROLE] == "decode"]
    del unfinished[0]["metadata"]["annotations"][
        group_state.COMPLETE
    ]  # the reconcile stopped before the mark
    unfinished[0]["metadata"]["annotations"][placement.DOMAIN_ANNOTATION] = "block-3"
    pods.remove(unfinished[2])  # ... and before the last pod
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert [(a.role, a.index, a.reason, a.domain, a.unfinished) for a in p.create] == [
        ("decode", 0, "Complete", "block-3", True)
    ]
    assert not p.delete and not p.restarts and not p.events
    # the same group, marked: a pod was lost, the whole group is recreated and a restart spent
    unfinished[0]["metadata"]["annotations"][group_state.COMPLETE] = "true"
    lost = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert keys(lost.delete) == [("decode", 0)] and not lost.create
    assert [(r.role, r.count) for r in lost.restarts] == [("decode", 1)]


def test_an_unfinished_group_of_an_old_template_is_deleted_without_a_restart() -> None:
    dep = deployment()
    old = group(dep, "decode", 0, thash="old")
    del old[0]["metadata"]["annotations"][group_state.COMPLETE]
    pods = [p for p in converged(dep) if p["metadata"]["labels"][labels.ROLE] != "decode"] + old[:2]
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert [(a.role, a.thash, a.reason) for a in p.delete] == [("decode", "old", "Unfinished")]
    assert not p.restarts and not p.create


def test_a_whole_group_without_the_mark_is_marked() -> None:
    dep = deployment()
    pods = converged(dep)
    del pods[0]["metadata"]["annotations"][group_state.COMPLETE]
    p = group_plan.plan(dep, pods, thashes(dep), NOW)
    assert [(a.role, a.index) for a in p.mark] == [("prefill", 0)] and p.writes == 1
