"""Kueue on the e2e control plane (e2e/kueue.py): gang admission of raw pod groups with topology-aware
placement, quota, and deleted pods under kwok's stand-in kubelet; plus the pure manifest helpers."""

from __future__ import annotations

import pytest
import yaml
from sbs.e2e import kueue, nodes
from sbs.e2e.control_plane import ControlPlane
from sbs.kube.blocking import Kube

ENGINE_REQUESTS = {"cpu": "64", "memory": "1024Gi", nodes.GPU_RESOURCE: "8", "rdma/ib": "8"}
WORKLOADS = kueue.WORKLOADS


def pod_group(name: str, count: int, namespace: str) -> list[dict]:
    """`count` engine-sized pods that Kueue admits together, all inside one network block."""
    limits = {k: v for k, v in ENGINE_REQUESTS.items() if k not in ("cpu", "memory")}
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{i}",
                "namespace": namespace,
                "labels": {kueue.QUEUE_NAME_LABEL: kueue.LOCAL_QUEUE, kueue.POD_GROUP_NAME_LABEL: name},
                "annotations": {
                    kueue.POD_GROUP_TOTAL_COUNT_ANNOTATION: str(count),
                    kueue.REQUIRED_TOPOLOGY_ANNOTATION: nodes.BLOCK_LABEL,
                    kueue.POD_GROUP_SERVING_ANNOTATION: "true",
                },
            },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "engine",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": dict(ENGINE_REQUESTS), "limits": limits},
                    }
                ],
            },
        }
        for i in range(count)
    ]


def create(kube: Kube, pods: list[dict]) -> None:
    for pod in pods:
        kube.create(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods", pod)


def group_pods(kube: Kube, namespace: str, group: str) -> list[dict]:
    selector = f"{kueue.POD_GROUP_NAME_LABEL}={group}"
    return kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]


def running(kube: Kube, namespace: str, group: str, count: int) -> list[dict]:
    pods = group_pods(kube, namespace, group)
    ok = len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)
    return pods if ok else []


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def blocks(kube: Kube, pods: list[dict]) -> set[str]:
    labels = [kube.get(f"/api/v1/nodes/{p['spec']['nodeName']}")["metadata"]["labels"] for p in pods]
    return {node[nodes.BLOCK_LABEL] for node in labels}


def test_pod_groups_are_admitted_whole_inside_one_block(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str
):
    ns = kueue_namespace
    create(kube, pod_group("g1", 4, ns) + pod_group("g2", 4, ns))
    for group in ("g1", "g2"):
        pods = control_plane.wait(lambda g=group: running(kube, ns, g, 4), f"group {group} Running", 60)
        assert len({p["spec"]["nodeName"] for p in pods}) == 4
        assert len(blocks(kube, pods)) == 1, [p["spec"]["nodeName"] for p in pods]
        assert all(p["metadata"]["labels"].get("kueue.x-k8s.io/managed") == "true" for p in pods)
        workload = kube.get(WORKLOADS.format(ns=ns) + f"/{group}")
        assert condition(workload, "Admitted").get("status") == "True"
        assert workload["status"]["admission"]["clusterQueue"] == ns  # the fixture names it so


def test_a_group_over_quota_is_gated_until_quota_frees(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str
):
    ns = kueue_namespace
    kueue.install_queues(kube, ns, name=ns, gpus=32)
    create(kube, pod_group("first", 4, ns))
    control_plane.wait(lambda: running(kube, ns, "first", 4), "group first Running", 60)
    create(kube, pod_group("second", 2, ns))

    def pending() -> str:
        reserved = condition(kube.get(WORKLOADS.format(ns=ns) + "/second"), "QuotaReserved")
        return reserved.get("message", "") if reserved.get("status") == "False" else ""

    message = control_plane.wait(pending, "Workload second pending on quota", 30)
    assert nodes.GPU_RESOURCE in message, message
    pods = group_pods(kube, ns, "second")
    assert all(p["spec"].get("schedulingGates") and not p["spec"].get("nodeName") for p in pods)

    kube.delete(WORKLOADS.format(ns=ns) + "/first")
    control_plane.wait(lambda: running(kube, ns, "second", 2), "group second Running after the delete", 60)
    control_plane.wait(lambda: not group_pods(kube, ns, "first"), "group first's pods gone", 30)


def test_a_deleted_pod_of_a_group_does_not_stay_terminating(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str
):
    ns = kueue_namespace
    pods, workload = f"/api/v1/namespaces/{ns}/pods", WORKLOADS.format(ns=ns) + "/g"
    create(kube, pod_group("g", 2, ns))
    control_plane.wait(lambda: running(kube, ns, "g", 2), "group g Running", 60)
    kube.delete(f"{pods}/g-0")
    # kwok's stand-in kubelet stops it; Kueue keeps it (and the group's quota) for a replacement.
    control_plane.wait(lambda: kube.get(f"{pods}/g-0")["status"].get("phase") == "Failed", "g-0 Failed", 15)
    control_plane.wait(
        lambda: condition(kube.get(workload), "WaitingForReplacementPods").get("status") == "True",
        "the Workload waiting for a replacement pod",
        15,
    )
    replacement = pod_group("g", 2, ns)[1]
    replacement["metadata"]["name"] = "g-2"
    create(kube, [replacement])  # it joins the group's admission, and g-0's finalizer goes
    control_plane.wait(lambda: not kube.exists(f"{pods}/g-0"), "the deleted pod gone", 30)
    control_plane.wait(lambda: running(kube, ns, "g", 2), "group g Running again", 30)


def test_kwok_fails_a_deleted_pod_its_finalizer_holds(
    control_plane: ControlPlane, kube: Kube, namespace: str
):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    spec = {"nodeName": nodes.node_name(0), "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}  # fmt: skip
    kube.create(pods, {"metadata": {"name": "held", "finalizers": ["sbs.dev/test"]}, "spec": spec})
    kube.create(pods, {"metadata": {"name": "free"}, "spec": spec})

    def phase(name: str) -> str:
        return kube.get(f"{pods}/{name}")["status"].get("phase", "")

    for name in ("held", "free"):
        control_plane.wait(lambda n=name: phase(n) == "Running", f"{name} Running")
        kube.delete(f"{pods}/{name}")
    control_plane.wait(lambda: not kube.exists(f"{pods}/free"), "the pod without finalizers gone")
    control_plane.wait(lambda: phase("held") == "Failed", "the held pod Failed")
    held = kube.get(f"{pods}/held")
    assert condition(held, "Ready")["status"] == "False"
    kube.patch(f"{pods}/held", {"metadata": {"finalizers": None}})
    control_plane.wait(lambda: not kube.exists(f"{pods}/held"), "the held pod gone once its finalizer is")


URL = "https://127.0.0.1:9"
MANIFESTS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- {name: mpod.kb.io, clientConfig: {service: {name: s, namespace: system, path: /mutate--v1-pod}}}
- {name: mjob.kb.io, clientConfig: {service: {name: s, namespace: system, path: /mutate-batch-v1-job}}}
- name: mworkload.kb.io
  clientConfig: {service: {name: s, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-workload}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- {name: vpod.kb.io, clientConfig: {service: {name: s, namespace: system, path: /validate--v1-pod}}}
"""


def test_webhooks_are_url_based_and_only_for_pods_and_kueue_objects():
    mutating, validating = kueue.webhook_configurations(MANIFESTS, url=URL, ca_bundle="Q0E=")
    assert [h["name"] for h in mutating["webhooks"]] == ["mpod.kb.io", "mworkload.kb.io"]
    assert mutating["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    pod = mutating["webhooks"][0]
    assert pod["clientConfig"] == {"url": URL + "/mutate--v1-pod", "caBundle": "Q0E="}
    assert pod["namespaceSelector"] == {"matchLabels": {kueue.MANAGED_NAMESPACE_LABEL: "true"}}
    assert "namespaceSelector" not in mutating["webhooks"][1]
    assert validating["webhooks"][0]["namespaceSelector"] == pod["namespaceSelector"]


def test_conversion_webhooks_follow_kueues_kustomization():
    kustomization = (
        "patches:\n- path: patches/webhook_in_workloads.yaml\n#- path: patches/webhook_in_x.yaml\n"
    )
    assert kueue.conversion_patches(kustomization) == ["patches/webhook_in_workloads.yaml"]
    crds = [{"metadata": {"name": n}, "spec": {"group": "g"}} for n in ("workloads.k", "topologies.k")]
    converted, plain = kueue.with_conversion(crds, ["workloads.k"], url=URL, ca_bundle="Q0E=")
    assert converted["spec"]["conversion"]["webhook"]["clientConfig"]["url"] == URL + "/convert"
    assert "conversion" not in plain["spec"] and "conversion" not in crds[0]["spec"]


def test_kueue_runs_unmodified_under_an_etc_overlay(tmp_path):
    upper, work = tmp_path / "u", tmp_path / "w"
    argv = kueue.overlay_argv(["/bin/kueue", "--config=c"], upper=upper, work=work, root=False)
    assert argv[:3] == ["unshare", "--user", "--map-root-user"]
    assert argv[-1].endswith("&& exec /bin/kueue --config=c")
    assert f"upperdir={upper},workdir={work} /etc" in argv[-1]
    with pytest.raises(kueue.KueueError, match="commas"):
        kueue.overlay_argv(["k"], upper=tmp_path / "a,b", work=tmp_path / "w", root=True)


def test_queues_cover_what_engine_pods_request():
    objs = kueue.queue_objects("ns", name="cq", gpus=16, topology_levels=kueue.TOPOLOGY_LEVELS)
    assert [o["kind"] for o in objs] == ["Topology", "ResourceFlavor", "ClusterQueue", "LocalQueue"]
    (group,) = objs[2]["spec"]["resourceGroups"]
    assert set(ENGINE_REQUESTS) <= set(group["coveredResources"])
    quota = {r["name"]: r["nominalQuota"] for r in group["flavors"][0]["resources"]}
    assert quota[nodes.GPU_RESOURCE] == "16"
    assert objs[0]["spec"]["levels"][-1] == {"nodeLabel": "kubernetes.io/hostname"}
    assert yaml.safe_load(nodes.POD_STOP_STAGE)["spec"]["weight"] == 1
