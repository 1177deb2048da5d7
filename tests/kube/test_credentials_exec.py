"""Exec credential plugins against the real API server: a ServiceAccount token printed by a plugin
authenticates, is renewed before the expiry the plugin reported, and after a 401."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.blocking import Kube
from sbs.kube.client import ApiError, KubeClient

from tests.kube import support


def exec_kubeconfig(control_plane: ControlPlane, plugin: support.ExecPlugin, tmp_path: Path) -> Path:
    return support.write_kubeconfig(
        tmp_path / "kubeconfig",
        server=control_plane.server,
        ca_file=control_plane.pki.ca_crt,
        user=plugin.user,
    )


@pytest.fixture
def reader(kube: Kube, namespace: str) -> tuple[str, str]:
    """ServiceAccount `reader` (may list pods in the test namespace): its user name and a token."""
    user = support.service_account(kube, namespace, "reader", list_pods=True)
    return user, support.mint_token(kube, namespace, "reader")


async def test_plugin_token_authenticates(
    control_plane: ControlPlane, namespace: str, reader: tuple[str, str], tmp_path: Path
) -> None:
    """The plugin runs once at load; its token is the client's identity, with that account's RBAC."""
    user, token = reader
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": token})
    creds = await credentials.from_kubeconfig(exec_kubeconfig(control_plane, plugin, tmp_path))
    assert plugin.runs == 1
    async with KubeClient(creds) as client:
        assert await client.list(f"/api/v1/namespaces/{namespace}/pods") == []
        assert await support.whoami(client) == user
        with pytest.raises(ApiError) as denied:
            await client.list("/api/v1/namespaces/kube-system/pods")
        assert denied.value.status == 403
    assert plugin.runs == 1  # a token without an expiry is kept until a 401


async def test_plugin_reruns_when_the_token_is_about_to_expire(
    control_plane: ControlPlane, namespace: str, reader: tuple[str, str], tmp_path: Path
) -> None:
    """A token expiring within `EXEC_REFRESH_MARGIN_S` is renewed by the next request; one that
    expires later is kept."""
    user, token = reader
    now = dt.datetime.now(dt.UTC)
    soon, later = now + dt.timedelta(seconds=5), now + dt.timedelta(hours=1)
    assert (soon - now).total_seconds() < credentials.EXEC_REFRESH_MARGIN_S
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond(
        {"token": token, "expirationTimestamp": support.rfc3339(soon)},
        {"token": token, "expirationTimestamp": support.rfc3339(later)},
    )
    creds = await credentials.from_kubeconfig(exec_kubeconfig(control_plane, plugin, tmp_path))
    assert plugin.runs == 1
    assert creds.login_fields()["expiration"] == soon.replace(microsecond=0)
    async with KubeClient(creds) as client:
        assert await support.whoami(client) == user
        assert plugin.runs == 2
        assert await support.whoami(client) == user
        await client.list(f"/api/v1/namespaces/{namespace}/pods")
    assert plugin.runs == 2
    assert creds.login_fields()["expiration"] == later.replace(microsecond=0)


async def test_401_reruns_the_plugin_and_retries_once(
    control_plane: ControlPlane, reader: tuple[str, str], tmp_path: Path
) -> None:
    """A refused token makes the client run the plugin again and repeat the request, once; the
    write is counted once."""
    user, token = reader
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": "not-a-valid-token"}, {"token": token})
    creds = await credentials.from_kubeconfig(exec_kubeconfig(control_plane, plugin, tmp_path))
    async with KubeClient(creds) as client:
        assert await support.whoami(client) == user
        assert plugin.runs == 2
        assert client.writes == {"POST": 1}


async def test_401_is_retried_only_once(control_plane: ControlPlane, tmp_path: Path) -> None:
    """When the renewed token is refused as well, the 401 reaches the caller."""
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": "not-a-valid-token"})
    creds = await credentials.from_kubeconfig(exec_kubeconfig(control_plane, plugin, tmp_path))
    async with KubeClient(creds) as client:
        with pytest.raises(ApiError) as refused:
            await support.whoami(client)
    assert refused.value.status == 401
    assert plugin.runs == 2


async def test_plugin_may_answer_with_a_client_certificate(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """An ExecCredential with `clientCertificateData`/`clientKeyData` instead of a token works too."""
    pki = control_plane.pki
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond(
        {"clientCertificateData": pki.admin_crt.read_text(), "clientKeyData": pki.admin_key.read_text()}
    )
    creds = await credentials.from_kubeconfig(exec_kubeconfig(control_plane, plugin, tmp_path))
    async with KubeClient(creds) as client:
        assert await support.whoami(client) == "admin"
    assert plugin.runs == 1
