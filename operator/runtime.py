"""The operator process: kopf watches trigger level-based reconciles through a coalescing work queue.

kopf is used for what it is good at (watch streams, reconnects, the liveness endpoint) and only
through stateless `on.event` handlers, so it stores nothing on our objects and adds no
finalizers. Every event on an SBSDeployment, its engine pods or its scheduler Deployment marks
that deployment dirty; workers reconcile dirty deployments one at a time each (no two workers on
one deployment), a reconcile may ask to be woken later (drain, backoff), and a periodic resync
lists every deployment so that a lost watch event is repaired within `resync_s`.

Only the holder of a coordination Lease reconciles, so a second replica (or a developer's laptop
pointed at the cluster) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram
from sbs.operator import api, naming, reconciler
from sbs.operator import scaling_api as sapi
from sbs.operator.autoscaler import Autoscaler
from sbs.operator.kubeclient import ApiError, KubeClient, collection_path
from sbs.operator.leader import LeaseElector

log = logging.getLogger("sbs.operator")

RECONCILES = Counter("sbs_operator_reconciles_total", "Reconciles by result", ["result"])
RECONCILE_SECONDS = Histogram("sbs_operator_reconcile_seconds", "Duration of one reconcile")
WRITES = Counter("sbs_operator_api_writes_total", "API writes made by reconciles")
QUEUE_DEPTH = Gauge("sbs_operator_queue_depth", "Deployments waiting for a reconcile")
LEADER = Gauge("sbs_operator_leader", "1 while this replica holds the lease")
DEPLOYMENT_PHASE = Gauge("sbs_operator_deployment_phase", "1 for the phase each deployment is in",
                         ["namespace", "name", "phase"])  # fmt: skip

PODGROUP_API = "/apis/scheduling.x-k8s.io/v1alpha1"


@dataclass
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    """Watched namespaces; empty = the whole cluster."""
    workers: int = 8
    resync_s: float = 30.0
    lease_namespace: str = "default"
    lease_name: str = "sbs-operator"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    liveness: str | None = None
    stale_after_s: float = 120.0
    """The liveness probe fails when no resync completed for this long (a stuck process or API)."""


class Reconciler:
    """The work queue and its workers."""

    def __init__(self, client: KubeClient, cfg: OperatorConfig, elector: LeaseElector) -> None:
        self.client, self.cfg, self.elector = client, cfg, elector
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.queued: set[tuple[str, str]] = set()
        self.running: set[tuple[str, str]] = set()
        self.again: set[tuple[str, str]] = set()
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.last_resync = time.monotonic()
        self.gang_checked = -1e9
        self.gang_available = False
        self.tasks: list[asyncio.Task[None]] = []

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key in self.running:
            self.again.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)
            QUEUE_DEPTH.set(len(self.queued))

    def enqueue_later(self, key: tuple[str, str], delay: float) -> None:
        old = self.timers.pop(key, None)
        if old is not None and old.when() <= asyncio.get_running_loop().time() + delay:
            self.timers[key] = old
            return
        if old is not None:
            old.cancel()
        self.timers[key] = asyncio.get_running_loop().call_later(delay, self.enqueue, *key)

    async def _gang(self) -> bool:
        if time.monotonic() - self.gang_checked > 60:
            self.gang_checked = time.monotonic()
            try:
                self.gang_available = await self.client.get_or_none(PODGROUP_API) is not None
            except ApiError:
                self.gang_available = False
        return self.gang_available

    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            QUEUE_DEPTH.set(len(self.queued))
            if not self.elector.is_leader:
                continue  # the leader reconciles; the resync re-enqueues everything on takeover
            self.running.add(key)
            started = time.monotonic()
            client = self.client.fork()
            now = time.time()  # noqa: TID251 (IO edge: the wall clock is passed into the pure planner)
            try:
                result = await reconciler.reconcile(client, *key, now, gang_available=await self._gang())
            except ApiError as exc:
                level = logging.INFO if exc.status == 409 else logging.WARNING
                log.log(level, "reconcile %s/%s: %s; retrying", *key, exc)
                RECONCILES.labels("error").inc()
                self.enqueue_later(key, 1.0 if exc.status == 409 else 5.0)
            except Exception:
                log.exception("reconcile %s/%s failed; retrying in 10 s", *key)
                RECONCILES.labels("error").inc()
                self.enqueue_later(key, 10.0)
            else:
                RECONCILES.labels("ok").inc()
                if result is not None:
                    for phase in ("Pending", "Progressing", "Ready", "Degraded", "Failed"):
                        DEPLOYMENT_PHASE.labels(key[0], key[1], phase).set(1 if phase == result.phase else 0)
                    if result.writes:
                        log.info("reconciled %s/%s: %d writes, phase %s", *key, result.writes, result.phase)
                    if result.requeue_after is not None:
                        self.enqueue_later(key, result.requeue_after)
            finally:
                WRITES.inc(sum(client.writes.values()))
                RECONCILE_SECONDS.observe(time.monotonic() - started)
                self.running.discard(key)
                if key in self.again:
                    self.again.discard(key)
                    self.enqueue(*key)

    async def resync(self) -> None:
        while True:
            try:
                for ns in self.cfg.namespaces or (None,):
                    items = await self.client.list(collection_path(api.API_VERSION, api.PLURAL, ns))
                    for item in items:
                        self.enqueue(item["metadata"]["namespace"], item["metadata"]["name"])
                self.last_resync = time.monotonic()
            except (ApiError, OSError) as exc:
                log.warning("resync failed: %s", exc)
            await asyncio.sleep(self.cfg.resync_s)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.worker()) for _ in range(self.cfg.workers)]
        self.tasks.append(asyncio.create_task(self.resync()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for h in self.timers.values():
            h.cancel()


def build_registry(rec: Reconciler, cfg: OperatorConfig) -> kopf.OperatorRegistry:
    """kopf handlers: triggers only (stateless `on.event`), settings and the liveness probe."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = 270  # the API server ends each watch; kopf reconnects
        settings.watching.client_timeout = 300  # and a silent stream is cut, never a zombie
        settings.watching.connect_timeout = 30
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 60
        settings.posting.level = logging.WARNING
        settings.batching.worker_limit = max(64, cfg.workers * 8)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as our client: the pod's ServiceAccount, else the kubeconfig."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    def on_deployment(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
        if event.get("type") != "DELETED":
            rec.enqueue(namespace, name)

    engine_pods = {naming.COMPONENT: naming.ENGINE, naming.DEPLOYMENT: kopf.PRESENT}

    @kopf.on.event("", "v1", "pods", labels=engine_pods, registry=registry)
    def on_pod(labels: dict[str, str], namespace: str, **_: Any) -> None:
        rec.enqueue(namespace, labels[naming.DEPLOYMENT])

    @kopf.on.event(api.GROUP, api.VERSION, sapi.SCALER_PLURAL, registry=registry)
    def on_scaler(spec: dict[str, Any], namespace: str, **_: Any) -> None:
        if spec.get("deployment"):
            rec.enqueue(namespace, spec["deployment"])

    @kopf.on.event(
        "apps", "v1", "deployments", labels={naming.COMPONENT: naming.SCHEDULER}, registry=registry
    )
    def on_scheduler(labels: dict[str, str], namespace: str, **_: Any) -> None:
        if naming.DEPLOYMENT in labels:
            rec.enqueue(namespace, labels[naming.DEPLOYMENT])

    @kopf.on.probe(id="reconciler", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        age = time.monotonic() - rec.last_resync
        if age > cfg.stale_after_s:
            raise kopf.PermanentError(f"no successful resync for {age:.0f} s")
        return {"leader": rec.elector.is_leader, "last_resync_age_s": round(age, 1), "queue": len(rec.queued)}

    return registry


async def run(client: KubeClient, cfg: OperatorConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever)."""
    lease_client = KubeClient(
        client.creds, field_manager=naming.FIELD_MANAGER
    )  # its writes are not reconciles
    elector = LeaseElector(
        lease_client, cfg.lease_namespace, cfg.lease_name, cfg.identity, on_change=LEADER.set
    )
    rec = Reconciler(client, cfg, elector)
    elector.on_acquire = lambda: asyncio.get_running_loop().create_task(_enqueue_all(rec))
    registry = build_registry(rec, cfg)
    stop = stop or asyncio.Event()
    elector_task = asyncio.create_task(elector.run())
    scaler = Autoscaler(client.fork(), lambda: elector.is_leader)
    autoscaler_task = asyncio.create_task(scaler.run())
    rec.start()
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not cfg.namespaces,
            namespaces=cfg.namespaces,
            liveness_endpoint=cfg.liveness,
            stop_flag=stop,
        )
    finally:
        autoscaler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await autoscaler_task
        elector_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await elector_task
        await elector.release()
        await lease_client.close()
        await rec.stop()


async def _enqueue_all(rec: Reconciler) -> None:
    for ns in rec.cfg.namespaces or (None,):
        with contextlib.suppress(ApiError, OSError):
            for item in await rec.client.list(collection_path(api.API_VERSION, api.PLURAL, ns)):
                rec.enqueue(item["metadata"]["namespace"], item["metadata"]["name"])


def namespaces_arg(values: Collection[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))
