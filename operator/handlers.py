"""The operator process: kopf watches trigger level-based reconciles through the work queue.

kopf is used for what it is good at (watch streams, reconnects, the liveness endpoint) and only
through stateless `on.event` handlers, so it stores nothing on our objects and adds no
finalizers. It logs in with the operator's own credentials (`sbs.kube.credentials`). Only the
holder of a coordination Lease reconciles, so a second replica (or a developer's laptop pointed at
the cluster) is harmless.

Pods and Deployments are watched through a server-side label selector (`WATCH_SELECTORS`, kopf's
`settings.watching.label_selectors`): the API server sends only the operator's own objects, not
every pod of the cluster (kopf's `labels=` handler filters alone are applied after receiving).
The liveness probe fails when any background loop died or stalled: the leader elector (its
renewals), the resync, a worker, the autoscaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import kopf
from sbs.kube import labels as sbs_labels
from sbs.kube.client import KubeClient
from sbs.kube.credentials import Credentials
from sbs.operator import api, child_names, supervision
from sbs.operator.autoscaling import role_scaler_api
from sbs.operator.autoscaling.controller import Autoscaler
from sbs.operator.config import OperatorConfig
from sbs.operator.leader import LeaseElector
from sbs.operator.work_queue import LEADER, WorkQueue

log = logging.getLogger("sbs.operator")

WATCH_SELECTORS = {
    ("", "v1", "pods"): f"{sbs_labels.COMPONENT}={sbs_labels.ENGINE},{sbs_labels.DEPLOYMENT}",
    ("apps", "v1", "deployments"): f"{sbs_labels.COMPONENT}={sbs_labels.SCHEDULER},{sbs_labels.DEPLOYMENT}",
}
"""Server-side label selectors of kopf's watches (group, version, plural): only our own children."""


def configure(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    """kopf's settings: watch timeouts, selectors, batching."""
    settings.watching.server_timeout = 270  # the API server ends each watch; kopf reconnects
    settings.watching.client_timeout = 300  # and a silent stream is cut, never a zombie
    settings.watching.connect_timeout = 30
    settings.watching.reconnect_backoff = 1.0
    for resource, selector in WATCH_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector
    settings.networking.request_timeout = 60
    settings.posting.level = logging.WARNING
    settings.queueing.worker_limit = max(64, cfg.workers * 8)
    # Watching given namespaces: no cluster-wide scans of namespaces and CRDs, which a namespaced
    # Role refuses (kopf would log errors for a minute, then fall back to exactly this).
    settings.scanning.disabled = bool(cfg.namespaces)


def liveness(work: WorkQueue, loops: Sequence[supervision.Health]) -> dict[str, Any]:
    """The probe's answer; raises (the endpoint answers 500) when a loop died or stalled."""
    problems = work.problems() + [p for p in (h.problem() for h in loops) if p]
    if problems:
        raise kopf.PermanentError("; ".join(problems))
    return {
        "leader": work.elector.is_leader,
        "last_resync_age_s": round(work.resync_health.age_s, 1),
        **{f"{h.name.replace(' ', '_')}_age_s": round(h.age_s, 1) for h in loops},
        "queue": len(work.queued),
    }


def build_registry(
    work: WorkQueue, cfg: OperatorConfig, credentials: Credentials, loops: Sequence[supervision.Health] = ()
) -> kopf.OperatorRegistry:
    """kopf handlers: triggers only (stateless `on.event`), login, settings and the liveness probe
    (over the work queue and `loops`)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, cfg)

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
        return liveness(work, loops)

    return registry


async def run(client: KubeClient, cfg: OperatorConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever)."""
    # Its own connections (renewals never queue behind reconciles); its writes are not reconciles.
    lease_client = KubeClient(client.credentials, field_manager=child_names.FIELD_MANAGER)
    elector = LeaseElector(
        lease_client, cfg.lease_namespace, cfg.lease_name, cfg.identity, on_change=LEADER.set,
        stale_after_s=cfg.stale_after_s, pod=cfg.pod,
    )  # fmt: skip
    work = WorkQueue(client, cfg, elector)
    elector.on_acquire = work.on_takeover
    scaler = Autoscaler(
        client.fork(), lambda: elector.is_leader, guard=elector.while_leading, stale_after_s=cfg.stale_after_s
    )
    registry = build_registry(work, cfg, client.credentials, [elector.health, scaler.health])
    stop = stop or asyncio.Event()
    elector_task = supervision.start(elector.health, elector.run())
    autoscaler_task = supervision.start(scaler.health, scaler.run())
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
    finally:  # stop acting as leader (reconciles, the autoscaler) before the Lease is given up
        autoscaler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await autoscaler_task
        await work.stop()
        elector_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await elector_task
        await elector.release()
        await lease_client.close()
