"""The operator's coalescing work queue: dirty deployments reconciled by a pool of workers.

Every watch event on an SBSDeployment, its engine pods, its role scalers or its scheduler Deployment
marks that deployment dirty (`enqueue`); workers reconcile dirty deployments one at a time each (no
two workers on one deployment), a reconcile may ask to be woken later (drain, backoff), and a
periodic resync lists every deployment so that a lost watch event is repaired within `resync_s`.
Only the holder of the leader Lease reconciles: a reconcile runs under `LeaseElector.while_leading`
and is cancelled the moment the lease lapses, and within `reconcile_timeout_s`. Workers and the
resync survive any error (`supervision`); `problems()` tells the liveness probe when one died or
stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter, Gauge, Histogram
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.operator import api, cluster_view, reconciler, supervision
from sbs.operator.config import OperatorConfig
from sbs.operator.leader import LeadershipLost, LeaseElector

log = logging.getLogger("sbs.operator")

RECONCILES = Counter("sbs_operator_reconciles_total", "Reconciles by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "sbs_operator_reconcile_seconds",
    "Duration of one reconcile",
    # past the default 10 s: a reconcile that waits on a loaded API server at scale (sbs-bench operator-scale)
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, float("inf")),
)
WRITES = Counter("sbs_operator_api_writes_total", "API writes made by reconciles")
QUEUE_DEPTH = Gauge("sbs_operator_queue_depth", "Deployments waiting for a reconcile")
LEADER = Gauge("sbs_operator_leader", "1 while this replica holds the lease")
DEPLOYMENT_PHASE = Gauge("sbs_operator_deployment_phase", "1 for the phase each deployment is in",
                         ["namespace", "name", "phase"])  # fmt: skip

PODGROUP_API = "/apis/scheduling.x-k8s.io/v1alpha1"


class ReconcileTimeout(Exception):
    """A reconcile outlived `reconcile_timeout_s` and was cancelled."""


class WorkQueue:
    """Deployments marked dirty, and the workers that reconcile them."""

    def __init__(self, client: KubeClient, cfg: OperatorConfig, elector: LeaseElector) -> None:
        self.client, self.cfg, self.elector = client, cfg, elector
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.queued: set[tuple[str, str]] = set()
        self.running: set[tuple[str, str]] = set()
        self.again: set[tuple[str, str]] = set()
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.since: dict[tuple[str, str], float] = {}
        """Start (monotonic) of each running reconcile."""
        self.resync_health = supervision.Health("resync", cfg.stale_after_s)
        self.view = cluster_view.ClusterView()
        self.gang_checked = -1e9
        self.gang_available = False
        self.tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

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

    async def _reconcile(self, client: KubeClient, key: tuple[str, str]) -> reconciler.Result | None:
        now = time.time()  # noqa: TID251 (IO edge: the wall clock is passed into the pure planner)
        try:
            async with asyncio.timeout(self.cfg.reconcile_timeout_s) as deadline:
                gang = await self._gang()
                return await reconciler.reconcile(client, *key, now, gang_available=gang, view=self.view)
        except TimeoutError:
            if deadline.expired():
                raise ReconcileTimeout(f"took over {self.cfg.reconcile_timeout_s:.0f} s") from None
            raise

    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in the bookkeeping: log it, keep the worker
                log.exception("worker: %s/%s", *key)

    async def _work(self, key: tuple[str, str]) -> None:
        self.queued.discard(key)
        QUEUE_DEPTH.set(len(self.queued))
        if not self.elector.is_leader:
            return  # the leader reconciles; everything is enqueued again on takeover
        self.running.add(key)
        self.since[key] = started = time.monotonic()
        client = self.client.fork()
        try:
            result = await self.elector.while_leading(self._reconcile(client, key))
        except LeadershipLost:
            log.info("reconcile %s/%s cancelled: leadership lost", *key)
            RECONCILES.labels("cancelled").inc()
        except ReconcileTimeout as exc:
            log.warning("reconcile %s/%s %s; cancelled, retrying", *key, exc)
            RECONCILES.labels("error").inc()
            self.enqueue_later(key, 10.0)
        except supervision.EXPECTED as exc:
            conflict = isinstance(exc, ApiError) and exc.status == 409
            why = str(exc) or repr(exc)
            log.log(logging.INFO if conflict else logging.WARNING, "reconcile %s/%s: %s; retrying", *key, why)
            RECONCILES.labels("error").inc()
            self.enqueue_later(key, 1.0 if conflict else 5.0)
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
                    verbs = " ".join(f"{v} {n}" for v, n in sorted(client.writes.items()))
                    log.info(
                        "reconciled %s/%s: %d writes (%s), phase %s", *key, result.writes, verbs, result.phase
                    )
                if result.requeue_after is not None:
                    self.enqueue_later(key, result.requeue_after)
        finally:
            WRITES.inc(sum(client.writes.values()))
            RECONCILE_SECONDS.observe(time.monotonic() - started)
            self.running.discard(key)
            self.since.pop(key, None)
            if key in self.again:
                self.again.discard(key)
                self.enqueue(*key)

    async def enqueue_all(self) -> None:
        """One resync round: every deployment marked dirty."""
        for ns in self.cfg.namespaces or (None,):
            for item in await self.client.list(collection_path(api.API_VERSION, api.PLURAL, ns)):
                self.enqueue(item["metadata"]["namespace"], item["metadata"]["name"])

    def on_takeover(self) -> None:
        """Leadership taken: every deployment at once (the resync would find them within `resync_s`)."""
        task = asyncio.get_running_loop().create_task(self._enqueue_all_now())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _enqueue_all_now(self) -> None:
        try:
            await self.enqueue_all()
        except Exception as exc:
            log.warning("enqueue on takeover: %r; the resync will", exc)

    async def resync(self) -> None:
        await supervision.forever(
            self.resync_health, self.enqueue_all, self.cfg.resync_s, round_timeout_s=60.0
        )

    def problems(self) -> list[str]:
        """Why the queue cannot make progress: a dead worker or resync, a stalled resync or reconcile."""
        out = [f"worker {i} stopped" for i, t in enumerate(self.tasks[:-1]) if t.done()]
        out += [p for p in [self.resync_health.problem()] if p]
        limit = self.cfg.reconcile_timeout_s + 30
        out += [
            f"reconcile {ns}/{name} running for {age:.0f} s"
            for (ns, name), since in self.since.items()
            if (age := time.monotonic() - since) > limit
        ]
        return out

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.worker()) for _ in range(self.cfg.workers)]
        self.tasks.append(supervision.start(self.resync_health, self.resync()))

    async def stop(self) -> None:
        tasks = [*self.tasks, *self._background]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for h in self.timers.values():
            h.cancel()
