"""Kubeconfigs that act as a ServiceAccount: a TokenRequest token against the harness's API server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from sbs.kube.blocking import Kube

if TYPE_CHECKING:
    from sbs.e2e.control_plane import ControlPlane


def service_account_kubeconfig(
    plane: ControlPlane, k: Kube, path: Path, *, namespace: str, name: str, expiration_s: int = 3600
) -> Path:
    """A kubeconfig (mode 0600) holding a TokenRequest token of `namespace/name`, nothing else."""
    review = k.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_s},
        },
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": plane.server,
                                                 "certificate-authority": str(plane.pki.ca_crt)}}],
        "users": [{"name": name, "user": {"token": review["status"]["token"]}}],
        "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
        "current-context": name,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
