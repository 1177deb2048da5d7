"""`sbs.kube.blocking.Kube` against the real API server with an exec credential plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube.blocking import ApiError, Kube

from tests.kube import support


def test_kubeconfig_with_exec_plugin(
    control_plane: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """`Kube.from_kubeconfig` runs the plugin and acts with the token it printed (and its RBAC)."""
    user = support.service_account(kube, namespace, "reader", list_pods=True)
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": support.mint_token(kube, namespace, "reader")})
    path = support.write_kubeconfig(
        tmp_path / "kubeconfig",
        server=control_plane.server,
        ca_file=control_plane.pki.ca_crt,
        user=plugin.user,
    )
    client = Kube.from_kubeconfig(path)
    assert client.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
    assert support.blocking_whoami(client) == user
    with pytest.raises(ApiError) as denied:
        client.get("/api/v1/namespaces/kube-system/pods")
    assert denied.value.status == 403
    assert plugin.runs == 1
