"""Scheduler replica leases as coordination.k8s.io Leases on the real control plane (`KubeLeases`)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import credentials
from sbs.kube.blocking import Kube
from sbs.kube.client import KubeClient
from sbs.scheduler.core import ownership
from sbs.scheduler.service.replicas import KubeLeases, Replicas
from sbs.settings.service import ReplicasSettings

pytestmark = pytest.mark.e2e

SETTINGS = ReplicasSettings(backend="kubernetes", lease_duration_s=1.0, renew_interval_s=0.25)
PREFILL = [(f"ns/prefill-{i}", 32) for i in range(4)]


def test_replicas_find_each_other_through_leases_and_take_over_a_silent_ones_instances(
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    async def run() -> tuple[float, list[str]]:
        async with KubeClient(await credentials.from_kubeconfig(control_plane.kubeconfig)) as client:
            views = {
                name: Replicas(
                    KubeLeases(client, namespace, "ds"), name, f"http://{name}:8000", SETTINGS, lambda: None
                )
                for name in ("sched-a", "sched-b")
            }
            other = Replicas(KubeLeases(client, namespace, "other"), "x", "http://x", SETTINGS, lambda: None)
            for _ in range(2):
                for v in (*views.values(), other):
                    await v.step()
            a, b = views["sched-a"], views["sched-b"]
            assert a.peers == b.peers == {"sched-a": "http://sched-a:8000", "sched-b": "http://sched-b:8000"}
            assert a.owned(PREFILL) and b.owned(PREFILL) and not a.owned(PREFILL) & b.owned(PREFILL)
            t0 = time.monotonic()
            while len(b.peers) == 2:  # a stops renewing: b drops it once its Lease sat unchanged 1 s
                await asyncio.sleep(SETTINGS.renew_interval_s)
                await b.step()
                assert time.monotonic() - t0 < 10
            took = time.monotonic() - t0
            assert b.owned(PREFILL) == {k for k, _ in PREFILL}
            await b.leave()
            names = [lease["spec"]["holderIdentity"] for lease in await client.list(
                f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
            )]  # fmt: skip
            return took, names

    took, names = asyncio.run(run())
    print(f"\nb took over a's instances {took:.2f} s after a's last renewal (lease 1 s)")
    assert 0.9 <= took < 5.0
    assert sorted(names) == ["sched-a", "x"]  # b's Lease went with b.leave(); a's stays until it expires
    assert ownership.owned(PREFILL, ["sched-b"], "sched-b") == {k for k, _ in PREFILL}
