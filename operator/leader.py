"""Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does it.

Expiry never compares the holder's `renewTime` with our clock (the two machines' clocks may differ
by minutes): a candidate remembers when *it observed* the Lease record change, on its own monotonic
clock, and takes over only once the record has stayed unchanged for `leaseDurationSeconds`. Updates
carry the Lease's resourceVersion, so two candidates never both win. The holder counts its term from
the moment it *sent* a successful renewal (before the PUT, never after it returns) and gives up
leading `renew_deadline_s` later unless it renews again; `renew_deadline_s` is shorter than the
lease duration, so the old leader has stopped before anyone may take over. `while_leading` runs one
piece of work (a reconcile) and cancels it the moment the term lapses.

A holder known to be dead is not waited out. A candidate running in a pod names it on the Lease
(`HOLDER_POD`), and a successor takes over at once when that holder's process cannot be running:
- the holder's pod is the successor's own pod: it was an earlier run of the same container, which
  the kubelet restarts only after it exited;
- the holder's pod is `Failed` or `Succeeded`: its containers have stopped.
A holder whose pod is gone is still waited out: a force-deleted pod may run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sbs.kube import timestamps
from sbs.kube.client import ApiError, KubeClient, collection_path
from sbs.operator import supervision

log = logging.getLogger("sbs.operator.leader")
T = TypeVar("T")
HOLDER_POD = "sbs.io/holder-pod"
"""Lease annotation: `namespace/name` of the holder's pod (absent when it runs outside one)."""


class LeadershipLost(Exception):
    """The lease lapsed while work that needs it was running; the work was cancelled."""


def _record(spec: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions", "leaseDurationSeconds")
    return tuple(spec.get(k) for k in keys)


class LeaseElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        renew_s: float = 2.0,
        on_change: Callable[[int], Any] | None = None,
        stale_after_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        pod: str | None = None,
    ) -> None:
        if not 0 < renew_s < renew_deadline_s < duration_s:
            raise ValueError("need 0 < renew_s < renew_deadline_s < duration_s")
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.duration_s, self.renew_deadline_s, self.renew_s = duration_s, renew_deadline_s, renew_s
        self.on_change = on_change
        self.pod = pod
        """`namespace/name` of our own pod, when we know it (the downward API)."""
        self.on_acquire: Callable[[], Any] | None = None
        self.clock = clock
        self._renewed_at = -1e9  # our clock when the last successful acquire/renew was sent
        self._observed: tuple[Any, ...] | None = None  # the Lease record as last seen
        self._observed_at = 0.0  # our clock when that record was first seen
        self._was_leader = False
        self.health = supervision.Health("leader election", stale_after_s, clock=clock)

    @property
    def is_leader(self) -> bool:
        return self.term_left() > 0

    def term_left(self) -> float:
        """Seconds until our leadership lapses unless renewed (<= 0: not leading)."""
        return self._renewed_at + self.renew_deadline_s - self.clock()

    @property
    def path(self) -> str:
        return f"{collection_path('coordination.k8s.io/v1', 'leases', self.namespace)}/{self.name}"

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = timestamps.rfc3339_micro(time.time())  # noqa: TID251 (informational for humans only)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _observe(self, spec: dict[str, Any]) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    async def try_acquire(self) -> bool:
        """One round: create, renew or take over the Lease. True while we hold it."""
        timeout = self.renew_deadline_s
        try:
            lease = await self.client.request("GET", self.path, timeout_s=timeout)
        except ApiError as exc:
            if exc.status != 404:
                raise
            lease = None
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0),
            }
            self._annotate(body)
            sent = self.clock()
            path = collection_path("coordination.k8s.io/v1", "leases", self.namespace)
            await self.client.request("POST", path, body=body, timeout_s=timeout)
            self._won(body["spec"], sent)
            return True
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.duration_s
        if (
            holder
            and holder != self.identity
            and self.clock() - self._observed_at < duration
            and not await self._holder_stopped(lease)
        ):
            return False  # someone else renewed within its lease duration, as far as we have seen
        ours = holder == self.identity
        transitions = (spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        lease["spec"] = self._spec(transitions, spec.get("acquireTime") if ours else None)
        self._annotate(lease)
        sent = self.clock()
        await self.client.request("PUT", self.path, body=lease, timeout_s=timeout)  # resourceVersion: CAS
        self._won(lease["spec"], sent)
        return True

    def _annotate(self, lease: dict[str, Any]) -> None:
        annotations = lease.setdefault("metadata", {}).get("annotations") or {}
        annotations.pop(HOLDER_POD, None)
        if self.pod:
            annotations[HOLDER_POD] = self.pod
        lease["metadata"]["annotations"] = annotations

    async def _holder_stopped(self, lease: dict[str, Any]) -> bool:
        """The Lease's holder cannot be running (module docstring); False when unsure."""
        holder_pod = ((lease.get("metadata") or {}).get("annotations") or {}).get(HOLDER_POD)
        if not holder_pod or holder_pod.count("/") != 1:
            return False
        if holder_pod == self.pod:
            log.info("%s: the Lease holder was an earlier run of this pod's container", self.identity)
            return True
        namespace, name = holder_pod.split("/")
        try:
            pod = await self.client.get_or_none(f"{collection_path('v1', 'pods', namespace)}/{name}")
        except ApiError as exc:  # e.g. 403 without `get pods`: wait the Lease out
            log.debug("%s: cannot read the holder's pod %s: %s", self.identity, holder_pod, exc)
            return False
        phase = ((pod or {}).get("status") or {}).get("phase")
        if phase in ("Failed", "Succeeded"):
            log.info("%s: the Lease holder's pod %s is %s", self.identity, holder_pod, phase)
            return True
        return False

    def _won(self, spec: dict[str, Any], sent: float) -> None:
        self._renewed_at = sent
        self._observed, self._observed_at = _record(spec), sent

    async def round(self) -> None:
        """One election round, then leadership callbacks when it changed (never raises from them)."""
        try:
            await self.try_acquire()
        finally:
            self._notify()

    def _notify(self) -> None:
        now_leader = self.is_leader
        if now_leader == self._was_leader:
            return
        self._was_leader = now_leader
        log.info("%s %s leadership of %s/%s", self.identity, "took" if now_leader else "lost",
                 self.namespace, self.name)  # fmt: skip
        for callback, arg in ((self.on_change, (int(now_leader),)), (now_leader and self.on_acquire, ())):
            if callback:
                try:
                    callback(*arg)
                except Exception:
                    log.exception("leadership callback failed")

    async def run(self) -> None:
        """Election rounds every `renew_s` until cancelled; no error ends it (see `supervision`)."""
        await supervision.forever(
            self.health, self.round, self.renew_s,
            max_backoff_s=self.renew_s, round_timeout_s=self.renew_deadline_s,
        )  # fmt: skip

    async def while_leading(self, work: Awaitable[T]) -> T:
        """`work`'s result; it is cancelled (and `LeadershipLost` raised) once our term lapses."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                left = self.term_left()
                if left <= 0:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise LeadershipLost(f"{self.identity} lost {self.namespace}/{self.name}")
                await asyncio.wait({task}, timeout=left)
            return task.result()
        finally:
            if not task.done():  # we were cancelled ourselves
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

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
        except Exception as exc:  # shutting down: a successor takes over at expiry anyway
            log.warning("lease release: %r", exc)
        self._renewed_at = -1e9
