"""Pod Security admission on the real API server (enforce mode) for the pods the operator creates.

- Engine pods need `privileged` (IPC_LOCK added); `baseline` refuses them naming the capability.
- With `ipcLock: false` they pass `baseline`; `restricted` refuses them (they run as root).
- `hostNetwork: true` needs `privileged` (baseline: "host namespaces").
- The scheduler's pods pass `restricted`, the strictest level.
The operator's own pod passing `restricted` is test_install_e2e.py (manifests/default in sbs-system).

Stricter levels are checked with a server-side dry-run create of the very pods the operator created:
admission runs, nothing is stored.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import labels
from sbs.kube.blocking import ApiError, Kube
from sbs.operator import child_names, engine_pods

from tests.operator import live
from tests.operator.test_builders import make_deployment

NAME = "deepseek-v3"
LEVEL = "pod-security.kubernetes.io/enforce"


def enforce(kube: Kube, namespace: str, level: str) -> None:
    labels_ = {LEVEL: level, f"{LEVEL}-version": "latest"}
    kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": labels_}})


def level_namespace(kube: Kube, control_plane: ControlPlane, level: str, suffix: str) -> str:
    name = f"pss-{level}-{suffix}"[:63]
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    enforce(kube, name, level)
    control_plane.wait(lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"), name)
    return name


@pytest.fixture
def other_level(kube: Kube, control_plane: ControlPlane, namespace: str):
    """A namespace enforcing a given level (deleted afterwards)."""
    made: list[str] = []

    def make(level: str) -> str:
        made.append(level_namespace(kube, control_plane, level, namespace[-6:]))
        return made[-1]

    yield make
    for name in made:
        kube.delete(f"/api/v1/namespaces/{name}", missing_ok=True)


def as_new_pod(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The operator's pod as a fresh object for `namespace` (no server fields, no owner, no node)."""
    out = {"apiVersion": "v1", "kind": "Pod", "spec": copy.deepcopy(pod["spec"])}
    out["metadata"] = {
        "name": pod["metadata"]["name"],
        "namespace": namespace,
        "labels": pod["metadata"]["labels"],
    }
    out["spec"].pop("nodeName", None)
    return out


def refusal(kube: Kube, pod: dict[str, Any], namespace: str) -> str:
    """The API server's message refusing `pod` in `namespace` (dry-run), or "" when admitted."""
    try:
        kube.create(f"/api/v1/namespaces/{namespace}/pods", as_new_pod(pod, namespace), dryRun="All")
    except ApiError as exc:
        assert exc.status == 403, exc.message
        return exc.message
    return ""


def run_sample(
    operator: Callable[..., live.Operator],
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    **spec: Any,
) -> list[dict[str, Any]]:
    """The sample (with `spec` merged) brought to Ready by the operator; its engine pods."""
    op = operator()
    obj = live.sample()
    for key, value in spec.items():
        obj["spec"][key] = {**obj["spec"].get(key, {}), **value}
    kube.create(live.DEPS.format(ns=namespace), obj)
    try:
        live.wait_phase(control_plane, kube, namespace, NAME, "Ready", 90)
    except Exception:
        print(op.log()[-3000:], json.dumps(live.get_dep(kube, namespace, NAME).get("status")))
        raise
    assert "Traceback" not in op.log(), op.log()[-4000:]
    return live.engine_pods(kube, namespace, NAME)


def test_engine_pods_need_privileged_and_baseline_names_ipc_lock(
    control_plane, kube, namespace, operator, other_level
):
    enforce(kube, namespace, "privileged")
    pods = run_sample(operator, control_plane, kube, namespace)
    assert len(pods) == 34
    policies = kube.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies")["items"]
    assert sorted(p["metadata"]["name"] for p in policies) == [f"{NAME}-engines", f"{NAME}-scheduler"]
    for pod in pods:
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not any(v.get("projected") for v in pod["spec"]["volumes"])  # no token volume was injected
    baseline = other_level("baseline")
    for pod in (pods[0], pods[-1]):
        message = refusal(kube, pod, baseline)
        assert 'violates PodSecurity "baseline:latest"' in message, message
        assert 'non-default capabilities (container "sglang" must not include "IPC_LOCK"' in message, message


def test_without_ipc_lock_engine_pods_pass_baseline_and_restricted_names_root(
    control_plane, kube, namespace, operator, other_level
):
    enforce(kube, namespace, "baseline")
    pods = run_sample(operator, control_plane, kube, namespace, engine={"ipcLock": False})
    restricted = other_level("restricted")
    message = refusal(kube, pods[0], restricted)
    assert 'violates PodSecurity "restricted:latest"' in message, message
    assert "runAsNonRoot != true" in message, message
    for violation in ("allowPrivilegeEscalation", "unrestricted capabilities", "seccompProfile"):
        assert violation not in message, message  # root is the only thing restricted objects to


def test_host_network_engine_pods_need_privileged(kube, namespace, other_level):
    dep = make_deployment(engine={"hostNetwork": True, "ipcLock": False})
    thash = engine_pods.template_hash(dep.spec, "decode", False)
    pod = engine_pods.group_pods(dep, "decode", 0, thash, gang=False)[0]
    message = refusal(kube, pod, other_level("baseline"))
    assert "host namespaces (hostNetwork=true)" in message, message
    assert refusal(kube, pod, other_level("privileged")) == ""


def test_scheduler_pods_pass_restricted(control_plane, kube, namespace, operator):
    enforce(kube, namespace, "restricted")
    op = operator()
    obj = live.sample(prefill={"groups": 0, "nodesPerGroup": 1}, decode={"groups": 0, "nodesPerGroup": 1})
    kube.create(live.DEPS.format(ns=namespace), obj)
    selector = labels.selector_string(labels.scheduler_selector(NAME))

    def scheduler_pods() -> list[dict[str, Any]] | None:
        return kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"] or None

    try:
        (pod,) = control_plane.wait(scheduler_pods, "the scheduler's pod admitted", 60)
    except Exception:
        rs = kube.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
        print(op.log()[-3000:], [r.get("status") for r in rs])
        raise
    assert pod["metadata"]["name"].startswith(child_names.scheduler_name(NAME))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
