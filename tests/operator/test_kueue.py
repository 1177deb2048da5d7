"""Engine groups as Kueue pod groups: the pods' fields, one PodSet per group, order, pending reasons."""

from __future__ import annotations

import asyncio
from typing import Any

from sbs.kube import labels, timestamps
from sbs.operator import api, engine_pods, group_plan, group_state, kueue
from sbs.operator import status as status_mod

from tests.operator.test_group_plan import NOW, converged, deployment, thashes


def kueue_shape(pod: dict[str, Any]) -> dict[str, Any]:
    """What Kueue 0.17 hashes into a pod's role (`pkg/util/pod.SpecShape`): one shape, one PodSet."""
    spec = pod["spec"]
    return {
        "containers": [
            {"requests": c["resources"].get("requests"), "ports": c.get("ports")} for c in spec["containers"]
        ],
        **{k: spec.get(k) for k in ("initContainers", "nodeSelector", "affinity", "tolerations",
                                    "runtimeClassName", "priority", "topologySpreadConstraints", "overhead")},
    }  # fmt: skip


def test_a_group_is_one_pod_group_of_one_shape_with_its_topology_required() -> None:
    dep = deployment()
    for role in api.ROLES:
        pods = engine_pods.group_pods(dep, role, 1, thashes(dep)[role], gang=False, queue="sbs")
        gid = pods[0]["metadata"]["labels"][labels.GROUP_ID]
        for pod in pods:
            meta = pod["metadata"]
            assert meta["labels"][kueue.QUEUE_LABEL] == "sbs"
            assert meta["labels"][kueue.GROUP_LABEL] == gid
            assert meta["annotations"][kueue.TOTAL_COUNT] == str(len(pods))
            assert meta["annotations"][kueue.RETRIABLE] == "false"
            assert meta["annotations"][kueue.REQUIRED_TOPOLOGY] == dep.spec.role(role).topology_key
            assert "schedulerName" not in pod["spec"]
        assert len({repr(kueue_shape(p)) for p in pods}) == 1  # leader and workers: one PodSet
    built_in = engine_pods.group_pods(dep, "decode", 0, thashes(dep)["decode"], gang=False)
    assert not any(k.startswith("kueue.x-k8s.io/") for p in built_in for k in p["metadata"]["labels"])


def test_groups_are_submitted_with_the_roles_alternating() -> None:
    creates = [group_plan.GroupAction(role, i, "h", "Create") for role in api.ROLES for i in range(3)]
    order = [(a.role, a.index) for a in kueue.creation_order(creates)]
    assert order[:3] == [("prefill", 0), ("decode", 0), ("prefill", 1)]


def test_the_pending_reason_is_kueues_own() -> None:
    quota = {"status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending",
         "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu"},
    ]}}  # fmt: skip
    assert kueue.pending_reason(quota) == (
        "Pending: couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu"
    )
    admitted = {"status": {"conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted"}]}}
    assert kueue.pending_reason(admitted) is None
    assert kueue.pending_reason({"status": {}}) is None  # just created: Kueue has said nothing yet


def test_only_groups_kueue_gave_a_reason_for_or_left_without_a_workload_are_reported() -> None:
    dep = deployment()
    refused = {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no quota"}
    quota = {"status": {"conditions": [refused]}}

    class Api:
        def __init__(self, workloads: dict[str, Any]) -> None:
            self.workloads = workloads

        async def get_or_none(self, path: str) -> Any:
            return self.workloads.get(path.rsplit("/", 1)[1])

    def gated(role: str, created: float) -> list[dict[str, Any]]:
        pods = engine_pods.group_pods(dep, role, 0, thashes(dep)[role], gang=False, queue="sbs")
        for p in pods:
            p["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
            p["metadata"]["creationTimestamp"] = timestamps.rfc3339(created)
        return pods

    pods = gated("prefill", NOW - 5) + gated("decode", NOW - 5)
    gids = sorted({p["metadata"]["labels"][labels.GROUP_ID] for p in pods})
    decode_gid = next(g for g in gids if "decode" in g)
    prefill_gid = next(g for g in gids if "prefill" in g)

    def run(workloads: dict[str, Any], now: float) -> list[str]:
        return asyncio.run(kueue.queued(Api(workloads), dep, pods, now))  # type: ignore[arg-type]

    assert run({decode_gid: quota, prefill_gid: {"status": {}}}, NOW) == [
        "decode group 0: Kueue Pending: no quota"
    ]
    assert run({}, NOW) == []  # created 5 s ago: Kueue may not have made the Workloads yet
    late = run({}, NOW - 5 + kueue.NO_WORKLOAD_AFTER_S)
    assert len(late) == 2 and all("no Workload" in m for m in late)


def test_a_group_kueue_has_not_admitted_is_named_in_degraded_and_spends_no_restart() -> None:
    dep = deployment()
    gated = engine_pods.group_pods(dep, "decode", 0, thashes(dep)["decode"], gang=False, queue="sbs")
    gated[0]["metadata"]["annotations"][group_state.COMPLETE] = "true"
    for pod in gated:
        pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
        pod["status"] = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}  # fmt: skip
    pods = [x for x in converged(dep) if x["metadata"]["labels"][labels.ROLE] != "decode"] + gated
    p = group_plan.plan(dep, pods, thashes(dep), NOW + 3600)
    assert not p.delete and not p.create and not p.restarts  # waiting is not failing
    p.queued = ["decode group 0: Kueue Pending: insufficient unused quota for nvidia.com/gpu"]
    st = status_mod.build(dep, p, scheduler=api.SchedulerStatus(ready=1, desired=1), revision="r", now=NOW)
    cond = next(c for c in st.conditions if c.type == "Degraded")
    assert (cond.status, cond.reason) == ("True", "QueuedByKueue") and "quota" in cond.message
