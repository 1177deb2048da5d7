"""Kubernetes engine discovery: leader pods as engine records, and the list + watch source on the
real API server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.blocking import Kube
from sbs.kube.client import KubeClient
from sbs.scheduler.core.types import Role
from sbs.scheduler.service.discovery import EngineRecord, EngineRecordError
from sbs.scheduler.service.kube_discovery import KubernetesSource, diff, engine_from_pod


def rec(key: str, **kw: object) -> EngineRecord:
    return EngineRecord(key=key, role=Role.PREFILL, url=f"http://{key}", **kw)  # type: ignore[arg-type]


def make_pod(
    *,
    role: str = "prefill",
    ready: bool = True,
    leader: str = "true",
    deployment: str = "ds3",
    ip: str | None = "10.0.0.7",
    annotations: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """A leader engine pod of SBSDeployment `ds3`, as the API server returns it."""
    meta: dict[str, Any] = {
        "name": f"ds3-{role}-1-0",
        "namespace": "llm",
        "labels": {
            "sbs.dev/deployment": deployment,
            "sbs.dev/component": "engine",
            "sbs.dev/leader": leader,
            "sbs.dev/role": role,
            "sbs.dev/group": "1",
            "sbs.dev/revision": "abc123",
        },
        "annotations": {"sbs.dev/bootstrap-port": "8998", "sbs.dev/dp-size": "32", **(annotations or {})},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": meta,
        "spec": {
            "containers": [{"name": "engine", "ports": ports or [{"name": "http", "containerPort": 30000}]}]
        },
        "status": status,
    }


def test_ready_leader_pod_becomes_an_engine_record() -> None:
    rec = engine_from_pod(make_pod(), deployment="ds3")
    assert rec == EngineRecord(
        key="llm/ds3-prefill-1-0",
        role=Role.PREFILL,
        url="http://10.0.0.7:30000",
        revision="abc123",
        group="1",
        bootstrap_host="10.0.0.7",
        bootstrap_port=8998,
        dp_size=32,
        draining=False,
    )


@pytest.mark.parametrize(
    "pod",
    [
        make_pod(ready=False),
        make_pod(leader="false"),
        make_pod(deployment="other"),
        make_pod(ip=None),
    ],
    ids=["not_ready", "worker_pod", "other_deployment", "no_ip_yet"],
)
def test_pods_that_are_not_targets_give_none(pod: dict[str, Any]) -> None:
    assert engine_from_pod(pod, deployment="ds3") is None


def test_draining_annotation_and_deletion_mark_the_engine_draining() -> None:
    assert engine_from_pod(make_pod(annotations={"sbs.dev/draining": "true"}), deployment="ds3").draining
    assert engine_from_pod(make_pod(deleting=True), deployment="ds3").draining
    assert not engine_from_pod(make_pod(annotations={"sbs.dev/draining": "false"}), deployment="ds3").draining


def test_missing_annotations_leave_the_shape_to_server_info() -> None:
    pod = make_pod(role="decode")
    pod["metadata"]["annotations"] = {}
    rec = engine_from_pod(pod, deployment="ds3")
    assert rec is not None and rec.role is Role.DECODE
    assert rec.dp_size is None and rec.bootstrap_port is None


def test_http_port_comes_from_the_named_container_port_and_ipv6_is_bracketed() -> None:
    rec = engine_from_pod(
        make_pod(ip="fd00::7", ports=[{"name": "http", "containerPort": 8080}]), deployment="ds3"
    )
    assert rec.url == "http://[fd00::7]:8080"
    assert rec.bootstrap_host == "fd00::7"
    unnamed = engine_from_pod(make_pod(ports=[{"containerPort": 1}]), deployment="ds3", default_port=31000)
    assert unnamed.url.endswith(":31000")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "router"}, "label 'sbs.dev/role' must be one of prefill, decode; got 'router'"),
        (
            {"annotations": {"sbs.dev/dp-size": "eight"}},
            "annotation 'sbs.dev/dp-size' must be a positive integer",
        ),
        (
            {"annotations": {"sbs.dev/bootstrap-port": "70000"}},
            "annotation 'sbs.dev/bootstrap-port' must be 1..65535",
        ),
    ],
    ids=["bad_role", "bad_dp_size", "bad_port"],
)
def test_malformed_leader_pods_are_errors_naming_pod_and_field(change: dict[str, Any], message: str) -> None:
    pod = make_pod(**change)
    with pytest.raises(EngineRecordError, match="pod llm/ds3-") as err:
        engine_from_pod(pod, deployment="ds3")
    assert message in str(err.value)


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
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(pods, leader_pod("p0", "prefill"))
    kube.create(pods, leader_pod("d0-worker", "decode", leader=False))
    kube.create(pods, leader_pod("other", "decode", dep="another"))

    async def run() -> list[tuple[str, str, bool]]:
        seen: list[tuple[str, str, bool]] = []
        async with KubeClient(await credentials.from_kubeconfig(control_plane.kubeconfig)) as client:
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
