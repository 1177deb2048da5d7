"""Kubernetes engine discovery against the real API server: leader pods in, engine changes out."""

from __future__ import annotations

import asyncio
import time

from sbs.e2e import cluster, kube
from sbs.operator.kubeclient import KubeClient, load_kubeconfig
from sbs.scheduler.core.types import Role
from sbs.scheduler.service.engines import EngineRecord
from sbs.scheduler.service.k8s_source import KubernetesSource, diff


def rec(key: str, **kw: object) -> EngineRecord:
    return EngineRecord(key=key, role=Role.PREFILL, url=f"http://{key}", **kw)  # type: ignore[arg-type]


def test_diff_adds_updates_and_removes() -> None:
    known = {"a": rec("a"), "b": rec("b")}
    current = {"b": rec("b", draining=True), "c": rec("c")}
    changes = sorted((c.kind.value, c.engine.key) for c in diff(known, current))
    assert changes == [("add", "c"), ("remove", "a"), ("update", "b")]
    assert diff(current, current) == []


def leader_pod(name: str, role: str, *, leader: bool = True, dep: str = "ds") -> dict:
    notes = {"sbs.dev/dp-size": "8", **({"sbs.dev/bootstrap-port": "8998"} if role == "prefill" else {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "sbs.dev/deployment": dep, "sbs.dev/component": "engine", "sbs.dev/role": role,
                "sbs.dev/leader": "true" if leader else "false", "sbs.dev/group": "0",
                "sbs.dev/revision": "r1",
            },
            "annotations": notes,
        },
        "spec": {
            "containers": [{"name": "e", "image": "x", "ports": [{"name": "http", "containerPort": 30000}]}],
        },
    }  # fmt: skip


def test_watches_ready_leaders_draining_and_removal(
    control_plane: cluster.ControlPlane, kube: kube.Kube, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(pods, leader_pod("p0", "prefill"))
    kube.create(pods, leader_pod("d0-worker", "decode", leader=False))
    kube.create(pods, leader_pod("other", "decode", dep="another"))

    async def run() -> list[tuple[str, str, bool]]:
        seen: list[tuple[str, str, bool]] = []
        async with KubeClient(load_kubeconfig(control_plane.kubeconfig)) as client:
            source = KubernetesSource(client, namespace, "ds")
            stream = source.changes()

            async def next_change() -> tuple[str, str, bool]:
                c = await asyncio.wait_for(anext(stream), 30)
                return c.kind.value, c.engine.key.split("/")[1], c.engine.draining

            seen.append(await next_change())  # p0 once Ready (kwok runs it)
            await asyncio.to_thread(kube.create, pods, leader_pod("d0", "decode"))
            seen.append(await next_change())
            await asyncio.to_thread(
                kube.patch, f"{pods}/p0", {"metadata": {"annotations": {"sbs.dev/draining": "true"}}}
            )
            seen.append(await next_change())
            await asyncio.to_thread(kube.delete, f"{pods}/p0")
            while (change := await next_change())[0] != "remove":
                seen.append(change)  # deletionTimestamp first (still draining), then gone
            seen.append(change)
            await stream.aclose()
        return seen

    t0 = time.monotonic()
    seen = asyncio.run(run())
    assert seen[0] == ("add", "p0", False)
    assert seen[1] == ("add", "d0", False)
    assert seen[2] == ("update", "p0", True)
    assert seen[-1] == ("remove", "p0", True)
    assert time.monotonic() - t0 < 30
    assert not any(key in ("d0-worker", "other") for _, key, _ in seen)
