"""Leader election on a `coordination.k8s.io/v1` Lease (what client-go's leaderelection does).

The holder renews every `renew_s`; another candidate takes over once `renewTime` is older than
`leaseDurationSeconds`. Updates carry the Lease's resourceVersion, so two candidates never both
win. A holder that cannot renew for the lease duration stops acting as leader on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sbs.kube import timestamps
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.kube.credentials import CredentialsError

log = logging.getLogger("sbs.operator.leader")


class LeaseElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration_s: int = 15,
        renew_s: float = 5.0,
        on_change: Callable[[int], Any] | None = None,
    ) -> None:
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.duration_s, self.renew_s = duration_s, renew_s
        self.on_change = on_change
        self.on_acquire: Callable[[], Any] | None = None
        self._renewed_at = -1e9  # monotonic time of the last successful acquire/renew

    @property
    def is_leader(self) -> bool:
        return time.monotonic() - self._renewed_at < self.duration_s

    @property
    def path(self) -> str:
        return f"{collection_path('coordination.k8s.io/v1', 'leases', self.namespace)}/{self.name}"

    def _spec(self, now: float, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": acquired or timestamps.rfc3339_micro(now),
            "renewTime": timestamps.rfc3339_micro(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        """One round: create, renew or take over the Lease. True while we hold it."""
        now = time.time()  # noqa: TID251 (IO edge: the Lease holds wall-clock times)
        lease = await self.client.get_or_none(self.path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, 0),
            }
            await self.client.create(
                collection_path("coordination.k8s.io/v1", "leases", self.namespace), body
            )
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = timestamps.parse(spec["renewTime"]) if spec.get("renewTime") else 0.0
        expired = renewed + spec.get("leaseDurationSeconds", self.duration_s) < now
        if holder != self.identity and holder and not expired:
            return False
        transitions = spec.get("leaseTransitions", 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(now, transitions, acquired)
        await self.client.request("PUT", self.path, body=lease)  # resourceVersion makes this a CAS
        return True

    async def run(self) -> None:
        was = False
        while True:
            try:
                if await self.try_acquire():
                    self._renewed_at = time.monotonic()
            except (TimeoutError, ApiError, CredentialsError, OSError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            now_leader = self.is_leader
            if now_leader != was:
                log.info("%s %s leadership of %s/%s", self.identity, "took" if now_leader else "lost",
                         self.namespace, self.name)  # fmt: skip
                if self.on_change:
                    self.on_change(int(now_leader))
                if now_leader and self.on_acquire:
                    self.on_acquire()
                was = now_leader
            await asyncio.sleep(self.renew_s)

    async def release(self) -> None:
        """Give the Lease up on shutdown so a successor need not wait for it to expire."""
        if not self.is_leader:
            return
        try:
            lease = await self.client.get_or_none(self.path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["renewTime"] = timestamps.rfc3339_micro(0)
                await self.client.request("PUT", self.path, body=lease)
        except (ApiError, CredentialsError, OSError) as exc:
            log.warning("lease release: %s", exc)
        self._renewed_at = -1e9
