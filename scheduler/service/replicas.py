"""Scheduler replicas: who is alive, through leases, and which prefill instances are this replica's.

Every replica renews its own lease every `renew_interval_s` and lists its peers' leases. A peer is
alive while its lease keeps changing: a lease seen unchanged for `lease_duration_s` (timed on this
replica's own monotonic clock, so node clocks need not agree) is gone. A lease seen for the first time
is as old as its writer's renewal time says (at most `lease_duration_s`): a newcomer does not keep a
dead peer alive for a whole duration. The live set feeds `ownership.owned`, a pure function, so
replicas that see the same peers agree on the owners without talking. A newcomer with peers claims
its share only at its second renewal, when every peer has listed its lease, so an instance never has
two deciders. A replica that stops cleanly deletes its lease, so its instances move at once; one that
dies is noticed within `lease_duration_s + 2 × renew_interval_s`.

Two stores: `KubeLeases` (coordination.k8s.io Leases, labelled with the deployment) and `FileLeases`
(one file per replica in a shared folder, for replicas on one host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from sbs.kube import credentials, labels, timestamps
from sbs.kube.client import ApiError, KubeClient
from sbs.kube.credentials import CredentialsError
from sbs.scheduler.core import ownership
from sbs.scheduler.service.engine_watch import wall_clock
from sbs.settings.service import ReplicasSettings, ServiceSettings

log = logging.getLogger(__name__)

REPLICA_COMPONENT = "scheduler-replica"
URL_ANNOTATION = labels.PREFIX + "url"


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One replica's lease as listed: `stamp` changes on every renewal."""

    replica: str
    url: str
    stamp: str
    renewed_wall_s: float


class LeaseStore(Protocol):
    async def renew(self, replica: str, url: str, duration_s: float, wall_s: float) -> None: ...
    async def list(self) -> list[LeaseRecord]: ...
    async def release(self, replica: str) -> None: ...
    async def close(self) -> None: ...


class FileLeases:
    """Leases as files `<folder>/<replica>.lease` (JSON), rewritten atomically on each renewal."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._seq = 0

    def _path(self, replica: str) -> Path:
        return self.folder / f"{hashlib.sha1(replica.encode()).hexdigest()[:16]}.lease"

    async def renew(self, replica: str, url: str, duration_s: float, wall_s: float) -> None:
        self._seq += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(replica)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        body = {"replica": replica, "url": url, "seq": self._seq, "pid": os.getpid(), "wall": wall_s}
        tmp.write_text(json.dumps(body))
        tmp.replace(path)

    async def list(self) -> list[LeaseRecord]:
        out = []
        for path in sorted(self.folder.glob("*.lease")):
            try:
                rec = json.loads(path.read_text())
                out.append(LeaseRecord(rec["replica"], rec["url"], f"{rec['pid']}:{rec['seq']}", rec["wall"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed or half-written meanwhile: the next listing sees it
        return out

    async def release(self, replica: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(replica).unlink()

    async def close(self) -> None:
        pass


class KubeLeases:
    """Leases `<deployment>-sched-<hash>` in the deployment's namespace, one per replica."""

    def __init__(self, client: KubeClient, namespace: str, deployment: str) -> None:
        self.client, self.namespace, self.deployment = client, namespace, deployment
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.selector = f"{labels.DEPLOYMENT}={deployment},{labels.COMPONENT}={REPLICA_COMPONENT}"
        self._acquired: dict[str, str] = {}

    def name(self, replica: str) -> str:
        return f"{self.deployment[:40]}-sched-{hashlib.sha1(replica.encode()).hexdigest()[:10]}"

    async def renew(self, replica: str, url: str, duration_s: float, wall_s: float) -> None:
        now = timestamps.rfc3339_micro(wall_s)
        acquired = self._acquired.setdefault(replica, now)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name(replica),
                "namespace": self.namespace,
                "labels": {labels.DEPLOYMENT: self.deployment, labels.COMPONENT: REPLICA_COMPONENT},
                "annotations": {URL_ANNOTATION: url},
            },
            "spec": {
                "holderIdentity": replica,
                "leaseDurationSeconds": max(1, round(duration_s)),
                "acquireTime": acquired,
                "renewTime": now,
            },
        }
        await self.client.apply(lease, plural="leases")

    async def list(self) -> list[LeaseRecord]:
        out = []
        for item in await self.client.list(self.collection, label_selector=self.selector):
            spec, meta = item.get("spec") or {}, item.get("metadata") or {}
            try:
                renewed = timestamps.parse(spec.get("renewTime") or "")
            except ValueError:
                continue
            url = (meta.get("annotations") or {}).get(URL_ANNOTATION, "")
            out.append(LeaseRecord(spec.get("holderIdentity") or "", url, spec["renewTime"], renewed))
        return out

    async def release(self, replica: str) -> None:
        await self.client.delete(f"{self.collection}/{self.name(replica)}", propagation=None)

    async def close(self) -> None:
        await self.client.close()


def replica_identity(settings: ReplicasSettings, port: int) -> tuple[str, str]:
    """(this replica's id, the URL its peers forward to), from the settings or the pod's env."""
    me = settings.id or os.environ.get("POD_NAME") or f"{socket.gethostname()}:{port}"
    url = settings.advertise_url
    if url is None:
        ip = os.environ.get("POD_IP") or "127.0.0.1"
        url = f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"
    return me, url


class Replicas:
    """This replica's view of its peers; `on_change` runs when the live set changes."""

    def __init__(
        self,
        store: LeaseStore,
        me: str,
        url: str,
        settings: ReplicasSettings,
        on_change: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = wall_clock,
    ) -> None:
        self.store, self.me, self.url, self.settings = store, me, url, settings
        self.on_change, self.clock, self.wall = on_change, clock, wall
        self.peers: dict[str, str] = {me: url}
        """Live replicas (this one included) and their URLs."""
        self._seen: dict[str, tuple[str, float]] = {}
        self.changes = 0
        self.joined = False
        self.settled = False
        """Peers have seen this replica's lease: it claims its share (at once when it joined alone)."""

    def _members(self) -> list[str]:
        """The replicas that own instances: the live ones, this one once settled."""
        return list(self.peers) if self.settled else [p for p in self.peers if p != self.me]

    def owned(self, instances: Sequence[tuple[str, int]]) -> set[str]:
        """The prefill instances (key, DP size) this replica decides for."""
        return ownership.owned(instances, self._members(), self.me)

    def owner_url(self, instances: Sequence[tuple[str, int]]) -> str | None:
        """A peer that owns instances, for forwarding (the first in a stable order), or None."""
        owners = set(ownership.assign(instances, self._members()).values()) - {self.me}
        return self.peers[min(owners)] if owners else None

    def observe(self, leases: Sequence[LeaseRecord]) -> bool:
        """Update the live set from a listing; True when it changed."""
        now, wall = self.clock(), self.wall()
        live = {self.me: self.url}
        seen = {}
        for rec in leases:
            if not rec.replica or rec.replica == self.me:
                continue
            before = self._seen.get(rec.replica)
            if before is None:  # first sight: as old as the writer's clock says, within the duration
                since = now - min(max(wall - rec.renewed_wall_s, 0.0), self.settings.lease_duration_s)
            else:
                since = now if before[0] != rec.stamp else before[1]
            seen[rec.replica] = (rec.stamp, since)
            if now - since < self.settings.lease_duration_s:
                live[rec.replica] = rec.url
        self._seen = seen
        changed = live != self.peers
        self.peers = live
        return changed

    async def step(self) -> None:
        """Renew this replica's lease and look at its peers' (errors are logged, not raised)."""
        try:
            await self.store.renew(self.me, self.url, self.settings.lease_duration_s, self.wall())
            changed = self.observe(await self.store.list())
            if not self.joined:
                self.joined = changed = True
                self.settled = len(self.peers) == 1
            elif not self.settled:
                self.settled = changed = True  # every peer has listed since this replica's first renewal
            if changed:
                self.changes += 1
                log.info("scheduler replicas: %s (this one: %s)", ", ".join(sorted(self.peers)), self.me)
                self.on_change()
        except (ApiError, CredentialsError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("scheduler replica lease: %s; retrying", exc)

    async def run(self) -> None:
        """`step` every `renew_interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.renew_interval_s)
            await self.step()

    async def leave(self) -> None:
        """Give up the lease, so peers take this replica's instances at once."""
        with contextlib.suppress(ApiError, CredentialsError, aiohttp.ClientError, OSError, TimeoutError):
            await self.store.release(self.me)
        await self.store.close()


def describe(replicas: Replicas | None) -> dict[str, Any]:
    """For `/engines`' description: this replica and its live peers."""
    if replicas is None:
        return {"replica": None, "peers": []}
    return {"replica": replicas.me, "peers": sorted(replicas.peers)}


async def from_settings(settings: ServiceSettings, on_change: Callable[[], None]) -> Replicas:
    """The replica set `settings.replicas` describes (raises `CredentialsError` for Kubernetes)."""
    r = settings.replicas
    assert r is not None
    store: LeaseStore
    if r.backend == "kubernetes":
        k = settings.engines.kubernetes
        assert k is not None  # checked by ServiceSettings
        creds = await credentials.load(k.kubeconfig)
        store = KubeLeases(KubeClient(creds, field_manager="sbs-scheduler"), k.namespace, k.deployment)
    else:
        assert r.directory is not None
        store = FileLeases(r.directory)
    me, url = replica_identity(r, settings.port)
    return Replicas(store, me, url, r, on_change)
