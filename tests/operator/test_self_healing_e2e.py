"""Engine groups heal themselves on the real control plane: a hung group, a group on a node that went
NotReady (its pods stuck Terminating, as behind a partition), and a reconcile interrupted by an API
error in the middle of creating a group.

A kwok node is made NotReady and kept so by taking it away from kwok: it is deleted and created again
without kwok's `kwok.x-k8s.io/node` annotation (kwok ignores annotation changes on a node it already
manages, and its node stage would turn a patched Ready=False back to True), then its Ready condition
is set False. Nothing plays its pods any more, so a pod deleted there stays Terminating, exactly as
when the kubelet is unreachable. The node is given back to kwok afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.probes import now_rfc3339
from sbs.kube import credentials, labels
from sbs.kube.blocking import Kube
from sbs.kube.client import ApiError, KubeClient
from sbs.operator import group_state, reconciler

from tests.operator.live import DEPS, Operator, delete_and_wait_gone, engine_pods, get_dep, sample, wait_phase

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def small(name: str = "heal", **restart: int) -> dict[str, Any]:
    """A 1x2 prefill + 1x1 decode deployment that replaces NotReady groups after 5 s."""
    obj = sample()
    obj["metadata"]["name"] = name
    obj["spec"]["prefill"].update(groups=1, nodesPerGroup=2, chunkedPrefillSize=16384)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=1)
    obj["spec"]["restartPolicy"] = {"backoffSeconds": 0, "notReadySeconds": 5, **restart}
    return obj


def started(plane: ControlPlane, kube: Kube, ns: str, operator: Callable[..., Operator]) -> Operator:
    """The operator, and `small()` Ready under it."""
    op = operator()
    kube.create(DEPS.format(ns=ns), small())
    wait_phase(plane, kube, ns, "heal", "Ready")
    return op


def recreated_once(plane: ControlPlane, kube: Kube, ns: str, role: str, why: str) -> list[dict[str, Any]]:
    """Once Ready again: `role`'s group was recreated once, for `why`; the namespace's Events."""
    dep = wait_phase(plane, kube, ns, "heal", "Ready", 60)
    assert [(r["role"], r["count"]) for r in dep["status"]["groupRestarts"]] == [(role, 1)]
    events = kube.get(f"/api/v1/namespaces/{ns}/events")["items"]
    assert any(why in e["message"] for e in events if e["reason"] == "GroupRecreated"), events
    return events


def group_pods(kube: Kube, ns: str, name: str, role: str) -> list[dict[str, Any]]:
    return [p for p in engine_pods(kube, ns, name) if p["metadata"]["labels"][labels.ROLE] == role]


@contextlib.contextmanager
def partitioned(plane: ControlPlane, kube: Kube, node_name: str) -> Iterator[None]:
    """`node_name` NotReady (and nothing acting on its pods) inside the block; given back after."""
    path = f"/api/v1/nodes/{node_name}"
    node = kube.get(path)
    keep = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {k: node["metadata"][k] for k in ("name", "labels", "annotations")},
        "spec": {k: v for k, v in node["spec"].items() if k != "taints"},
        # no addresses: kwok writes them (and Ready) only where a node has none
        "status": {k: node["status"][k] for k in ("capacity", "allocatable")},
    }
    orphan = {**keep, "metadata": {**keep["metadata"], "annotations": {
        k: v for k, v in keep["metadata"]["annotations"].items() if k != KWOK_ANNOTATION
    }}}  # fmt: skip

    def replace(obj: dict[str, Any]) -> None:
        kube.delete(path)
        plane.wait(lambda: not kube.exists(path), f"node {node_name} deleted", 30)
        kube.create("/api/v1/nodes", obj)

    replace(orphan)
    condition = {"type": "Ready", "status": "False", "reason": "KubeletDown", "message": "partitioned",
                 "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}  # fmt: skip
    kube.patch(path + "/status", {"status": {"conditions": [condition]}}, kind="strategic")
    try:
        yield
    finally:
        replace(keep)

        def ready() -> bool:
            st = kube.get(path)
            conds = {c["type"]: c["status"] for c in st["status"].get("conditions") or []}
            addressed = bool(st["status"].get("addresses"))
            return conds.get("Ready") == "True" and not st["spec"].get("taints") and addressed

        plane.wait(ready, f"node {node_name} back with kwok", 60)


def test_a_group_on_a_node_gone_not_ready_is_recreated_on_ready_nodes(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    op = started(control_plane, kube, namespace, operator)
    before = group_pods(kube, namespace, "heal", "prefill")
    lost = next(p for p in before if p["metadata"]["labels"][labels.RANK] == "1")["spec"]["nodeName"]
    with partitioned(control_plane, kube, lost):
        t0 = time.monotonic()

        def recreated() -> bool:
            pods = group_pods(kube, namespace, "heal", "prefill")
            fresh = {p["metadata"]["uid"] for p in pods}.isdisjoint(p["metadata"]["uid"] for p in before)
            return (
                len(pods) == 2 and fresh and all(p["spec"].get("nodeName") not in (None, lost) for p in pods)
            )

        control_plane.wait(recreated, "the prefill group recreated off the NotReady node", 90)
        events = recreated_once(control_plane, kube, namespace, "prefill", f"node {lost} NotReady for")
        took = time.monotonic() - t0
        print(f"\nnode {lost} NotReady -> group recreated on Ready nodes and Ready in {took:.1f} s")
        forced = [e["message"] for e in events if e["reason"] == "PodForceDeleted"]
        assert forced and lost in forced[0], [e["message"] for e in events]
    delete_and_wait_gone(control_plane, kube, namespace, "heal")
    assert "Traceback" not in op.log(), op.log()[-3000:]


def test_a_hung_group_running_but_not_ready_is_recreated(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    op = started(control_plane, kube, namespace, operator)
    before = group_pods(kube, namespace, "heal", "decode")
    leader = before[0]
    status = {
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now_rfc3339()}],
        "containerStatuses": [
            {
                "name": "sglang",
                "image": leader["spec"]["containers"][0]["image"],
                "ready": False,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now_rfc3339()}},
            }
        ],
    }  # fmt: skip  (the readiness probe of a hung engine fails; its process runs on)
    pod_path = f"/api/v1/namespaces/{namespace}/pods/{leader['metadata']['name']}/status"
    kube.patch(pod_path, {"status": status}, kind="strategic")
    uid = leader["metadata"]["uid"]
    control_plane.wait(
        lambda: (
            all(p["metadata"]["uid"] != uid for p in group_pods(kube, namespace, "heal", "decode"))
            and len(group_pods(kube, namespace, "heal", "decode")) == 1
        ),
        "the hung decode group replaced",
        60,
    )
    recreated_once(control_plane, kube, namespace, "decode", "Running but not Ready")
    delete_and_wait_gone(control_plane, kube, namespace, "heal")
    assert "Traceback" not in op.log(), op.log()[-3000:]


class FailingCreate(KubeClient):
    """Answers the `nth` pod creation with a 429, as a busy API server does."""

    def __init__(self, creds: credentials.Credentials, nth: int) -> None:
        super().__init__(creds)
        self.nth, self.pod_creates = nth, 0

    async def create(self, path: str, obj: dict[str, Any], **params: Any) -> Any:
        if obj.get("kind") == "Pod":
            self.pod_creates += 1
            if self.pod_creates == self.nth:
                raise ApiError("POST", path, 429, "TooManyRequests", "injected")
        return await super().create(path, obj, **params)


def test_a_reconcile_interrupted_mid_group_completes_the_group_without_a_restart(
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    obj = small("cut")
    obj["spec"]["prefill"].update(nodesPerGroup=4, chunkedPrefillSize=8192)
    kube.create(DEPS.format(ns=namespace), obj)

    async def reconcile(nth: int | None) -> reconciler.Result | None:
        creds = await credentials.from_kubeconfig(control_plane.kubeconfig)
        client = FailingCreate(creds, nth) if nth else KubeClient(creds)
        async with client:
            now = time.time()  # noqa: TID251 (the test is the IO edge)
            return await reconciler.reconcile(client, namespace, "cut", now, gang_available=False)

    def interrupted() -> bool:
        """A reconcile that fails on its 3rd pod: the 4-node prefill group (placed first) gets 2."""
        try:
            asyncio.run(reconcile(3))
        except ApiError as exc:
            if exc.message == "injected":
                return True
            assert not engine_pods(kube, namespace, "cut"), exc  # a fresh API server's 429: again
            return False
        raise AssertionError("the injected 429 was not raised")

    control_plane.wait(interrupted, "a reconcile interrupted by the injected 429", 60)
    first = group_pods(kube, namespace, "cut", "prefill")
    assert sorted(p["metadata"]["labels"][labels.RANK] for p in first) == ["0", "1"]
    assert group_state.COMPLETE not in (first[0]["metadata"].get("annotations") or {})

    def settled() -> bool:
        asyncio.run(reconcile(None))
        st = get_dep(kube, namespace, "cut").get("status") or {}
        return st.get("phase") == "Ready"

    control_plane.wait(settled, "cut Ready", 60)
    pods = group_pods(kube, namespace, "cut", "prefill")
    assert len(pods) == 4
    assert {p["metadata"]["uid"] for p in first} <= {p["metadata"]["uid"] for p in pods}  # kept, completed
    leader = next(p for p in pods if p["metadata"]["labels"][labels.RANK] == "0")
    assert leader["metadata"]["annotations"][group_state.COMPLETE] == "true"
    domains = {p["metadata"]["annotations"]["sbs.dev/topology-domain"] for p in pods}
    assert len(domains) == 1  # the missing pods joined the group's own domain
    assert not get_dep(kube, namespace, "cut")["status"]["groupRestarts"]  # no restart spent
    delete_and_wait_gone(control_plane, kube, namespace, "cut")
