"""Several scheduler replicas over one emulated cluster: leases in a shared folder, the prefill
instances split between them, handover when a replica stops or stops renewing, forwarding by a
replica that owns nothing (`replicas`, `forwarding`, `docs/scaling.md`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sbs.scheduler.service.replicas import LeaseRecord, Replicas
from sbs.settings.service import ReplicasSettings

from tests.scheduler.service.harness import Cluster, Recorder, Service, start_cluster, start_service
from tests.scheduler.service.test_service import GEN, sse_events

LEASE_S, RENEW_S = 0.8, 0.2


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=2, prefill_dp=4, decode=1, decode_dp=8)
    yield c
    await c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _replicas(cluster: Cluster, folder: Path, names: list[str]) -> list[Service]:
    out: list[Service] = []
    for name in names:
        port = _free_port()
        replicas = {
            "backend": "directory",
            "directory": str(folder),
            "id": name,
            "advertise_url": f"http://127.0.0.1:{port}",
            "lease_duration_s": LEASE_S,
            "renew_interval_s": RENEW_S,
        }
        out.append(await start_service(cluster, port=port, replicas=replicas))
    await _until(lambda: all(len(s.dispatcher.replicas.peers) == len(names) for s in out), "peers seen")
    return out


async def _until(cond: Any, what: str, timeout_s: float = 10.0) -> float:
    t0 = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)
    return time.monotonic() - t0


def _owned(svc: Service) -> set[str]:
    return {e.record.url for p in svc.dispatcher.pools.by_revision.values() for e in p.prefill}


async def _close(services: list[Service]) -> None:
    for s in services:
        await s.close()


async def test_two_replicas_split_the_prefill_instances_and_each_releases_only_to_its_own(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    a, b = await _replicas(cluster, tmp_path, ["a", "b"])
    try:
        everything = {e.url for e in cluster.prefill}
        await _until(lambda: _owned(a) and _owned(b), "both own an instance")
        assert _owned(a) | _owned(b) == everything and not _owned(a) & _owned(b)
        sent = [
            svc.post("/generate", GEN, headers={"X-Request-Id": f"{name}-{i}"})
            for i in range(8)
            for name, svc in (("a", a), ("b", b))
        ]
        assert all(status == 200 for status, _, _ in await asyncio.gather(*sent))
        for name, svc in (("a", a), ("b", b)):
            used = {url.rsplit("/", 1)[0] for rid, url in rec.prefill_urls.items() if rid.startswith(name)}
            assert used == _owned(svc), (name, used)
            await svc.assert_accounted()
    finally:
        await _close([a, b])


async def test_a_replica_that_stops_renewing_loses_its_instances_within_the_lease(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await _replicas(cluster, tmp_path, ["a", "b"])
    try:
        await _until(lambda: _owned(a) and _owned(b), "both own an instance")

        async def frozen(*_: Any) -> None:  # a dead replica: its lease file stays, unchanged
            return None

        a.dispatcher.replicas.store.renew = frozen  # type: ignore[union-attr, method-assign]
        took = await _until(lambda: len(_owned(b)) == 2, "b owns both")
        print(f"\nhandover after a stopped renewing: {took:.2f} s (lease {LEASE_S} s, renew {RENEW_S} s)")
        assert took < LEASE_S + 4 * RENEW_S + 1.0
        status, _, _ = await b.post("/generate", GEN)
        assert status == 200
    finally:
        await _close([a, b])


async def test_a_replica_that_stops_cleanly_hands_over_at_the_next_renewal(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = await _replicas(cluster, tmp_path, ["a", "b"])
    try:
        await _until(lambda: _owned(a) and _owned(b), "both own an instance")
        await a.close()  # gives up its lease
        took = await _until(lambda: len(_owned(b)) == 2, "b owns both")
        assert took < LEASE_S  # not by expiry: the lease is gone
    finally:
        await b.close()


async def test_a_replica_owning_nothing_forwards_to_one_that_owns(cluster: Cluster, tmp_path: Path) -> None:
    services = await _replicas(cluster, tmp_path, ["a", "b", "c"])
    try:
        await _until(lambda: sum(bool(_owned(s)) for s in services) == 2, "two owners")
        idle = next(s for s in services if not _owned(s))
        assert idle.dispatcher.ready()  # it takes requests: the Service may send it any
        status, body, headers = await idle.post("/generate", GEN, headers={"X-Request-Id": "fwd-1"})
        assert status == 200 and headers["X-Request-Id"] == "fwd-1", body
        assert body["meta_info"]["completion_tokens"] == 6
        status, text, _ = await idle.post("/generate", {**GEN, "stream": True})
        assert status == 200 and sse_events(text)[-1] == "[DONE]"
        assert idle.total("sbs_requests_forwarded_total") == 2
        assert idle.total("sbs_requests_accepted_total") == 0  # the owners accepted them
        assert sum(s.total("sbs_requests_accepted_total") for s in services) == 2
    finally:
        await _close(services)


def _replicas_view(clock: list[float], wall: list[float]) -> Replicas:
    settings = ReplicasSettings(
        backend="directory", directory="/unused", lease_duration_s=3, renew_interval_s=1
    )
    return Replicas(
        None,  # type: ignore[arg-type]  # observe() never touches the store
        "me",
        "http://me",
        settings,
        lambda: None,
        clock=lambda: clock[0],
        wall=lambda: wall[0],
    )


def test_a_peer_is_live_while_its_lease_changes_and_gone_after_the_duration_unchanged() -> None:
    clock, wall = [100.0], [5000.0]
    view = _replicas_view(clock, wall)
    assert view.observe([LeaseRecord("p", "http://p", "s1", 5000.0)])
    assert set(view.peers) == {"me", "p"}
    clock[0] += 2.9  # unchanged but within the duration
    assert not view.observe([LeaseRecord("p", "http://p", "s1", 5000.0)])
    clock[0] += 0.2
    assert view.observe([LeaseRecord("p", "http://p", "s1", 5000.0)]) and set(view.peers) == {"me"}
    assert view.observe([LeaseRecord("p", "http://p", "s2", 5003.0)]) and set(view.peers) == {"me", "p"}


def test_a_lease_long_dead_at_first_sight_is_not_a_peer_and_this_replica_always_is() -> None:
    view = _replicas_view([0.0], [5000.0])
    view.observe([LeaseRecord("old", "http://old", "s9", 4000.0), LeaseRecord("me", "http://x", "z", 0.0)])
    assert view.peers == {"me": "http://me"}


def test_a_lease_seen_first_is_as_old_as_its_writer_says_within_the_duration() -> None:
    clock, wall = [100.0], [5000.0]
    view = _replicas_view(clock, wall)
    assert view.observe([LeaseRecord("p", "http://p", "s1", 4997.5)])  # renewed 2.5 s ago: live
    clock[0] += 0.6  # 3.1 s since its renewal, though this replica saw it only 0.6 s ago
    assert view.observe([LeaseRecord("p", "http://p", "s1", 4997.5)]) and view.peers == {"me": "http://me"}
    ahead = _replicas_view([100.0], [4990.0])  # the writer's clock runs 10 s ahead of this one's
    ahead.observe([LeaseRecord("p", "http://p", "s1", 5000.0)])
    assert set(ahead.peers) == {"me", "p"}


class _Leases:
    """An in-memory lease store shared by `Replicas` views (stamps count renewals)."""

    def __init__(self) -> None:
        self.leases: dict[str, LeaseRecord] = {}

    async def renew(self, replica: str, url: str, duration_s: float, wall_s: float) -> None:
        n = int(self.leases[replica].stamp) + 1 if replica in self.leases else 0
        self.leases[replica] = LeaseRecord(replica, url, str(n), wall_s)

    async def list(self) -> list[LeaseRecord]:
        return list(self.leases.values())

    async def release(self, replica: str) -> None:
        self.leases.pop(replica, None)

    async def close(self) -> None:
        pass


async def test_a_newcomer_claims_its_share_only_after_its_peers_have_seen_it() -> None:
    """No instance has two deciders while a replica joins: the newcomer forwards until its second
    renewal, by which time every peer (renewing as often) has dropped the newcomer's share."""
    store, settings = _Leases(), ReplicasSettings(backend="directory", directory="/unused")
    instances = [(f"prefill-{i}", 8) for i in range(4)]

    def replica(name: str) -> Replicas:
        return Replicas(store, name, f"http://{name}", settings, lambda: None, wall=lambda: 0.0)

    a, b = replica("a"), replica("b")
    await a.step()
    assert a.settled and a.owned(instances) == {k for k, _ in instances}  # alone: everything at once
    await b.step()
    assert not b.settled and b.owned(instances) == set() and b.owner_url(instances) == "http://a"
    await a.step()  # a sees b and gives up b's share
    mine, theirs = a.owned(instances), {k for k, _ in instances} - a.owned(instances)
    assert mine and theirs and b.owned(instances) == set()  # b's share has no decider for a moment
    changes = b.changes
    await b.step()
    assert b.settled and b.owned(instances) == theirs and b.changes == changes + 1
