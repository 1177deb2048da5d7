"""The operator process: kopf watches trigger level-based reconciles through the work queue.

kopf is used for what it is good at (watch streams, reconnects, the liveness endpoint) and only
through stateless `on.event` handlers, so it stores nothing on our objects and adds no
finalizers. It logs in with the operator's own credentials (`sbs.kube.credentials`). Only the
holder of a coordination Lease reconciles, so a second replica (or a developer's laptop pointed at
the cluster) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf
from sbs.kube import labels as sbs_labels
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.kube.credentials import Credentials, CredentialsError
from sbs.operator import api, child_names
from sbs.operator.autoscaling import role_scaler_api
from sbs.operator.autoscaling.controller import Autoscaler
from sbs.operator.config import OperatorConfig
from sbs.operator.leader import LeaseElector
from sbs.operator.work_queue import LEADER, WorkQueue

log = logging.getLogger("sbs.operator")


def build_registry(work: WorkQueue, cfg: OperatorConfig, credentials: Credentials) -> kopf.OperatorRegistry:
    """kopf handlers: triggers only (stateless `on.event`), login, settings and the liveness probe."""
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

    logins = 0

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        """The operator's own credentials. kopf logs in again when the API refuses its token: the
        token is renewed first (a rotated ServiceAccount token read again, an exec plugin re-run)."""
        nonlocal logins
        if logins:
            await credentials.refresh(force=True)
        logins += 1
        return kopf.ConnectionInfo(**credentials.login_fields())

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    def on_deployment(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
        if event.get("type") != "DELETED":
            work.enqueue(namespace, name)

    engine_pods = {sbs_labels.COMPONENT: sbs_labels.ENGINE, sbs_labels.DEPLOYMENT: kopf.PRESENT}

    @kopf.on.event("", "v1", "pods", labels=engine_pods, registry=registry)
    def on_pod(labels: dict[str, str], namespace: str, **_: Any) -> None:
        work.enqueue(namespace, labels[sbs_labels.DEPLOYMENT])

    @kopf.on.event(api.GROUP, api.VERSION, role_scaler_api.PLURAL, registry=registry)
    def on_scaler(spec: dict[str, Any], namespace: str, **_: Any) -> None:
        if spec.get("deployment"):
            work.enqueue(namespace, spec["deployment"])

    @kopf.on.event(
        "apps", "v1", "deployments", labels={sbs_labels.COMPONENT: sbs_labels.SCHEDULER}, registry=registry
    )
    def on_scheduler(labels: dict[str, str], namespace: str, **_: Any) -> None:
        if sbs_labels.DEPLOYMENT in labels:
            work.enqueue(namespace, labels[sbs_labels.DEPLOYMENT])

    @kopf.on.probe(id="reconciler", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        age = time.monotonic() - work.last_resync
        if age > cfg.stale_after_s:
            raise kopf.PermanentError(f"no successful resync for {age:.0f} s")
        return {
            "leader": work.elector.is_leader,
            "last_resync_age_s": round(age, 1),
            "queue": len(work.queued),
        }

    return registry


async def run(client: KubeClient, cfg: OperatorConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever)."""
    # Its own connections (renewals never queue behind reconciles); its writes are not reconciles.
    lease_client = KubeClient(client.credentials, field_manager=child_names.FIELD_MANAGER)
    elector = LeaseElector(
        lease_client, cfg.lease_namespace, cfg.lease_name, cfg.identity, on_change=LEADER.set
    )
    work = WorkQueue(client, cfg, elector)
    elector.on_acquire = lambda: asyncio.get_running_loop().create_task(_enqueue_all(work))
    registry = build_registry(work, cfg, client.credentials)
    stop = stop or asyncio.Event()
    elector_task = asyncio.create_task(elector.run())
    scaler = Autoscaler(client.fork(), lambda: elector.is_leader)
    autoscaler_task = asyncio.create_task(scaler.run())
    work.start()
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
        await work.stop()


async def _enqueue_all(work: WorkQueue) -> None:
    for ns in work.cfg.namespaces or (None,):
        with contextlib.suppress(ApiError, CredentialsError, OSError):
            for item in await work.client.list(collection_path(api.API_VERSION, api.PLURAL, ns)):
                work.enqueue(item["metadata"]["namespace"], item["metadata"]["name"])
