"""Helpers for the packaging tests on the e2e control plane: kubectl, ServiceAccount kubeconfigs,
a local `sbs-operator run` process, and SBSDeployment status objects as fixtures."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.procs import stop_group
from sbs.e2e.waits import wait_until
from sbs.kube import labels
from sbs.kube.blocking import Kube
from sbs.operator import api

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SAMPLE = MANIFESTS / "samples" / "deepseek-v3-h800.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEPS = f"/apis/{api.API_VERSION}/namespaces/{{ns}}/{api.PLURAL}"
OPERATOR_NS = "sbs-system"
OPERATOR_SA = "sbs-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"


def kubectl(
    plane: ControlPlane, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or plane.kubeconfig)}
    result = subprocess.run(
        [str(plane.bins.path("kubectl")), *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


REFUSED = re.compile(r"(?<![\d,.:])403(?!\d)|Forbidden")
"""An API refusal in a log line: HTTP 403 as a number of its own (not a port such as 38403, nor the
milliseconds of a `01:44:37,403` timestamp), or Kubernetes' reason."""


def refusals(log: str) -> list[str]:
    """The lines of `log` that report an API refusal (`REFUSED`)."""
    return [line for line in log.splitlines() if REFUSED.search(line)]


class OperatorProcess:
    """`python -m sbs.operator.cli run` as its own process group, logging to a file."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str) -> None:
        self.log_path = log
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbs.operator.cli", "run", "--kubeconfig", str(kubeconfig),
                 "--resync-seconds", "5", *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=log.parent,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.proc, 10)


def uninstall(k: Kube, *, cluster_role: str, namespace: str) -> None:
    """Delete a ClusterRole with its binding of the same name, and a namespace, where they exist."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    k.delete(f"{rbac}/clusterrolebindings/{cluster_role}", missing_ok=True)
    k.delete(f"{rbac}/clusterroles/{cluster_role}", missing_ok=True)
    k.delete(f"/api/v1/namespaces/{namespace}", missing_ok=True)


def get_dep(k: Kube, ns: str, name: str) -> dict[str, Any]:
    return k.get(DEPS.format(ns=ns) + f"/{name}")


def wait_dep(
    plane: ControlPlane,
    k: Kube,
    ns: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 60,
    interval_s: float = 0.05,
) -> dict[str, Any]:
    """The first version of the object that satisfies `predicate` (polled every `interval_s`)."""

    def check() -> dict[str, Any] | None:
        obj = get_dep(k, ns, name)
        return obj if predicate(obj) else None

    return wait_until(check, timeout_s, f"{ns}/{name}: {what}", check=plane.check, interval_s=interval_s)


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    def pred(obj: dict[str, Any]) -> bool:
        st = obj.get("status") or {}
        return st.get("phase") == phase and st.get("observedGeneration") == obj["metadata"]["generation"]

    return pred


def delete_deployment(plane: ControlPlane, k: Kube, ns: str, name: str) -> None:
    """Delete an SBSDeployment and its engine pods now (the garbage collector would take up to
    half a minute for the pods), so the next test finds every node free."""
    k.delete(DEPS.format(ns=ns) + f"/{name}", missing_ok=True)
    k.delete(f"/api/v1/namespaces/{ns}/pods", labelSelector=engine_selector(name), gracePeriodSeconds=0)
    plane.wait(lambda: engine_pods_gone(k, ns, name), f"{ns}/{name}: engine pods gone")


def engine_pods_gone(k: Kube, ns: str, name: str) -> bool:
    return not k.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=engine_selector(name))["items"]


def engine_selector(name: str) -> str:
    return labels.selector_string(labels.engine_selector(name))


def as_fixture(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a fixture: without managedFields and kubectl's last-applied copy."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta.pop("managedFields", None)
    annotations = meta.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not annotations:
        meta.pop("annotations", None)
    return out
