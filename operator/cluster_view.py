"""One shared, cached view of the cluster for all reconciles: its nodes and the GPUs in use.

A reconcile used to list every pod of the cluster, under a global lock, each time it placed a group.
Now the operator keeps one `ClusterView`: nodes and GPU allocations are listed at most once per
`ttl_s` (paginated, each page reduced at once to a few numbers per node, so memory does not grow
with the cluster's pod count), concurrent readers share one listing, and each placement the
operator makes is *reserved* here until its creation ended (whole or in part) and a listing started
after that shows its pods. Choosing a domain and reserving it happen with no
`await` between them, so two groups placed at the same time never target the same free nodes (no
lock is needed). When no domain has room in a cached view, placement lists again before giving up;
what a stale view still gets wrong, kube-scheduler reports and `group_plan` repairs (pods left
unschedulable in a full domain are placed again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sbs.kube.client import ApiError, KubeClient
from sbs.operator import placement

log = logging.getLogger("sbs.operator")
T = TypeVar("T")

LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


@dataclass(eq=False)
class Reservation:
    key: str
    domain: str
    nodes: int
    gpus: int
    settled_at: float | None = None
    """When creating its pods ended, whole or in part (None while they are being created)."""


async def list_pages(
    client: KubeClient, path: str, *, page_size: int, field_selector: str | None = None
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the items of a LIST one page (`limit`) at a time."""
    cont = None
    while True:
        params: dict[str, Any] = {"limit": page_size}
        if field_selector:
            params["fieldSelector"] = field_selector
        if cont:
            params["continue"] = cont
        page = await client.get(path, **params)
        yield page.get("items") or []
        cont = (page.get("metadata") or {}).get("continue")
        if not cont:
            return


class ClusterView:
    def __init__(
        self, *, ttl_s: float = 10.0, page_size: int = 250, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self.page_size, self.clock = ttl_s, page_size, clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self.reservations: list[Reservation] = []
        self.lists = Counter[str]()
        """LIST rounds made, by what (for tests and metrics)."""
        self._warned: set[str] = set()

    async def _cached(
        self, what: str, fetch: Callable[[], Awaitable[T]], max_age_s: float | None = None
    ) -> T:
        hit = self._cache.get(what)
        if hit is not None and self.clock() - hit[0] < (self.ttl_s if max_age_s is None else max_age_s):
            return hit[1]  # type: ignore[no-any-return]
        if what not in self._inflight:
            started = self.clock()

            async def run() -> T:
                value = await fetch()
                self._cache[what] = (started, value)
                return value

            task = asyncio.ensure_future(run())
            self._inflight[what] = task
            task.add_done_callback(lambda _: self._inflight.pop(what, None))
        return await asyncio.shield(self._inflight[what])  # type: ignore[no-any-return]

    async def cached(self, what: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """`fetch()`, shared by concurrent readers and kept for `ttl_s`."""
        return await self._cached(what, fetch)

    async def nodes(self, client: KubeClient) -> dict[str, placement.NodeInfo] | None:
        """Every node by name; None (for `ttl_s`) when nodes cannot be listed, e.g. without the
        permission in namespaced mode: node health and placement are then skipped."""
        return await self._cached("nodes", lambda: self._list_nodes(client))

    async def _list_nodes(self, client: KubeClient) -> dict[str, placement.NodeInfo] | None:
        self.lists["nodes"] += 1
        out: dict[str, placement.NodeInfo] = {}
        try:
            async for items in list_pages(client, "/api/v1/nodes", page_size=self.page_size):
                for n in items:
                    info = placement.node_info(n)
                    out[info.name] = info
        except ApiError as exc:
            self._warn_once("nodes", f"cannot list nodes ({exc}); placement and node health skipped")
            return None
        return out

    async def allocation(
        self, client: KubeClient, max_age_s: float | None = None
    ) -> placement.Allocation | None:
        """Nodes and the GPUs in use, listed at most `max_age_s` (default `ttl_s`) ago; None when
        they cannot be listed: kube-scheduler then places groups alone."""
        return await self._cached("allocation", lambda: self._list_allocation(client), max_age_s)

    def age_s(self, what: str = "allocation") -> float:
        hit = self._cache.get(what)
        return float("inf") if hit is None else self.clock() - hit[0]

    async def _list_allocation(self, client: KubeClient) -> placement.Allocation | None:
        started = self.clock()
        nodes = await self.nodes(client)
        if nodes is None:
            return None
        self.lists["pods"] += 1
        alloc = placement.Allocation(nodes=list(nodes.values()))
        try:
            async for items in list_pages(
                client, "/api/v1/pods", page_size=self.page_size, field_selector=LIVE_PODS
            ):
                alloc.add_pods(items)
        except ApiError as exc:
            self._warn_once("pods", f"placement skipped (cannot list pods): {exc}")
            return None
        # Pods created before this listing started are in it now.
        self.reservations = [r for r in self.reservations if r.settled_at is None or r.settled_at >= started]
        return alloc

    def free(
        self,
        alloc: placement.Allocation,
        *,
        key: str,
        selector: dict[str, str],
        gpus: int,
        tolerations: Any = (),
        other: Mapping[str, float] | None = None,
    ) -> dict[str, int]:
        """Free slots per domain, less this operator's placements that the listing does not show yet."""
        reserved: Counter[str] = Counter()
        for r in self.reservations:
            if r.key == key and r.gpus >= gpus:
                reserved[r.domain] += r.nodes
        return alloc.free(
            key=key, selector=selector, gpus=gpus, tolerations=tolerations, reserved=reserved, other=other
        )

    def reserve(self, *, key: str, domain: str, nodes: int, gpus: int) -> Reservation:
        r = Reservation(key, domain, nodes, gpus)
        self.reservations.append(r)
        return r

    def settle(self, r: Reservation) -> None:
        """Creating its pods ended (whole or in part): the next listing that starts shows what exists."""
        r.settled_at = self.clock()

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)
