"""Kubernetes discovery: the Ready leader pods of one SBSDeployment, as engine changes.

List, then watch from the list's resourceVersion; when the watch ends (server timeout), expires
(410 Gone) or fails, list again and emit the difference, so no change is lost. A leader marked
`sbs.dev/draining` (or being deleted) is updated to draining: it gets no new requests while its
in-flight ones finish; it is removed when its pod goes away or stops being Ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from sbs.operator.kubeclient import ApiError, KubeClient, auto_credentials
from sbs.scheduler.service.engines import (
    COMPONENT_ENGINE,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_LEADER,
    ChangeKind,
    EngineChange,
    EngineRecord,
    EngineRecordError,
    engine_from_pod,
)
from sbs.scheduler.service.settings import KubernetesDiscovery

log = logging.getLogger(__name__)


def leader_selector(deployment: str) -> str:
    return f"{LABEL_DEPLOYMENT}={deployment},{LABEL_COMPONENT}={COMPONENT_ENGINE},{LABEL_LEADER}=true"


def diff(known: Mapping[str, EngineRecord], current: Mapping[str, EngineRecord]) -> list[EngineChange]:
    """Changes that turn `known` into `current`."""
    out = [EngineChange(ChangeKind.REMOVE, rec) for key, rec in known.items() if key not in current]
    for key, rec in current.items():
        if key not in known:
            out.append(EngineChange(ChangeKind.ADD, rec))
        elif known[key] != rec:
            out.append(EngineChange(ChangeKind.UPDATE, rec))
    return out


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
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning("engine discovery (%s/%s): %s; retrying", self.namespace, self.deployment, exc)
                await asyncio.sleep(self.retry_s)


def from_settings(k: KubernetesDiscovery) -> KubernetesSource:
    """The source a config's `engines.kubernetes` section describes (credentials read now)."""
    client = KubeClient(auto_credentials(k.kubeconfig), field_manager="sbs-scheduler")
    return KubernetesSource(client, k.namespace, k.deployment, default_port=k.default_port)
