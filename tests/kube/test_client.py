"""`KubeClient` against the real API server: forks share the connections and count their own writes."""

from __future__ import annotations

import json
from pathlib import Path

from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.client import KubeClient

from tests.kube import support


def configmap(namespace: str, name: str, **data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


async def test_forks_count_their_own_writes(control_plane: ControlPlane, namespace: str) -> None:
    """Each fork counts its writes per verb; reads count nothing; the parent's count is its own."""
    async with KubeClient(await credentials.from_kubeconfig(control_plane.kubeconfig)) as root:
        first, second = root.fork(), root.fork()
        cms = f"/api/v1/namespaces/{namespace}/configmaps"
        await first.create(cms, configmap(namespace, "a"))
        await first.apply(configmap(namespace, "a", k="1"))
        await first.apply(configmap(namespace, "a", k="1"))  # a no-op apply still is a request
        await second.patch(f"{cms}/a", {"data": {"k": "2"}})
        assert (await second.get(f"{cms}/a"))["data"] == {"k": "2"}
        assert await second.get_or_none(f"{cms}/missing") is None
        await second.delete(f"{cms}/a")
        await root.list(cms)
        assert first.writes == {"POST": 1, "PATCH": 2}
        assert second.writes == {"PATCH": 1, "DELETE": 1}
        assert root.writes == {}


async def test_forks_share_connections(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Forks reuse the parent's connection (one CONNECT through a proxy for all of them); closing a
    fork leaves it open; a fork's headers are its own."""
    config = json.loads(control_plane.kubeconfig.read_text())
    async with support.connect_proxy() as proxy:
        config["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        (tmp_path / "kubeconfig").write_text(json.dumps(config))
        async with KubeClient(await credentials.from_kubeconfig(tmp_path / "kubeconfig")) as root:
            first = root.fork()
            second = root.fork(headers={"Impersonate-User": "someone"})
            assert await support.whoami(root) == "admin"
            assert await support.whoami(first) == "admin"
            await first.close()
            assert await support.whoami(second) == "someone"
            assert await support.whoami(root) == "admin"
            assert len(proxy.connects) == 1
        async with KubeClient(root.credentials) as other:  # a client of its own opens its own
            assert await support.whoami(other) == "admin"
        assert len(proxy.connects) == 2
