"""`sbs.kube.credentials` without a cluster: what kopf gets, the errors, and which source `load` picks."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import stat
from pathlib import Path
from typing import Any

import kopf
import pytest
from sbs.kube import credentials
from sbs.kube.credentials import CredentialsError

from tests.kube import support

SERVER = "https://k8s.example:6443"


def kubeconfig(path: Path, user: dict[str, Any], **cluster: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": SERVER, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(json.dumps(config))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def service_account_dir(tmp_path: Path, token: str = "sa-token") -> Path:
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_text("cluster CA\n")
    (sa_dir / "token").write_text(token)
    return sa_dir


IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


async def test_login_fields_for_a_token_and_a_proxy(tmp_path: Path) -> None:
    """kopf gets the server, the CA as a file, the bearer token, the proxy, and `trust_env`."""
    path = kubeconfig(
        tmp_path / "config",
        {"token": "t0ken"},
        **{"certificate-authority-data": b64(b"CA PEM"), "proxy-url": "http://proxy.example:3128"},
    )
    fields = (await credentials.from_kubeconfig(path)).login_fields()
    ca_path = fields.pop("ca_path")
    assert Path(ca_path).read_bytes() == b"CA PEM"
    assert fields == {
        "server": SERVER,
        "insecure": False,
        "certificate_path": None,
        "private_key_path": None,
        "scheme": "Bearer",
        "token": "t0ken",
        "proxy_url": "http://proxy.example:3128",
        "trust_env": True,
        "expiration": None,
    }
    kopf.ConnectionInfo(**fields, ca_path=ca_path)


async def test_login_fields_for_a_client_certificate(tmp_path: Path) -> None:
    """Inlined certificate and key become private files; no token, so no scheme."""
    user = {"client-certificate-data": b64(b"CERT PEM"), "client-key-data": b64(b"KEY PEM")}
    path = kubeconfig(tmp_path / "config", user, **{"insecure-skip-tls-verify": True})
    fields = (await credentials.from_kubeconfig(path)).login_fields()
    assert fields["insecure"] is True
    assert (fields["token"], fields["scheme"], fields["ca_path"]) == (None, None, None)
    key = Path(fields["private_key_path"])
    assert (Path(fields["certificate_path"]).read_bytes(), key.read_bytes()) == (b"CERT PEM", b"KEY PEM")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    kopf.ConnectionInfo(**fields)


async def test_login_fields_for_an_exec_plugin(tmp_path: Path) -> None:
    """The plugin's token and its expiry (so kopf logs in again by then); the plugin runs once."""
    expiry = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": "from-plugin", "expirationTimestamp": support.rfc3339(expiry)})
    creds = await credentials.from_kubeconfig(kubeconfig(tmp_path / "config", plugin.user))
    fields = creds.login_fields()
    assert (fields["scheme"], fields["token"], fields["expiration"]) == ("Bearer", "from-plugin", expiry)
    assert creds.refreshable
    await creds.refresh()
    assert plugin.runs == 1
    kopf.ConnectionInfo(**fields)


def test_login_fields_in_cluster(tmp_path: Path) -> None:
    """The ServiceAccount's token, without the file's trailing newline, and its CA file."""
    sa_dir = service_account_dir(tmp_path, "sa-token\n")
    fields = credentials.in_cluster(sa_dir, IN_CLUSTER_ENV).login_fields()
    assert fields["server"] == "https://10.96.0.1:443"
    assert (fields["token"], fields["ca_path"]) == ("sa-token", str(sa_dir / "ca.crt"))
    kopf.ConnectionInfo(**fields)


async def test_refresh_rereads_the_token_file(tmp_path: Path) -> None:
    sa_dir = service_account_dir(tmp_path, "first")
    creds = credentials.in_cluster(sa_dir, IN_CLUSTER_ENV)
    (sa_dir / "token").write_text("second, longer")
    await creds.refresh()
    assert creds.login_fields()["token"] == "second, longer"


async def test_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=f"^{re.escape(str(tmp_path))}/nope: no such kubeconfig file"):
        await credentials.from_kubeconfig(tmp_path / "nope")
    with pytest.raises(CredentialsError, match="/a:/b: no such kubeconfig"):
        await credentials.from_kubeconfig(environ={"KUBECONFIG": "/a:/b"})


async def test_unknown_context_is_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"token": "t"})
    with pytest.raises(
        CredentialsError, match=f"^{re.escape(str(path))}: cannot use context 'other': .*other"
    ):
        await credentials.from_kubeconfig(path, context="other")


@pytest.mark.parametrize("text", ["clusters: [unclosed\n", "", "- a list\n", "just text\n"])
async def test_malformed_kubeconfig_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=f"^{re.escape(str(path))}: cannot use the current context"):
        await credentials.from_kubeconfig(path)


async def test_failing_exec_plugin_is_named(tmp_path: Path) -> None:
    """The kubeconfig and the plugin's message, when it fails at load or when renewing (a 401)."""
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"fail": "please log in again"})
    path = kubeconfig(tmp_path / "config", plugin.user)
    with pytest.raises(CredentialsError, match=f"^{re.escape(str(path))}: .*please log in again"):
        await credentials.from_kubeconfig(path)

    plugin.respond({"token": "t"}, {"fail": "please log in again"})
    (plugin.dir / "runs").unlink()
    creds = await credentials.from_kubeconfig(path)
    with pytest.raises(
        CredentialsError, match=f"^{re.escape(str(path))}: the exec plugin failed: .*please log in again"
    ):
        await creds.refresh(force=True)
    assert plugin.runs == 2


async def test_failing_renewal_keeps_an_unexpired_token(tmp_path: Path) -> None:
    """A plugin failing shortly before the expiry: the token still valid is used, the next request
    runs the plugin again; once expired, the failure is raised."""
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=credentials.EXEC_REFRESH_MARGIN_S / 2)
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond(
        {"token": "old", "expirationTimestamp": support.rfc3339(expiry)},
        {"fail": "identity provider down"},
        {"token": "new"},
    )
    creds = await credentials.from_kubeconfig(kubeconfig(tmp_path / "config", plugin.user))
    await creds.refresh()
    assert plugin.runs == 2
    assert creds.login_fields()["token"] == "old"
    assert creds.login_fields()["expiration"] == expiry.replace(microsecond=0)
    await creds.refresh()
    assert plugin.runs == 3
    assert (creds.login_fields()["token"], creds.login_fields()["expiration"]) == ("new", None)


async def test_failing_renewal_of_an_expired_token_raises(tmp_path: Path) -> None:
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    plugin = support.ExecPlugin(tmp_path / "plugin")
    plugin.respond({"token": "old", "expirationTimestamp": support.rfc3339(expired)}, {"fail": "down"})
    path = kubeconfig(tmp_path / "config", plugin.user)
    creds = await credentials.from_kubeconfig(path)
    with pytest.raises(CredentialsError, match=f"^{re.escape(str(path))}: the exec plugin failed: .*down"):
        await creds.refresh()


async def test_load_picks_in_cluster_in_a_pod(tmp_path: Path) -> None:
    """In-cluster when `KUBERNETES_SERVICE_HOST` is set and the ServiceAccount directory exists;
    else the kubeconfig; an explicit kubeconfig always wins."""
    sa_dir = service_account_dir(tmp_path)
    path = kubeconfig(tmp_path / "config", {"token": "t"})
    env = {**IN_CLUSTER_ENV, "KUBECONFIG": str(path)}

    async def source(kubeconfig: Path | None, sa: Path, environ: dict[str, str]) -> str:
        return (await credentials.load(kubeconfig, service_account_dir=sa, environ=environ)).source

    assert await source(None, sa_dir, env) == "in-cluster"
    assert await source(path, sa_dir, env) == str(path)
    assert await source(None, tmp_path / "absent", env) == str(path)
    assert await source(None, sa_dir, {"KUBECONFIG": str(path)}) == str(path)


async def test_in_cluster_errors_name_the_directory(tmp_path: Path) -> None:
    sa_dir = service_account_dir(tmp_path)
    (sa_dir / "token").unlink()
    with pytest.raises(CredentialsError, match=re.escape(f"in-cluster config ({sa_dir}): ") + ".*token"):
        await credentials.load(service_account_dir=sa_dir, environ=IN_CLUSTER_ENV)
