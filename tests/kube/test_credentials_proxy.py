"""Proxies against the real API server: a kubeconfig's `proxy-url` and `HTTPS_PROXY` are honoured."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.client import KubeClient

from tests.kube import support

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without proxy settings (the test sets its own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def target(control_plane: ControlPlane) -> str:
    """The API server as a CONNECT target (`host:port`)."""
    return urlsplit(control_plane.server).netloc


async def test_kubeconfig_proxy_url(
    control_plane: ControlPlane, no_proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Requests go through the cluster's `proxy-url`, even to a loopback server."""
    config = json.loads(control_plane.kubeconfig.read_text())
    async with support.connect_proxy() as proxy:
        config["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps(config))
        creds = await credentials.from_kubeconfig(path)
        assert creds.login_fields()["proxy_url"] == proxy.url
        async with KubeClient(creds) as client:
            assert await support.whoami(client) == "admin"
            await client.get("/version")
    assert proxy.connects == [target(control_plane)]


async def test_https_proxy_environment(control_plane: ControlPlane, no_proxy_env: pytest.MonkeyPatch) -> None:
    """`HTTPS_PROXY` is honoured (loopback included, as no `NO_PROXY` exempts it); `NO_PROXY` exempts."""
    async with support.connect_proxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        creds = await credentials.from_kubeconfig(control_plane.kubeconfig)
        async with KubeClient(creds) as client:
            assert await support.whoami(client) == "admin"
        assert proxy.connects == [target(control_plane)]

        no_proxy_env.setenv("NO_PROXY", urlsplit(control_plane.server).hostname or "")
        async with KubeClient(await credentials.from_kubeconfig(control_plane.kubeconfig)) as client:
            assert await support.whoami(client) == "admin"
        assert proxy.connects == [target(control_plane)]
