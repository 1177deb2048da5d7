"""Leader election against the real API server when the holder's clock is skewed.

A "ghost" candidate holds the operator's Lease and writes `renewTime` from a clock an hour behind
ours. While it renews, the operator must stay a standby (comparing renewTime with the local clock
made it take over at once: two leaders). Once the ghost stops, the operator takes over after the
lease duration, counted on its own clock from the last change it saw; at once when the ghost named
its pod on the Lease and that pod is Failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import timestamps
from sbs.kube.blocking import Kube
from sbs.operator.leader import HOLDER_POD

from tests.operator.live import DEPS, Operator, delete_and_wait_gone, sample, wait_phase

LEASE_DURATION_S = 15
HOUR = 3600.0


def test_a_holder_with_a_lagging_clock_keeps_the_lease_until_it_stops_renewing(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sbs-operator"

    def ghost_renews() -> None:
        skewed = timestamps.rfc3339_micro(time.time() - HOUR)  # noqa: TID251 (a skewed wall clock)
        spec = {"holderIdentity": "ghost", "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": skewed}
        if kube.exists(path):
            kube.patch(path, {"spec": spec})
        else:
            body = {"metadata": {"name": "sbs-operator"}, "spec": {**spec, "acquireTime": skewed}}
            kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body)

    ghost_renews()
    op = operator()
    obj = sample()
    obj["spec"]["prefill"].update(groups=1, nodesPerGroup=1, chunkedPrefillSize=8192)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=1)
    kube.create(DEPS.format(ns=namespace), obj)
    deadline = time.monotonic() + 2 * LEASE_DURATION_S  # the ghost renews for twice the lease duration
    while time.monotonic() < deadline:
        ghost_renews()
        assert kube.get(path)["spec"]["holderIdentity"] == "ghost"
        time.sleep(2)
    assert "took leadership" not in op.log(), op.log()[-2000:]
    assert not (kube.get(DEPS.format(ns=namespace) + "/deepseek-v3").get("status") or {}), "a standby wrote"

    stopped = time.monotonic()  # the ghost dies: its record stops changing
    control_plane.wait(
        lambda: kube.get(path)["spec"]["holderIdentity"] != "ghost", "the operator takes the lease over", 60
    )
    took = time.monotonic() - stopped
    print(f"\nghost stopped renewing -> operator took over in {took:.1f} s (lease {LEASE_DURATION_S} s)")
    assert took >= LEASE_DURATION_S - 3  # it waited for the lease to run out on its own clock
    assert kube.get(path)["spec"]["leaseTransitions"] == 1
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    delete_and_wait_gone(control_plane, kube, namespace, "deepseek-v3")
    assert "Traceback" not in op.log(), op.log()[-3000:]


def test_a_holder_whose_pod_failed_is_taken_over_without_waiting_out_the_lease(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ghost names its pod on the Lease (as the operator's pods do). While that pod lives, the
    operator waits; once the pod is Failed (its container stopped), it takes over at once instead of
    after the 15 s lease duration, and names its own pod."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sbs-operator"
    pod_path = f"/api/v1/namespaces/{namespace}/pods/ghost-pod"
    kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": "ghost-pod"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "operator", "image": "sbs"}]},
    })  # fmt: skip
    kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", {
        "metadata": {"name": "sbs-operator", "annotations": {HOLDER_POD: f"{namespace}/ghost-pod"}},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": LEASE_DURATION_S},
    })  # fmt: skip

    def ghost_renews() -> None:
        now = timestamps.rfc3339_micro(time.time())  # noqa: TID251 (the ghost's own clock)
        kube.patch(path, {"spec": {"renewTime": now}})

    monkeypatch.setenv("POD_NAME", "op-pod")
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    op = operator()
    deadline = time.monotonic() + 8  # the ghost's pod is alive (Pending): the operator waits
    while time.monotonic() < deadline:
        ghost_renews()
        time.sleep(1)
    assert kube.get(path)["spec"]["holderIdentity"] == "ghost", op.log()[-2000:]

    kube.patch(pod_path + "/status", {"status": {"phase": "Failed"}})  # the ghost's container stopped
    stopped = time.monotonic()
    control_plane.wait(
        lambda: kube.get(path)["spec"]["holderIdentity"] != "ghost", "the operator takes the lease over", 60
    )
    took = time.monotonic() - stopped
    print(f"\nholder's pod Failed -> operator took over in {took:.1f} s (lease {LEASE_DURATION_S} s)")
    assert took < LEASE_DURATION_S / 2, f"waited {took:.1f} s: the lease was waited out"
    lease = kube.get(path)
    assert lease["metadata"]["annotations"][HOLDER_POD] == f"{namespace}/op-pod"
    assert "Traceback" not in op.log(), op.log()[-3000:]
