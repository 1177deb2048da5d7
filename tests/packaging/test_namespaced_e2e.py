"""Namespaced mode (`manifests/overlays/namespaced`) on the e2e control plane: a Role in the team's
namespace and nothing cluster-wide, proven by SubjectAccessReviews over every resource the API
serves; the optional `placement/` grant adds exactly `list` on nodes and pods; and the operator runs
under that ServiceAccount's token until the sample is Ready.

The overlay is applied as a team would after `kustomize edit set namespace`: its namespace,
`sbs-apps`, replaced by the test's (which a cluster admin labelled for privileged engine pods).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.tokens import service_account_kubeconfig
from sbs.kube.blocking import Kube

from tests.packaging import live
from tests.packaging.rbac import CLUSTER_SCOPED, NEEDS, allowed

OVERLAY = live.MANIFESTS / "overlays" / "namespaced"
PLACEMENT = OVERLAY / "placement"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
PLACEMENT_GRANTS = {("list", "", "nodes"), ("list", "", "pods")}
DOCUMENTED_OFF = "autoscaling policies off (asked again every 60 s)"
"""What the operator is refused in namespaced mode, logged once: the cluster-scoped autoscaling
policies (a cluster admin's tool), as docs/packaging.md says."""


def built(plane: ControlPlane, path: Path, namespace: str) -> list[dict[str, Any]]:
    """The kustomization with its namespace set to `namespace` (as `kustomize edit set namespace`)."""
    out = live.kubectl(plane, "kustomize", str(path)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        if d["metadata"].get("namespace") == "sbs-apps":
            d["metadata"]["namespace"] = namespace
        for s in d.get("subjects") or []:
            if s.get("namespace") == "sbs-apps":
                s["namespace"] = namespace
    return docs


def apply(plane: ControlPlane, docs: list[dict[str, Any]], tmp: Path) -> None:
    path = tmp / f"objects-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    live.kubectl(plane, "apply", "-f", str(path))


@pytest.fixture(scope="module")
def team(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A team namespace (privileged for the engines, labelled by the cluster admin) with the overlay."""
    k = control_plane.kube
    name = f"team-{secrets.token_hex(3)}"
    labels = {"pod-security.kubernetes.io/enforce": "privileged"}
    k.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": labels}})  # fmt: skip
    try:
        apply(control_plane, built(control_plane, OVERLAY, name), tmp_path_factory.mktemp("namespaced"))
        control_plane.wait(lambda: k.exists(f"/api/v1/namespaces/{name}/serviceaccounts/sbs-operator"), "SA")
        yield name
    finally:
        live.uninstall(k, cluster_role="sbs-operator-placement", namespace=name)


def api_resources(plane: ControlPlane, namespaced: bool) -> list[tuple[str, str]]:
    """(group, resource) of every resource the API server serves with the given scope."""
    out = live.kubectl(plane, "api-resources", f"--namespaced={str(namespaced).lower()}", "-o", "name").stdout
    found = []
    for line in out.split():
        resource, _, group = line.partition(".")
        found.append((group, resource))
    return found


def grants(
    kube: Kube, user: str, resources: list[tuple[str, str]], namespace: str
) -> set[tuple[str, str, str]]:
    """Every (verb, group, resource) `user` may do in `namespace` ("" = cluster-wide) beyond what any
    ServiceAccount may (e.g. create selfsubjectaccessreviews)."""

    def may(who: str) -> set[tuple[str, str, str]]:
        return {
            (verb, group, resource)
            for group, resource in resources
            for verb in VERBS
            if allowed(kube, who, verb, group, resource, namespace)
        }

    return may(user) - may(f"system:serviceaccount:{user.split(':')[2]}:nobody")


def test_the_role_is_the_cluster_roles_namespaced_rules() -> None:
    cluster = yaml.safe_load((live.MANIFESTS / "rbac" / "role.yaml").read_text())
    role = yaml.safe_load((OVERLAY / "role.yaml").read_text())

    def triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {
            (v, g, r)
            for rule in rules
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }

    expected = {t for t in triples(cluster["rules"]) if t[2] not in CLUSTER_SCOPED}
    assert triples(role["rules"]) == expected


def test_namespaced_mode_grants_what_the_operator_needs_in_its_namespace_only(
    control_plane: ControlPlane, kube: Kube, team: str
) -> None:
    user = f"system:serviceaccount:{team}:sbs-operator"
    needed = [(v, g, r, team) for v, g, r, ns in NEEDS if r not in CLUSTER_SCOPED]
    denied = [n for n in needed if not allowed(kube, user, *n)]
    assert not denied, denied
    # nothing cluster-wide, nothing in another namespace: every served resource, every verb
    assert grants(kube, user, api_resources(control_plane, False), "") == set()
    assert grants(kube, user, api_resources(control_plane, True), "") == set()  # all namespaces
    assert grants(kube, user, api_resources(control_plane, True), "default") == set()


def test_placement_adds_exactly_list_nodes_and_pods(
    control_plane: ControlPlane, kube: Kube, team: str, tmp_path: Path
) -> None:
    apply(control_plane, built(control_plane, PLACEMENT, team), tmp_path)
    user = f"system:serviceaccount:{team}:sbs-operator"
    everything = api_resources(control_plane, False) + api_resources(control_plane, True)
    assert grants(kube, user, everything, "") == PLACEMENT_GRANTS
    assert grants(kube, user, api_resources(control_plane, True), "default") == {("list", "", "pods")}


def test_operator_deployment_watches_its_own_namespace(
    control_plane: ControlPlane, kube: Kube, team: str
) -> None:
    pods = control_plane.wait(
        lambda: kube.get(
            f"/api/v1/namespaces/{team}/pods", labelSelector="app.kubernetes.io/name=sbs-operator"
        )["items"],
        "the operator's pod admitted",
    )
    (c,) = pods[0]["spec"]["containers"]
    assert "--namespace=$(POD_NAMESPACE)" in c["args"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
    } in c["env"]


def test_operator_under_the_namespaced_role_brings_the_sample_to_ready(
    control_plane: ControlPlane, kube: Kube, team: str, tmp_path: Path
) -> None:
    apply(control_plane, built(control_plane, PLACEMENT, team), tmp_path)
    kubeconfig = service_account_kubeconfig(
        control_plane, kube, tmp_path / "kubeconfig", namespace=team, name="sbs-operator"
    )
    op = live.OperatorProcess(
        kubeconfig, tmp_path / "operator.log", "--namespace", team, "--lease-namespace", team
    )
    try:
        live.kubectl(control_plane, "apply", "-k", str(live.MANIFESTS / "samples"), "-n", team)
        try:
            live.wait_dep(control_plane, kube, team, "deepseek-v3", live.phase_is("Ready"), "Ready", 90)
        except Exception:
            print(op.log()[-4000:])
            raise
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{team}/leases/sbs-operator")
        assert lease["spec"]["holderIdentity"].endswith(f"-{op.proc.pid}")
        op.stop()
        log = op.log()
        assert "Traceback" not in log, log[-4000:]
        assert not (refused := live.refusals(log)), refused
        assert log.count(DOCUMENTED_OFF) == 1, log[-4000:]
    finally:
        op.stop()
        live.delete_deployment(control_plane, kube, team, "deepseek-v3")
