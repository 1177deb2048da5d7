"""Kueue as the operator's placement, on the real control plane with Kueue v0.17 running against it
(64 kwok H800 nodes in 4 blocks of 16): whole groups in one block, quota queueing, a competing
workload that shrinks what is admitted without ever leaving half a group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sbs.e2e import kueue as kueue_harness
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import labels
from sbs.kube.blocking import Kube
from sbs.operator import kueue, placement

from tests.operator.live import DEPS, Operator, delete_and_wait_gone, engine_pods, get_dep, sample, wait_phase

pytestmark = pytest.mark.e2e
BLOCK = "network.topology.kubernetes.io/block"


def blocks_of(kube: Kube, pods: list[dict[str, Any]]) -> dict[str, set[str | None]]:
    """Per group id, the blocks its bound pods are on (None for a pod not bound)."""
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in kube.get("/api/v1/nodes")["items"]}
    out: dict[str, set[str | None]] = {}
    for p in pods:
        node = p["spec"].get("nodeName")
        out.setdefault(p["metadata"]["labels"][labels.GROUP_ID], set()).add(
            nodes[node][BLOCK] if node else None
        )
    return out


def whole_or_nothing(kube: Kube, pods: list[dict[str, Any]]) -> tuple[int, int]:
    """(groups bound whole in one block, groups with no pod bound); fails on anything else."""
    whole = waiting = 0
    for gid, blocks in blocks_of(kube, pods).items():
        if blocks == {None}:
            waiting += 1
        else:
            assert len(blocks) == 1 and None not in blocks, f"{gid} is half-placed or spans blocks: {blocks}"
            whole += 1
    return whole, waiting


def settled(plane: ControlPlane, kube: Kube, ns: str, name: str, quiet_s: float = 3.0) -> tuple[int, int]:
    """`whole_or_nothing` once admission has settled: every group of `name` bound whole or not at all,
    unchanged for `quiet_s` (a group Kueue just admitted binds pod by pod for a moment); a group left
    half-placed times out."""
    seen: list[tuple[float, tuple[int, int]]] = []

    def stable() -> tuple[int, int] | None:
        pods = engine_pods(kube, ns, name)  # one listing: a group may start binding between two
        if not all(b == {None} or None not in b for b in blocks_of(kube, pods).values()):
            return None
        now = (time.monotonic(), whole_or_nothing(kube, pods))
        if not seen or seen[-1][1] != now[1]:
            seen.append(now)
        return now[1] if now[0] - seen[-1][0] >= quiet_s else None

    return plane.wait(stable, f"{name}'s groups bound whole or not at all, {quiet_s:g} s unchanged", 60)


def degraded(kube: Kube, ns: str, name: str, says: str) -> dict[str, Any] | None:
    """The deployment's Degraded condition, once it is True and its message contains `says`."""
    st = get_dep(kube, ns, name).get("status") or {}
    found = [c for c in st.get("conditions") or [] if c["type"] == "Degraded" and c["status"] == "True"]
    return found[0] if found and says in found[0]["message"] else None


def test_kueue_admits_each_group_whole_inside_one_block(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str, operator: Callable[..., Operator]
) -> None:
    ns = kueue_namespace
    op = operator()
    t0 = time.monotonic()
    kube.create(DEPS.format(ns=ns), sample())
    wait_phase(control_plane, kube, ns, "deepseek-v3", "Ready", 90)
    print(f"\nsample under Kueue: apply -> Ready in {time.monotonic() - t0:.1f} s")
    pods = engine_pods(kube, ns, "deepseek-v3")
    assert len(pods) == 34
    assert whole_or_nothing(kube, pods) == (6, 0)
    for p in pods:  # Kueue placed them: the operator pinned nothing
        assert p["metadata"]["labels"][kueue.QUEUE_LABEL] == kueue_harness.LOCAL_QUEUE
        assert placement.DOMAIN_ANNOTATION not in (p["metadata"].get("annotations") or {})
        assert not p["spec"].get("schedulingGates")
    gids = {p["metadata"]["labels"][labels.GROUP_ID] for p in pods}
    for gid in gids:
        wl = kube.get(kueue.workload_path(ns, gid))
        assert kueue.pending_reason(wl) is None, wl.get("status")
    assert "Traceback" not in op.log(), op.log()[-3000:]
    delete_and_wait_gone(control_plane, kube, ns, "deepseek-v3")
    control_plane.wait(  # the groups' Workloads go with them: their quota is given back
        lambda: not any(kube.exists(kueue.workload_path(ns, g)) for g in gids), "Workloads deleted", 60
    )


def test_a_deployment_over_quota_waits_with_kueues_reason_and_is_admitted_when_quota_frees(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str, operator: Callable[..., Operator]
) -> None:
    ns = kueue_namespace
    kueue_harness.install_queues(kube, ns, name=ns, gpus=320)  # the sample takes 272
    operator()
    kube.create(DEPS.format(ns=ns), sample())
    wait_phase(control_plane, kube, ns, "deepseek-v3", "Ready", 90)
    second = sample()
    second["metadata"]["name"] = "second"
    kube.create(DEPS.format(ns=ns), second)
    cond = control_plane.wait(lambda: degraded(kube, ns, "second", "quota"), "second queued for quota", 60)
    print(f"\nsecond deployment: {cond['reason']}: {cond['message'][:300]}")
    assert "Kueue" in cond["message"] and "nvidia.com/gpu" in cond["message"], cond
    whole, waiting = settled(control_plane, kube, ns, "second")
    assert waiting >= 1 and whole * 32 <= 48, (whole, waiting)  # 48 GPUs left: at most one prefill group
    delete_and_wait_gone(control_plane, kube, ns, "deepseek-v3")
    t0 = time.monotonic()
    wait_phase(control_plane, kube, ns, "second", "Ready", 90)
    print(f"admitted and Ready {time.monotonic() - t0:.1f} s after the first was deleted")
    assert whole_or_nothing(kube, engine_pods(kube, ns, "second")) == (6, 0)


def test_a_competing_workload_shrinks_what_is_admitted_but_never_half_places_a_group(
    control_plane: ControlPlane, kube: Kube, kueue_namespace: str, operator: Callable[..., Operator]
) -> None:
    """The competing workload is a Deployment of 3 x 8 GPUs outside Kueue (kwok completes a Job's pods
    at once, so a Job would not hold its GPUs here); kube-scheduler places it alone."""
    ns = kueue_namespace
    other = f"{ns}-other"[:63]
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        _compete(control_plane, kube, ns, other, operator)
    finally:
        kube.delete(f"/api/v1/namespaces/{other}", missing_ok=True)
        kube.delete(f"/api/v1/namespaces/{other}/pods", gracePeriodSeconds=0)


def _compete(
    control_plane: ControlPlane, kube: Kube, ns: str, other: str, operator: Callable[..., Operator]
) -> None:
    competing = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "training"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "training"}}, "template": {
            "metadata": {"labels": {"app": "training"}},
            "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H800"}, "containers": [{
                "name": "t", "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": {"nvidia.com/gpu": "8"}},
            }]},
        }},
    }  # fmt: skip
    kube.create(f"/apis/apps/v1/namespaces/{other}/deployments", competing)
    control_plane.wait(
        lambda: sum(
            bool(p["spec"].get("nodeName"))
            for p in kube.get(f"/api/v1/namespaces/{other}/pods", labelSelector="app=training")["items"]
        ) == 3,
        "24 competing GPUs bound", 60,
    )  # fmt: skip
    operator()
    big = sample()
    big["metadata"]["name"] = "big"
    big["spec"]["prefill"]["groups"] = 7  # 7 x 4 + 4 x 9 = 64 nodes; 61 are free
    big["spec"]["decode"]["groups"] = 4
    kube.create(DEPS.format(ns=ns), big)
    cond = control_plane.wait(lambda: degraded(kube, ns, "big", "Kueue Pending"), "big queued by Kueue", 60)
    print(f"\nbig beside 24 competing GPUs: {cond['message'][:300]}")
    assert "Kueue" in cond["message"]
    whole, waiting = settled(control_plane, kube, ns, "big")
    print(f"groups admitted whole: {whole}, waiting with nothing bound: {waiting}")
    assert whole >= 1 and waiting >= 1
