"""Kubernetes discovery: the Ready leader pods of one SBSDeployment, as engine changes.

List, then watch from the list's resourceVersion; when the watch ends (server timeout), expires
(410 Gone) or fails, list again and emit the difference, so no change is lost. A leader marked
`sbs.dev/draining` (or being deleted) is updated to draining: it gets no new requests while its
in-flight ones finish; it is removed when its pod goes away or stops being Ready. Pods are read
through `sbs.kube` (in a pod: the scheduler's ServiceAccount, its token re-read as it rotates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from sbs.kube import credentials, labels
from sbs.kube.client import ApiError, KubeClient
from sbs.kube.credentials import CredentialsError
from sbs.scheduler.core.types import Role
from sbs.scheduler.service.discovery import EngineChange, EngineRecord, EngineRecordError, diff
from sbs.settings.service import KubernetesDiscovery

log = logging.getLogger(__name__)


def engine_from_pod(
    pod: Mapping[str, Any], *, deployment: str, default_port: int = 30000
) -> EngineRecord | None:
    """The engine a pod (a Kubernetes Pod as a dict) stands for, or None if it is not a target.

    Targets are the Ready leader engine pods of `deployment` with an IP. The role, group and revision
    come from labels, the bootstrap port, DP size and draining flag from annotations; a pod being
    deleted is draining. Raises `EngineRecordError` for a labelled leader whose role or annotations
    are malformed.
    """
    meta = pod.get("metadata") or {}
    found = meta.get("labels") or {}
    if any(found.get(k) != v for k, v in labels.leader_selector(deployment).items()):
        return None
    status = pod.get("status") or {}
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    if not ready or not ip:
        return None
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    role_label = found.get(labels.ROLE)
    try:
        role = Role(role_label)
    except ValueError:
        raise EngineRecordError(
            f"pod {name}: label '{labels.ROLE}' must be one of prefill, decode; got {role_label!r}"
        ) from None
    notes = meta.get("annotations") or {}
    port = default_port
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == labels.HTTP_PORT_NAME and p.get("containerPort"):
                port = int(p["containerPort"])
    host = f"[{ip}]" if ":" in ip else ip
    return EngineRecord(
        key=name,
        role=role,
        url=f"http://{host}:{port}",
        revision=found.get(labels.REVISION, ""),
        group=found.get(labels.GROUP, ""),
        bootstrap_host=ip,
        bootstrap_port=_int_annotation(notes, labels.BOOTSTRAP_PORT, name, hi=65535),
        dp_size=_int_annotation(notes, labels.DP_SIZE, name),
        draining=str(notes.get(labels.DRAINING, "")).lower() == "true" or bool(meta.get("deletionTimestamp")),
    )


def _int_annotation(notes: Mapping[str, Any], key: str, name: str, *, hi: int | None = None) -> int | None:
    raw = notes.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if value < 1 or (hi is not None and value > hi):
        bound = f"1..{hi}" if hi else "a positive integer"
        raise EngineRecordError(f"pod {name}: annotation '{key}' must be {bound}, got {raw!r}")
    return value


def leader_selector(deployment: str) -> str:
    return labels.selector_string(labels.leader_selector(deployment))


class KubernetesSource:
    """An `EngineSource` over the leader pods of `deployment` in `namespace`."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        deployment: str,
        *,
        default_port: int = 30000,
        watch_timeout_s: int = 240,
        retry_s: float = 2.0,
    ) -> None:
        self.client, self.namespace, self.deployment = client, namespace, deployment
        self.default_port, self.watch_timeout_s, self.retry_s = default_port, watch_timeout_s, retry_s
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.selector = leader_selector(deployment)
        self.known: dict[str, EngineRecord] = {}

    def _record(self, pod: Mapping[str, Any]) -> EngineRecord | None:
        try:
            return engine_from_pod(pod, deployment=self.deployment, default_port=self.default_port)
        except EngineRecordError as exc:
            log.warning("ignoring %s", exc)
            return None

    def _apply(self, current: dict[str, EngineRecord]) -> list[EngineChange]:
        changes = diff(self.known, current)
        self.known = current
        return changes

    async def changes(self) -> AsyncIterator[EngineChange]:
        while True:
            try:
                listing = await self.client.get(self.path, labelSelector=self.selector)
                current = {}
                for pod in listing.get("items", []):
                    rec = self._record(pod)
                    if rec is not None:
                        current[rec.key] = rec
                for change in self._apply(current):
                    yield change
                rv = listing["metadata"].get("resourceVersion")
                async for event in self.client.watch(
                    self.path,
                    resource_version=rv,
                    timeout_s=self.watch_timeout_s,
                    labelSelector=self.selector,
                ):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: relist
                    if kind == "BOOKMARK":
                        continue
                    meta = obj.get("metadata") or {}
                    key = f"{meta.get('namespace', self.namespace)}/{meta.get('name', '?')}"
                    rec = None if kind == "DELETED" else self._record(obj)
                    current = dict(self.known)
                    if rec is None:
                        current.pop(key, None)
                    else:
                        current[rec.key] = rec
                    for change in self._apply(current):
                        yield change
            except (
                TimeoutError,
                ApiError,
                CredentialsError,
                aiohttp.ClientError,
                OSError,
                ValueError,
            ) as exc:
                log.warning("engine discovery (%s/%s): %s; retrying", self.namespace, self.deployment, exc)
                await asyncio.sleep(self.retry_s)


async def from_settings(k: KubernetesDiscovery) -> KubernetesSource:
    """The source a config's `engines.kubernetes` section describes (raises `CredentialsError`)."""
    creds = await credentials.load(k.kubeconfig)
    log.info("engine discovery: %s/%s on %s (%s)", k.namespace, k.deployment, creds.server, creds.source)
    client = KubeClient(creds, field_manager="sbs-scheduler")
    return KubernetesSource(client, k.namespace, k.deployment, default_port=k.default_port)
