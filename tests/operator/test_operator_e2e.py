"""The operator against the real control plane: 64 kwok H800 nodes, kube-scheduler, garbage collector.

The operator runs as its own process (`sbs-operator run`), exactly as a user would start it.
"""

from __future__ import annotations

import collections
import copy
import time
from collections.abc import Callable

from sbs.e2e.control_plane import ControlPlane, free_port
from sbs.kube import labels
from sbs.kube.blocking import Kube

from tests.operator.live import (
    DEPS,
    Operator,
    delete_and_wait_gone,
    engine_pods,
    get_dep,
    groups_of,
    kubectl,
    reconcile_writes,
    sample,
    wait_phase,
)


def test_sample_becomes_ready_packed_per_topology_domain_and_idempotent(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    op = operator()
    obj = sample()
    t0 = time.monotonic()
    kube.create(DEPS.format(ns=namespace), obj)
    dep = wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    took = time.monotonic() - t0
    print(f"\nsample (4x4 prefill + 2x9 decode on 64 H800 nodes): apply -> Ready in {took:.1f} s")

    # printer columns
    out = kubectl(control_plane, "get", "sbsd", "-n", namespace)
    header, row = out.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PREFILL", "DECODE", "SCHEDULER", "PHASE"]
    assert row.split()[:5] == ["deepseek-v3", "4/4", "2/2", "1/1", "Ready"]
    assert not dep["metadata"].get("finalizers")
    assert not any(k.startswith("kopf.") for k in dep["metadata"].get("annotations", {}))

    # every group inside one topology block, leaders annotated
    nodes = {n["metadata"]["name"]: n for n in kube.get("/api/v1/nodes")["items"]}
    pods = engine_pods(kube, namespace, "deepseek-v3")
    groups = groups_of(pods)
    assert sorted(len(g) for g in groups.values()) == [4, 4, 4, 4, 9, 9]
    for gid, members in groups.items():
        blocks = {
            nodes[p["spec"]["nodeName"]]["metadata"]["labels"]["network.topology.kubernetes.io/block"]
            for p in members
        }
        assert len(blocks) == 1, f"{gid} spans {blocks}"
        leader = next(p for p in members if p["metadata"]["labels"][labels.RANK] == "0")
        assert leader["metadata"]["labels"][labels.LEADER] == "true"
        assert leader["metadata"]["annotations"][labels.DP_SIZE] in ("32", "72")
    assert len({p["spec"]["nodeName"] for p in pods}) == 34  # one engine pod per node

    # converged: a reconcile makes zero writes, and the running operator leaves the object alone
    assert reconcile_writes(control_plane, namespace, "deepseek-v3") == 0
    rv = get_dep(kube, namespace, "deepseek-v3")["metadata"]["resourceVersion"]
    uids = sorted(p["metadata"]["uid"] for p in engine_pods(kube, namespace, "deepseek-v3"))
    time.sleep(6)  # longer than the operator's resync period
    assert get_dep(kube, namespace, "deepseek-v3")["metadata"]["resourceVersion"] == rv
    assert sorted(p["metadata"]["uid"] for p in engine_pods(kube, namespace, "deepseek-v3")) == uids

    # deletion leaves nothing behind
    delete_and_wait_gone(control_plane, kube, namespace, "deepseek-v3")
    sel = f"{labels.DEPLOYMENT}=deepseek-v3"
    for path in ("/api/v1/namespaces/{ns}/services", "/api/v1/namespaces/{ns}/configmaps",
                 "/apis/apps/v1/namespaces/{ns}/deployments", "/api/v1/namespaces/{ns}/serviceaccounts",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"):  # fmt: skip
        control_plane.wait(
            lambda p=path: not kube.get(p.format(ns=namespace), labelSelector=sel)["items"],
            f"{path} empty",
            60,
        )
    assert "Traceback" not in op.log(), op.log()[-3000:]


def test_pod_loss_recreates_exactly_its_group_and_image_change_rolls_group_by_group(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    op = operator()
    kube.create(DEPS.format(ns=namespace), sample())
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")

    # delete one pod of prefill group 2: that group, and only it, is recreated
    before = {
        gid: sorted(p["metadata"]["uid"] for p in ps)
        for gid, ps in groups_of(engine_pods(kube, namespace, "deepseek-v3")).items()
    }
    victim = next(gid for gid in before if "-prefill-2-" in gid)
    pod = next(
        p
        for p in engine_pods(kube, namespace, "deepseek-v3")
        if p["metadata"]["labels"][labels.GROUP_ID] == victim
    )
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
    control_plane.wait(
        lambda: (get_dep(kube, namespace, "deepseek-v3")["status"].get("groupRestarts") or [None])[0],
        "restart recorded",
        30,
    )
    dep = wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    after = {
        gid: sorted(p["metadata"]["uid"] for p in ps)
        for gid, ps in groups_of(engine_pods(kube, namespace, "deepseek-v3")).items()
    }
    changed = sorted(gid for gid in before if after.get(gid) != before[gid])
    assert changed == [victim]
    assert set(after[victim]).isdisjoint(before[victim])  # every pod of the group is new
    restarts = dep["status"]["groupRestarts"]
    assert [(r["role"], r["index"], r["count"]) for r in restarts] == [("prefill", 2, 1)]
    reasons = [e["reason"] for e in kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]]
    assert "GroupRecreated" in reasons

    # image change: groups are replaced one at a time per role (maxSurge 1, maxUnavailable 0)
    old_hashes = {
        p["metadata"]["labels"][labels.TEMPLATE_HASH] for p in engine_pods(kube, namespace, "deepseek-v3")
    }
    kube.patch(
        DEPS.format(ns=namespace) + "/deepseek-v3", {"spec": {"engine": {"image": "lmsysorg/sglang:v0.5.24"}}}
    )
    sequence: list[tuple[float, str, int, int]] = []  # (t, role, old groups, new groups)
    max_extra = collections.Counter()
    t0 = time.monotonic()
    deadline = t0 + 120
    while time.monotonic() < deadline:
        groups = groups_of(engine_pods(kube, namespace, "deepseek-v3"))
        for role, desired in (("prefill", 4), ("decode", 2)):
            mine = [g for g in groups if f"-{role}-" in g]
            new = sum(
                1 for g in mine if groups[g][0]["metadata"]["labels"][labels.TEMPLATE_HASH] not in old_hashes
            )
            state = (round(time.monotonic() - t0, 1), role, len(mine) - new, new)
            if not sequence or [s[1:] for s in sequence if s[1] == role][-1:] != [state[1:]]:
                sequence.append(state)
            max_extra[role] = max(max_extra[role], len(mine) - desired)
        obj = get_dep(kube, namespace, "deepseek-v3")
        st = obj.get("status") or {}
        if (
            st.get("phase") == "Ready"
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and all(
                p["metadata"]["labels"][labels.TEMPLATE_HASH] not in old_hashes
                for p in engine_pods(kube, namespace, "deepseek-v3")
            )
        ):
            break
        time.sleep(0.2)
    print("\nrolling update sequence (t s, role, old groups, new groups):")
    for s in sequence:
        print("  ", s)
    assert get_dep(kube, namespace, "deepseek-v3")["status"]["phase"] == "Ready", sequence
    assert max_extra == {"prefill": 1, "decode": 1}, (max_extra, sequence)
    prefill_new = [s[3] for s in sequence if s[1] == "prefill"]
    assert prefill_new == sorted(prefill_new) and prefill_new[-1] == 4  # monotone, one by one
    delete_and_wait_gone(control_plane, kube, namespace, "deepseek-v3")
    assert "Traceback" not in op.log(), op.log()[-3000:]


def test_more_gpus_than_exist_reports_insufficient_gpus(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    operator()
    obj = sample()
    obj["metadata"]["name"] = "too-big"
    obj["spec"]["decode"]["groups"] = 8  # 16 + 72 nodes > 64
    kube.create(DEPS.format(ns=namespace), obj)
    dep = wait_phase(control_plane, kube, namespace, "too-big", "Degraded", 60)
    degraded = next(c for c in dep["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InsufficientGPUs", degraded
    assert "nvidia.com/gpu" in degraded["message"]
    delete_and_wait_gone(control_plane, kube, namespace, "too-big")


def test_placement_sees_memory_other_pods_hold_and_strands_no_group(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    """GPU-less pods holding most of the memory of block-0 and half of block-1: those nodes have all
    their GPUs free, and best fit by GPUs alone pins the first decode group into block-0, where
    kube-scheduler refuses it (`Insufficient memory`) for good. The sample (34 nodes) still fits in
    the 40 nodes left, and must become Ready with no group re-placed."""
    hogged = [f"h800-{i:03d}" for i in range(24)]  # block-0 (nodes 0-15) and half of block-1
    for name in hogged:
        kube.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"hog-{name}"},
            "spec": {"nodeName": name, "containers": [{"name": "hog", "image": "registry.k8s.io/pause:3.10",
                     "resources": {"requests": {"memory": "1500Gi", "cpu": "1"}}}]},
        })  # fmt: skip
    op = operator()
    kube.create(DEPS.format(ns=namespace), sample())
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready", 60)
    pods = engine_pods(kube, namespace, "deepseek-v3")
    assert len(pods) == 34 and not {p["spec"]["nodeName"] for p in pods} & set(hogged)
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert not [e for e in events if e.get("reason") == "GroupReplaced"], "a group was stranded"
    assert "Traceback" not in op.log(), op.log()[-3000:]
    delete_and_wait_gone(control_plane, kube, namespace, "deepseek-v3")


def test_twenty_deployments_reconcile_concurrently(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    op = operator("--workers", "8")
    base = sample()
    base["spec"]["prefill"].update(groups=1, nodesPerGroup=1, chunkedPrefillSize=8192)
    base["spec"]["decode"].update(groups=1, nodesPerGroup=2)
    t0 = time.monotonic()
    for i in range(20):
        obj = copy.deepcopy(base)
        obj["metadata"]["name"] = f"m{i:02d}"
        kube.create(DEPS.format(ns=namespace), obj)  # 3 nodes each: 60 of 64

    def all_ready() -> bool:
        items = kube.get(DEPS.format(ns=namespace))["items"]
        return len(items) == 20 and all((i.get("status") or {}).get("phase") == "Ready" for i in items)

    control_plane.wait(all_ready, "20 deployments Ready", 120)
    took = time.monotonic() - t0
    rss = op.rss_mib()
    print(f"\n20 SBSDeployments (60 engine pods) Ready in {took:.1f} s; operator RSS {rss:.0f} MiB")
    assert rss < 256, f"operator RSS {rss:.0f} MiB: half its 512 Mi limit (manifests/operator)"
    log = op.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    for i in range(20):
        kube.delete(DEPS.format(ns=namespace) + f"/m{i:02d}")
    control_plane.wait(
        lambda: (
            not kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{labels.COMPONENT}=engine")[
                "items"
            ]
        ),
        "engine pods gone",
        90,
    )


def test_only_the_lease_holder_reconciles_and_a_standby_takes_over(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    import json
    import socket
    import urllib.request

    port = free_port()
    first = operator("--liveness", f"http://127.0.0.1:{port}/healthz")
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sbs-operator"
    identity = f"{socket.gethostname()}-{first.proc.pid}"
    control_plane.wait(
        lambda: kube.exists(lease_path) and kube.get(lease_path)["spec"]["holderIdentity"] == identity,
        "the first operator holds the lease",
        30,
    )
    second = operator()
    obj = sample()
    obj["spec"]["prefill"].update(groups=1, nodesPerGroup=1, chunkedPrefillSize=8192)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=1)
    kube.create(DEPS.format(ns=namespace), obj)
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["reconciler"]["leader"] is True
    assert "reconciled" not in second.log()  # the standby watched, but wrote nothing

    first.stop()  # SIGTERM: the lease is released, the standby takes over at its next renewal
    kube.patch(
        DEPS.format(ns=namespace) + "/deepseek-v3", {"spec": {"engine": {"image": "lmsysorg/sglang:v0.5.24"}}}
    )
    dep = wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready", 60)
    assert dep["status"]["observedGeneration"] == 2
    assert kube.get(lease_path)["spec"]["holderIdentity"] == f"{socket.gethostname()}-{second.proc.pid}"
    assert "reconciled" in second.log()
    delete_and_wait_gone(control_plane, kube, namespace, "deepseek-v3")


PODGROUP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}  # fmt: skip
"""A stand-in for scheduler-plugins' PodGroup CRD (only its API identity matters to the operator)."""


def test_gang_scheduling_creates_a_podgroup_per_group_when_the_crd_exists(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    kube.create(crds, PODGROUP_CRD)
    try:
        control_plane.wait(
            lambda: kube.exists("/apis/scheduling.x-k8s.io/v1alpha1"), "PodGroup API served", 30
        )
        operator()
        obj = sample()
        obj["spec"]["prefill"].update(groups=2, nodesPerGroup=2, chunkedPrefillSize=16384)
        obj["spec"]["decode"].update(groups=1, nodesPerGroup=3)
        kube.create(DEPS.format(ns=namespace), obj)  # gangScheduling.mode defaults to Auto
        path = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{namespace}/podgroups"
        control_plane.wait(lambda: len(kube.get(path)["items"]) == 3, "3 PodGroups", 30)
        groups = {g["metadata"]["name"]: g for g in kube.get(path)["items"]}
        assert sorted(g["spec"]["minMember"] for g in groups.values()) == [2, 2, 3]
        control_plane.wait(lambda: len(engine_pods(kube, namespace, "deepseek-v3")) == 7, "7 engine pods", 30)
        pods = engine_pods(kube, namespace, "deepseek-v3")
        for p in pods:
            assert p["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
            assert p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] in groups
        kube.delete(DEPS.format(ns=namespace) + "/deepseek-v3")
        control_plane.wait(lambda: not kube.get(path)["items"], "PodGroups garbage-collected", 60)
        control_plane.wait(
            lambda: not engine_pods(kube, namespace, "deepseek-v3"), "pods garbage-collected", 60
        )
    finally:
        kube.delete(f"{crds}/podgroups.scheduling.x-k8s.io", missing_ok=True)
        control_plane.wait(
            lambda: not kube.exists("/apis/scheduling.x-k8s.io/v1alpha1"), "PodGroup API gone", 60
        )
