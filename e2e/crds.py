"""Installing CustomResourceDefinitions on a control plane and waiting until they are Established."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from sbs.e2e.waits import wait_until
from sbs.kube.blocking import Kube

CRD_COLLECTION = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd_documents(paths: Iterable[Path]) -> list[dict]:
    """The CustomResourceDefinitions in these YAML files (directories: their *.yaml, sorted)."""
    files: list[Path] = []
    for path in paths:
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    docs = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


def install_crds(
    client: Kube, crds: Sequence[dict], *, timeout_s: float = 30.0, check: Any = None
) -> list[str]:
    """Server-side apply each CRD and wait until every one is Established; returns the names."""
    names = [client.apply(CRD_COLLECTION, crd)["metadata"]["name"] for crd in crds]

    def established(name: str) -> bool:
        conds = client.get(f"{CRD_COLLECTION}/{name}").get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    for name in names:
        wait_until(lambda n=name: established(n), timeout_s, f"CRD {name} Established", check=check)
    return names
