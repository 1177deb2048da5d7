"""pytest plugin: one control plane per session, a namespace per test (`tests/conftest.py` loads it).

Fixtures:
- `control_plane` (session): the started `ControlPlane` with `SBS_E2E_NODES` fake H800 nodes
  (default 64) and the project's CRDs from `crds/` installed; `KUBECONFIG` points at it.
- `kube` (session): a `Kube` client for it, as cluster admin.
- `namespace`: a fresh namespace with its `default` ServiceAccount; deleted afterwards without
  waiting (namespace deletion takes about 10 s).
- `node_agent`: a factory for `NodeAgent`s that are stopped after the test.
- `kueue` (session): Kueue on the control plane (`e2e/kueue.py`), started the first time a test asks
  for it and stopped (webhooks first) before the control plane stops.
- `kueue_namespace`: `namespace` labelled as Kueue's, with the LocalQueue `sbs` of its own ClusterQueue,
  named like the namespace, whose quota is every GPU of the cluster: change it with
  `kueue.install_queues(kube, ns, name=ns, gpus=...)`. Teardown deletes the ClusterQueue.

Any test that uses `control_plane` (directly or through the others) is marked `e2e`, so
`pytest -m "not e2e"` runs without binaries. When such a test fails, the report gains a section
with the tail of every component's log; a component that died fails the test that follows.
Missing binaries fail the tests (they never skip): build them with `make e2e-bins`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sbs.e2e import agent, binaries
from sbs.e2e import kueue as kueue_mod
from sbs.e2e.control_plane import ClusterSettings, ControlPlane, ControlPlaneError
from sbs.e2e.waits import WaitTimeout
from sbs.kube.blocking import ApiError, Kube

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO / "crds"
NAMESPACE_DRAIN_S = 60.0
"""How long a test's teardown waits for its namespace's pods to be gone."""
E2E_FIXTURES = {"control_plane", "kube", "namespace", "node_agent", "kueue", "kueue_namespace"}
_PLANE = pytest.StashKey[ControlPlane]()


def project_crd_paths() -> tuple[Path, ...]:
    """`crds/` when it holds any YAML (the operator's generated CRDs), else nothing."""
    if CRDS_DIR.is_dir() and any(CRDS_DIR.glob("*.y*ml")):
        return (CRDS_DIR,)
    return ()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    plane = item.config.stash.get(_PLANE, None)
    if report.failed and plane is not None and E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        report.sections.append(("e2e control plane logs", plane.logs_report(lines=20)))
    return report


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    try:
        bins = binaries.find_binaries()
    except (binaries.BinariesMissing, binaries.BuildError) as exc:
        pytest.fail(str(exc), pytrace=False)
    settings = ClusterSettings(
        node_count=int(os.environ.get("SBS_E2E_NODES", "64")), crd_paths=project_crd_paths()
    )
    plane = ControlPlane(bins, settings, name="pytest")
    try:
        plane.start()
    except (ControlPlaneError, WaitTimeout, ApiError) as exc:
        pytest.fail(f"the e2e control plane did not start: {exc}", pytrace=False)
    request.config.stash[_PLANE] = plane
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(plane.kubeconfig)
    try:
        yield plane
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        del request.config.stash[_PLANE]
        plane.stop()


@pytest.fixture(name="kube", scope="session")
def kube_fixture(control_plane: ControlPlane) -> Kube:
    return control_plane.kube


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    control_plane.check()  # a component that died during an earlier test fails this one, with its log
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 'test'}-{secrets.token_hex(3)}"
    client = control_plane.kube
    client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    control_plane.wait(
        lambda: client.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        f"ServiceAccount {name}/default",
    )
    yield name
    # The next test starts on free nodes: a test's pods hold the kwok nodes' GPUs until they are
    # gone (a test after the CRD fuzz's 20 deployments found its pods unschedulable). Its processes
    # have stopped (the node agents' teardown ran first), so nothing waits on a grace period.
    # Deleting the namespace first stops its controllers from creating pods again.
    # Kueue's pods keep its finalizer while their Workload lives, and the namespace controller deletes
    # nothing else while pods remain: deleting the Workloads (404 without Kueue's CRDs) lets Kueue stop
    # and release them.
    pods = f"/api/v1/namespaces/{name}/pods"
    client.delete(f"/api/v1/namespaces/{name}", missing_ok=True)
    try:
        client.delete(kueue_mod.WORKLOADS.format(ns=name), missing_ok=True)
        client.delete(pods, gracePeriodSeconds=0)
    except ApiError as exc:
        log.warning("deleting the pods of %s: %s", name, exc)
    control_plane.check()
    try:
        control_plane.wait(lambda: not client.get(pods)["items"], f"{name}'s pods gone", NAMESPACE_DRAIN_S)
    except WaitTimeout as exc:
        log.warning("%s: the next test may find nodes taken", str(exc).splitlines()[0])


@pytest.fixture
def node_agent(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., agent.NodeAgent]]:
    started: list[agent.NodeAgent] = []

    def make(*, selector: str, command: agent.Command, **kwargs: object) -> agent.NodeAgent:
        a = agent.NodeAgent(
            control_plane.kube, selector=selector, command=command, log_dir=tmp_path / "agent", **kwargs
        )  # type: ignore[arg-type]
        started.append(a.start())
        return a

    yield make
    for a in started:
        a.stop()


@pytest.fixture(scope="session")
def kueue(control_plane: ControlPlane) -> Iterator[kueue_mod.Kueue]:
    try:
        build = kueue_mod.find_kueue()
    except (kueue_mod.KueueError, binaries.BuildError) as exc:
        pytest.fail(str(exc), pytrace=False)
    running = kueue_mod.Kueue(control_plane, build)
    try:
        running.start()
    except (kueue_mod.KueueError, ControlPlaneError, WaitTimeout, ApiError) as exc:
        pytest.fail(f"Kueue did not start: {exc}", pytrace=False)
    yield running
    running.stop()


@pytest.fixture
def kueue_namespace(kueue: kueue_mod.Kueue, namespace: str) -> Iterator[str]:
    plane = kueue.plane
    gpus = plane.settings.node_count * plane.settings.shape.gpus
    kueue_mod.install_queues(plane.kube, namespace, name=namespace, gpus=gpus)
    yield namespace
    kueue_mod.delete_queues(plane.kube, namespace, name=namespace)
