"""In-cluster credentials against the real API server: the ServiceAccount token file is read again
when it changes, so a rotated token is used without a restart."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.blocking import Kube
from sbs.kube.client import KubeClient

from tests.kube import support


def service_account_dir(
    control_plane: ControlPlane, tmp_path: Path, token: str
) -> tuple[Path, dict[str, str]]:
    """A pod's view: the SA directory (`ca.crt`, `token`) and the `KUBERNETES_SERVICE_*` environment."""
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes(control_plane.pki.ca_crt.read_bytes())
    (sa_dir / "token").write_text(token)
    url = urlsplit(control_plane.server)
    return sa_dir, {"KUBERNETES_SERVICE_HOST": str(url.hostname), "KUBERNETES_SERVICE_PORT": str(url.port)}


def accounts(kube: Kube, namespace: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """ServiceAccounts `first` and `second`, each with a token bound to a Secret of its own:
    (user, token, Secret path) for each."""
    out = []
    for name in ("first", "second"):
        user = support.service_account(kube, namespace, name)
        anchor = support.secret(kube, namespace, f"{name}-anchor")
        token = support.mint_token(kube, namespace, name, bound_to=anchor)
        out.append((user, token, f"/api/v1/namespaces/{namespace}/secrets/{name}-anchor"))
    return out[0], out[1]


async def test_token_file_replaced_by_rename(
    control_plane: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """As the kubelet rotates it (a new file renamed over the old), with the old token revoked: the
    same client goes on, as the new token's account."""
    (user_a, token_a, secret_a), (user_b, token_b, _) = accounts(kube, namespace)
    sa_dir, environ = service_account_dir(control_plane, tmp_path, token_a)
    creds = credentials.in_cluster(sa_dir, environ)
    assert creds.server == control_plane.server
    async with KubeClient(creds) as client:
        assert await support.whoami(client) == user_a
        fresh = sa_dir / ".token.new"
        fresh.write_text(token_b)
        os.replace(fresh, sa_dir / "token")
        kube.delete(secret_a)  # revokes token A (the API server may accept it from its cache for 10 s)
        assert await support.whoami(client) == user_b
        assert creds.login_fields()["token"] == token_b


async def test_token_file_rewritten_in_place(
    control_plane: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """A token file overwritten in place while its old token is still valid: the new one is used."""
    (user_a, token_a, _), (user_b, token_b, _) = accounts(kube, namespace)
    sa_dir, environ = service_account_dir(control_plane, tmp_path, token_a)
    async with KubeClient(credentials.in_cluster(sa_dir, environ)) as client:
        assert await support.whoami(client) == user_a
        assert await support.whoami(client) == user_a
        with (sa_dir / "token").open("r+") as f:
            f.truncate()
            f.write(token_b)
        assert await support.whoami(client) == user_b
