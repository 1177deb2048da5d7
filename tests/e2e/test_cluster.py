"""The control plane itself, against real kube-apiserver, controllers, scheduler and kwok."""

import ipaddress
import time

import pytest
from sbs.e2e import crds, nodes
from sbs.kube.blocking import ApiError

pytestmark = pytest.mark.e2e

CRD_GROUP = "e2e.sbs.dev"


def make_crd() -> dict:
    """A namespaced CRD with a status subresource, like the operator's."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 0}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def make_pod(name: str, gpus: int, **labels: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "engine",
                    "image": "sglang:fake",
                    "resources": {"limits": {nodes.GPU_RESOURCE: str(gpus)}},
                }
            ],
            "nodeSelector": {nodes.GPU_PRODUCT_LABEL: "NVIDIA-H800"},
        },
    }


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), None)


def test_all_fake_gpu_nodes_are_ready_with_h800_labels(control_plane, kube):
    items = kube.get("/api/v1/nodes")["items"]
    assert len(items) == control_plane.settings.node_count
    assert control_plane.ready_nodes() == control_plane.settings.node_count
    node = items[0]
    assert node["metadata"]["labels"][nodes.GPU_PRODUCT_LABEL] == "NVIDIA-H800"
    assert node["status"]["allocatable"][nodes.GPU_RESOURCE] == "8"
    for each in items:  # every node, also those a test took away and gave back
        assert {"type": "InternalIP", "address": "127.0.0.1"} in each["status"].get("addresses", []), each


def test_rbac_is_enforced_for_users_without_roles(kube, namespace):
    nobody = kube.impersonate("system:serviceaccount:default:nobody")
    with pytest.raises(ApiError, match="forbidden") as err:
        nobody.get(f"/api/v1/namespaces/{namespace}/pods")
    assert err.value.status == 403


def test_crd_install_and_custom_resource_status_patch(control_plane, kube, namespace):
    names = crds.install_crds(kube, [make_crd()], timeout_s=30, check=control_plane.check)
    assert names == [f"widgets.{CRD_GROUP}"]
    collection = f"/apis/{CRD_GROUP}/v1/namespaces/{namespace}/widgets"
    control_plane.wait(lambda: kube.get(collection) is not None, "the widgets API to be served")
    kube.create(collection, {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Widget",
                             "metadata": {"name": "w"}, "spec": {"replicas": 2}})  # fmt: skip

    patched = kube.patch(f"{collection}/w/status", {"status": {"readyReplicas": 2}})
    assert patched["status"] == {"readyReplicas": 2}
    # The status subresource ignores spec changes, and the main resource ignores status changes.
    kube.patch(f"{collection}/w/status", {"spec": {"replicas": 9}})
    kube.patch(f"{collection}/w", {"status": {"readyReplicas": 0}})
    w = kube.get(f"{collection}/w")
    assert (w["spec"]["replicas"], w["status"]["readyReplicas"]) == (2, 2)
    with pytest.raises(ApiError, match="replicas") as err:  # the schema is enforced
        kube.patch(f"{collection}/w", {"spec": {"replicas": -1}})
    assert err.value.status == 422


def test_gpu_pod_is_placed_on_an_h800_node_by_kube_scheduler(control_plane, kube, namespace):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(pods, make_pod("decode-0", gpus=8))
    pod = control_plane.wait(
        lambda: (p := kube.get(f"{pods}/decode-0"))["status"].get("phase") == "Running" and p,
        "decode-0 Running",
    )
    scheduled = condition(pod, "PodScheduled")
    assert scheduled and scheduled["status"] == "True"
    node = kube.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")
    assert node["metadata"]["labels"][nodes.GPU_PRODUCT_LABEL] == "NVIDIA-H800"
    assert condition(pod, "Ready")["status"] == "True"
    ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert ip.is_loopback
    assert ip in ipaddress.ip_network(node["spec"]["podCIDR"])


def test_pod_requesting_16_gpus_stays_pending_as_insufficient(control_plane, kube, namespace):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(pods, make_pod("too-big", gpus=16))

    def unschedulable():
        pod = kube.get(f"{pods}/too-big")
        cond = condition(pod, "PodScheduled")
        return cond and cond["status"] == "False" and cond["reason"] == "Unschedulable" and (pod, cond)

    _, cond = control_plane.wait(unschedulable, "too-big to be found Unschedulable")
    assert f"Insufficient {nodes.GPU_RESOURCE}" in cond["message"]
    assert f"0/{control_plane.settings.node_count} nodes are available" in cond["message"]
    time.sleep(1.0)
    assert kube.get(f"{pods}/too-big")["status"]["phase"] == "Pending"


def test_statefulset_rolls_out(control_plane, kube, namespace):
    template = make_pod("ignored", gpus=8, app="prefill")
    template["metadata"] = {"labels": {"app": "prefill"}}
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "prefill"},
        "spec": {
            "replicas": 3,
            "serviceName": "prefill",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "prefill"}},
            "template": template,
        },
    }
    path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets"
    kube.create(path, sts)

    def rolled_out():
        s = kube.get(f"{path}/prefill")
        st = s.get("status", {})
        return st.get("observedGeneration") == s["metadata"]["generation"] and st.get("readyReplicas") == 3

    control_plane.wait(rolled_out, "StatefulSet prefill 3/3 ready")
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=prefill")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["prefill-0", "prefill-1", "prefill-2"]
    # 8 GPUs each: one pod per node.
    assert len({p["spec"]["nodeName"] for p in pods}) == 3

    # A template change rolls through every pod (RollingUpdate replaces them one by one).
    kube.patch(f"{path}/prefill", {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}})
    control_plane.wait(
        lambda: (
            rolled_out()
            and (st := kube.get(f"{path}/prefill")["status"]).get("updatedReplicas") == 3
            and st.get("currentRevision") == st.get("updateRevision")
        ),
        "StatefulSet prefill to roll out revision 2",
    )
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=prefill")["items"]
    assert all(p["metadata"]["annotations"].get("rev") == "2" for p in pods)


def test_namespace_deletion_completes(control_plane, kube):
    name = "e2e-doomed"
    ns = f"/api/v1/namespaces/{name}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    control_plane.wait(lambda: kube.exists(f"{ns}/serviceaccounts/default"), "default ServiceAccount")
    kube.create(f"{ns}/pods", make_pod("p", gpus=1))
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    kube.create(f"{ns}/configmaps", configmap)
    kube.delete(ns)
    # The namespace controller (kube-controller-manager) empties it; kwok lets the pod go.
    control_plane.wait(lambda: not kube.exists(ns), f"namespace {name} to be gone", 60)
