"""The operator's coalescing work queue: dirty deployments reconciled by a pool of workers.

Every watch event on an SBSDeployment, its engine pods, its role scalers or its scheduler Deployment
marks that deployment dirty (`enqueue`); workers reconcile dirty deployments one at a time each (no
two workers on one deployment), a reconcile may ask to be woken later (drain, backoff), and a
periodic resync lists every deployment so that a lost watch event is repaired within `resync_s`.
Only the holder of the leader Lease reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter, Gauge, Histogram
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.kube.credentials import CredentialsError
from sbs.operator import api, reconciler
from sbs.operator.config import OperatorConfig
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


class WorkQueue:
    """Deployments marked dirty, and the workers that reconcile them."""

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
            except (ApiError, CredentialsError, OSError) as exc:
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
