"""`kubectl apply -k manifests/overlays/dev` on the e2e control plane (RBAC on), then the operator
under its own ServiceAccount: least privilege proven both ways, no drift, live health.

The module installs once (`installed`) and removes what it created afterwards: the sbs-system
namespace, the ClusterRole and the ClusterRoleBinding (the CRDs belong to the harness).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.tokens import service_account_kubeconfig
from sbs.e2e.waits import WaitTimeout
from sbs.kube.blocking import ApiError, Kube
from sbs.operator import api

from tests.packaging import health, live
from tests.packaging.rbac import NEEDS, allowed

NAME = "deepseek-v3"


FORBIDDEN: list[tuple[str, ...]] = [
    # kubectl auth can-i arguments: what a cluster admin may do and the operator must not
    ("*", "*"),
    ("*", "*", "--all-namespaces"),
    ("delete", "nodes"),
    ("patch", "nodes"),
    ("get", "secrets", "-n", "sbs-system"),
    ("list", "secrets", "--all-namespaces"),
    ("create", "clusterrolebindings"),
    ("create", "clusterroles"),
    ("escalate", "clusterroles"),
    ("bind", "clusterroles"),
    ("escalate", "roles", "-n", "default"),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts", "-n", "kube-system"),
    ("create", "pods", "--subresource=exec", "-n", "default"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("update", "sbsdeployments.sbs.dev", "-n", "default"),  # the spec is the user's (GitOps)
    ("delete", "sbsdeployments.sbs.dev", "-n", "default"),
    ("update", "leases.coordination.k8s.io", "-n", "kube-system"),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "serviceaccounts", "--subresource=token", "-n", "kube-system"),
]


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> Iterator[str]:
    """The dev overlay applied; yields kubectl's output."""
    control_plane.check()
    out = live.kubectl(control_plane, "apply", "-k", str(live.MANIFESTS / "overlays" / "dev")).stdout
    k = control_plane.kube
    try:
        control_plane.wait(
            lambda: k.exists(f"/api/v1/namespaces/{live.OPERATOR_NS}/serviceaccounts/{live.OPERATOR_SA}"),
            "the operator's ServiceAccount",
        )
        yield out
    finally:
        live.uninstall(k, cluster_role="sbs-operator", namespace=live.OPERATOR_NS)


@pytest.fixture(scope="module")
def sa_kubeconfig(
    control_plane: ControlPlane, installed: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    return service_account_kubeconfig(
        control_plane, control_plane.kube, path, namespace=live.OPERATOR_NS, name=live.OPERATOR_SA
    )


def test_apply_k_installs_the_base_and_a_second_apply_changes_nothing(
    control_plane: ControlPlane, kube: Kube, installed: str
) -> None:
    first = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in installed.splitlines()}
    for obj in (
        "namespace/sbs-system",
        "serviceaccount/sbs-operator",
        "clusterrole.rbac.authorization.k8s.io/sbs-operator",
        "deployment.apps/sbs-operator",
        "service/sbs-operator-metrics",
        "customresourcedefinition.apiextensions.k8s.io/sbsdeployments.sbs.dev",
    ):
        assert obj in first, installed
    again = live.kubectl(control_plane, "apply", "-k", str(live.MANIFESTS / "overlays" / "dev")).stdout
    assert again.splitlines() and all(line.endswith(" unchanged") for line in again.splitlines()), again
    assert len(again.splitlines()) == len(first)
    diff = live.kubectl(control_plane, "diff", "-k", str(live.MANIFESTS / "overlays" / "dev"), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr

    # the operator's pod passed Pod Security admission at `restricted` (kwok then plays it)
    ns = kube.get(f"/api/v1/namespaces/{live.OPERATOR_NS}")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = control_plane.wait(
        lambda: kube.get(f"/api/v1/namespaces/{live.OPERATOR_NS}/pods",
                         labelSelector="app.kubernetes.io/name=sbs-operator")["items"],
        "the operator's pod admitted",
    )  # fmt: skip
    (pod,) = pods
    assert pod["spec"]["serviceAccountName"] == live.OPERATOR_SA
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/sbs-project/sbs:dev"


def test_service_account_may_do_everything_the_operator_does(
    kube: Kube, installed: str, namespace: str
) -> None:
    denied = [
        need
        for need in NEEDS
        if not allowed(kube, live.OPERATOR_USER, *need[:3], need[3].replace("*ns*", namespace))
    ]
    assert not denied, denied
    # the Lease only in its own namespace
    assert not allowed(kube, live.OPERATOR_USER, "update", "coordination.k8s.io", "leases", namespace)


def test_cluster_role_grants_nothing_beyond_what_the_operator_does() -> None:
    role = yaml.safe_load((live.MANIFESTS / "rbac" / "role.yaml").read_text())
    needed = {(v, g, r) for v, g, r, _ in NEEDS}
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (verb, group, resource) in needed, f"{verb} {group}/{resource} is not needed"


def test_service_account_token_is_forbidden_cluster_admin_actions(
    control_plane: ControlPlane, sa_kubeconfig: Path
) -> None:
    whoami = live.kubectl(control_plane, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                          kubeconfig=sa_kubeconfig).stdout  # fmt: skip
    assert whoami == live.OPERATOR_USER
    allowed = []
    for args in FORBIDDEN:
        result = live.kubectl(control_plane, "auth", "can-i", *args, kubeconfig=sa_kubeconfig, check=False)
        if result.stdout.strip() != "no" or result.returncode != 1:
            allowed.append((args, result.stdout.strip(), result.stderr.strip()))
    assert not allowed, allowed
    # and what it needs, through the same path (token authentication, not impersonation)
    ok = live.kubectl(control_plane, "auth", "can-i", "list", "nodes", kubeconfig=sa_kubeconfig, check=False)
    assert ok.stdout.strip() == "yes"


def test_operator_under_its_service_account_brings_the_sample_to_ready_without_drift(
    control_plane: ControlPlane, kube: Kube, sa_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    op = live.OperatorProcess(sa_kubeconfig, tmp_path / "operator.log", "--lease-namespace", live.OPERATOR_NS)
    samples = str(live.MANIFESTS / "samples")
    try:
        out = live.kubectl(control_plane, "apply", "-k", samples, "-n", namespace).stdout
        assert out.strip() == f"sbsdeployment.sbs.dev/{NAME} created"
        try:
            ready = live.wait_dep(control_plane, kube, namespace, NAME, live.phase_is("Ready"), "Ready", 60)
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\noperator log:\n{op.log()[-4000:]}") from None
        assert health.argo_health(ready)[0] == "Healthy"
        assert health.kstatus(ready)[0] == "Current"
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{live.OPERATOR_NS}/leases/sbs-operator")
        assert lease["spec"]["holderIdentity"].endswith(f"-{op.proc.pid}")

        # drift: the reconciled object matches the manifest, and re-applying it changes nothing
        diff = live.kubectl(control_plane, "diff", "-k", samples, "-n", namespace, check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        again = live.kubectl(control_plane, "apply", "-k", samples, "-n", namespace).stdout
        assert again.strip() == f"sbsdeployment.sbs.dev/{NAME} unchanged"

        # a spec change: Progressing while groups roll, as Argo CD shows it
        patch = {"spec": {"engine": {"image": "lmsysorg/sglang:v0.5.24"}}}
        kube.patch(live.DEPS.format(ns=namespace) + f"/{NAME}", patch)
        rolling = live.wait_dep(
            control_plane, kube, namespace, NAME, live.phase_is("Progressing"), "rolling update", 30
        )
        assert health.argo_health(rolling) == ("Progressing", health.argo_health(rolling)[1])
        assert "RollingUpdate" in health.argo_health(rolling)[1]
        op.stop()
        log = op.log()
        assert "Traceback" not in log and not live.refusals(log), log[-4000:]

        # with the operator gone, a new generation stays unobserved: Progressing for both tools
        kube.patch(live.DEPS.format(ns=namespace) + f"/{NAME}", {"spec": {"engine": {"image": "x/y:z"}}})
        stale = live.get_dep(kube, namespace, NAME)
        assert stale["metadata"]["generation"] == stale["status"]["observedGeneration"] + 1
        assert health.argo_health(stale)[0] == "Progressing"
        assert health.kstatus(stale)[0] == "InProgress"
    finally:
        op.stop()
        live.delete_deployment(control_plane, kube, namespace, NAME)


def owned_config_map(owner: dict, name: str, *, block: bool) -> dict:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": block}  # fmt: skip
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [ref]}}


def test_children_with_block_owner_deletion_need_the_finalizers_rule(
    control_plane: ControlPlane, kube: Kube, sa_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """The API server enforces owner-reference permissions (OwnerReferencesPermissionEnforcement, as
    hardened clusters do): the operator's token may set blockOwnerDeletion, a subject with the same
    create rights but no `update` on `sbsdeployments/finalizers` may not."""
    owner = kube.create(live.DEPS.format(ns=namespace), {
        "apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "owner"},
        "spec": {"model": {"path": "m"}, "prefill": {"groups": 0}, "decode": {"groups": 0}},
    })  # fmt: skip
    cms = f"/api/v1/namespaces/{namespace}/configmaps"
    operator = Kube.from_kubeconfig(sa_kubeconfig)
    operator.create(cms, owned_config_map(owner, "by-the-operator", block=True))

    # the same create rights without the finalizers rule
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-finalizers"}}
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", sa)
    kube.create(f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}],
    })  # fmt: skip
    kube.create(f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-finalizers", "namespace": namespace}],
    })  # fmt: skip
    other = Kube.from_kubeconfig(service_account_kubeconfig(
        control_plane, kube, tmp_path / "kubeconfig", namespace=namespace, name="no-finalizers"))  # fmt: skip
    other.create(cms, owned_config_map(owner, "no-block", block=False))
    with pytest.raises(ApiError) as refused:
        other.create(cms, owned_config_map(owner, "blocked", block=True))
    assert refused.value.status == 403
    assert "cannot set blockOwnerDeletion" in refused.value.message, refused.value.message
