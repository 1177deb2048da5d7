"""The kustomize trees, built with the real kubectl (kustomize inside), checked object by object.

Applying them to the control plane is test_install_e2e.py; these need only the kubectl binary
(`make e2e-bins`), hence the e2e marker.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sbs.e2e import binaries
from sbs.operator import api, cli

from tests.packaging import live

pytestmark = pytest.mark.e2e

KUSTOMIZATIONS = (
    "default",
    "overlays/dev",
    "overlays/namespaced",
    "overlays/namespaced/placement",
    "samples",
)


def build(path: Path) -> list[dict[str, Any]]:
    try:
        kubectl = binaries.find_binaries().path("kubectl")
    except (binaries.BinariesMissing, binaries.BuildError) as exc:
        pytest.fail(str(exc), pytrace=False)
    out = subprocess.run([str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build(live.MANIFESTS / "default")


def test_crds_kustomization_lists_every_generated_crd() -> None:
    crds = live.REPO / "crds"
    listed = yaml.safe_load((crds / "kustomization.yaml").read_text())["resources"]
    files = sorted(
        p.name
        for p in crds.glob("*.yaml")
        if any(d and d.get("kind") == "CustomResourceDefinition" for d in yaml.safe_load_all(p.read_text()))
    )
    assert sorted(listed) == files


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_kustomization_builds(path: str) -> None:
    assert build(live.MANIFESTS / path)


def test_base_holds_crds_rbac_and_the_operator_in_sbs_system(base: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in base)
    assert kinds.count("CustomResourceDefinition") == len(list((live.REPO / "crds").glob("*.sbs.dev.yaml")))
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "Deployment", "Service"):  # fmt: skip
        assert kind in kinds
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for d in base:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"]["namespace"] == live.OPERATOR_NS, d["metadata"]
    for binding in by_kind(base, "ClusterRoleBinding") + by_kind(base, "RoleBinding"):
        assert binding["roleRef"]["name"].startswith("sbs-operator"), "no built-in (cluster-admin) roles"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": live.OPERATOR_SA, "namespace": live.OPERATOR_NS}
        ]
    for role in by_kind(base, "ClusterRole") + by_kind(base, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["apiGroups"] + rule["resources"], rule
            assert rule["verbs"], rule


def test_operator_deployment_is_single_recreate_probed_and_restricted(base: list[dict[str, Any]]) -> None:
    (dep,) = by_kind(base, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == live.OPERATOR_SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the image's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == api.SBS_IMAGE
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }  # fmt: skip
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # HOME, matplotlib: a writable /tmp
    args = c["args"]
    liveness = args[args.index("--liveness") + 1]
    assert liveness == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "metrics": int(args[args.index("--metrics-port") + 1])}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    # the image's sbs-operator accepts exactly these arguments
    assert c["command"] == ["sbs-operator"] and args[0] == "run"
    sub = cli.run.make_context("run", args[1:])
    assert sub.params["liveness"] == liveness and sub.params["metrics_port"] == 9090
    (svc,) = by_kind(base, "Service")
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics"}]


def test_operator_namespace_enforces_restricted_pod_security(base: list[dict[str, Any]]) -> None:
    (ns,) = by_kind(base, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dev_overlay_changes_only_the_image_pull_and_flags(base: list[dict[str, Any]]) -> None:
    dev = build(live.MANIFESTS / "overlays" / "dev")
    key = lambda d: (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, dev)) == sorted(map(key, base))
    changed = [key(d) for d in dev if d != next(b for b in base if key(b) == key(d))]
    assert changed == [("Deployment", live.OPERATOR_NS, "sbs-operator")]
    (c,) = by_kind(dev, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert c["imagePullPolicy"] == "Never" and c["image"].endswith(":dev")
    assert c["args"][-2:] == ["--resync-seconds=5", "--verbose"]
    assert cli.run.make_context("run", c["args"][1:]).params["resync_seconds"] == 5


def test_samples_are_valid_sbsdeployments() -> None:
    docs = build(live.MANIFESTS / "samples")
    assert [d["kind"] for d in docs] == ["SBSDeployment"]
    for d in docs:
        api.SBSDeployment.model_validate(d)


def test_operator_cli_run_help_lists_the_flags_the_manifests_use() -> None:
    result = CliRunner().invoke(cli.main, ["run", "--help"])
    for flag in ("--liveness", "--metrics-port", "--resync-seconds", "--verbose", "--lease-namespace"):
        assert flag in result.output
