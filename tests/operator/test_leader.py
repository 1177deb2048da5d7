"""Leader election against an in-memory Lease API: expiry on our own clock (clock skew), the term
counted from before the renewal is sent, errors that never end the elector, and `while_leading`."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import aiohttp
import pytest
from sbs.kube import timestamps
from sbs.kube.client import ApiError
from sbs.operator.leader import HOLDER_POD, LeadershipLost, LeaseElector

WALL = time.time()  # noqa: TID251 (the wall clock the Lease's renewTime is compared against, wrongly)
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class LeaseApi:
    """GET, POST and PUT (compare-and-swap on resourceVersion) of one Lease, in memory."""

    def __init__(self, clock: Clock | None = None, put_takes_s: float = 0.0) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.clock, self.put_takes_s = clock, put_takes_s
        self.fail_with: BaseException | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        """Pods by `namespace/name` (a GET of any other pod is a 404)."""
        self.pod_error: ApiError | None = None

    def hold(self, holder: str, renew_time: float, pod: str | None = None) -> None:
        """Another candidate writes the Lease (with a `renewTime` from its own, skewed, clock), naming
        its pod when it runs in one."""
        spec = {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 0,
                "acquireTime": timestamps.rfc3339_micro(renew_time),
                "renewTime": timestamps.rfc3339_micro(renew_time)}  # fmt: skip
        meta: dict[str, Any] = {"name": "l", "namespace": "ns"}
        if pod:
            meta["annotations"] = {HOLDER_POD: pod}
        self._store({"metadata": meta, "spec": spec})

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = obj
        return copy.deepcopy(obj)

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        if method == "GET":
            if self.lease is None:
                raise ApiError(method, path, 404, "NotFound", "")
            return copy.deepcopy(self.lease)
        if method == "POST":
            if self.lease is not None:
                raise ApiError(method, path, 409, "AlreadyExists", "")
            return self._store(body)
        assert method == "PUT"
        if self.clock is not None:
            self.clock.t += self.put_takes_s  # the request is in flight this long
        if (
            self.lease is None
            or body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]
        ):
            raise ApiError(method, path, 409, "Conflict", "")
        return self._store(body)

    async def get_or_none(self, path: str) -> Any:
        if "/pods/" in path:
            if self.pod_error is not None:
                raise self.pod_error
            _, namespace, _, name = path.removeprefix("/api/v1/").split("/")
            return copy.deepcopy(self.pods.get(f"{namespace}/{name}"))
        return copy.deepcopy(self.lease)


def elector(api: LeaseApi, clock: Clock, **kwargs: Any) -> LeaseElector:
    return LeaseElector(api, "ns", "l", "me", clock=clock, **kwargs)  # type: ignore[arg-type]


def test_a_live_holder_whose_renew_time_lags_our_clock_by_an_hour_is_never_taken_over() -> None:
    """The holder's clock is an hour behind ours: its renewTime always looks expired to our wall
    clock, yet it renews every 2 s. Comparing renewTime with our clock would make two leaders."""
    clock, api = Clock(), LeaseApi()
    me = elector(api, clock)

    async def rounds() -> list[bool]:
        won = []
        for i in range(30):  # a minute of rounds
            api.hold("other", WALL - HOUR + 2 * i)
            won.append(await me.try_acquire())
            clock.t += 2
        return won

    assert not any(asyncio.run(rounds()))
    assert not me.is_leader
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "other"


def test_a_dead_holder_whose_renew_time_is_an_hour_ahead_is_taken_over_after_the_lease_duration() -> None:
    """The holder's clock ran an hour ahead, then it died: its renewTime looks valid for an hour to
    our wall clock. We take over once the record stayed unchanged for 15 s of *our* clock."""
    clock, api = Clock(), LeaseApi()
    api.hold("other", WALL + HOUR)
    me = elector(api, clock)

    async def until_won() -> float:
        first = clock.t
        while not await me.try_acquire():
            clock.t += 1
            assert clock.t - first < 60, "never took over"
        return clock.t - first

    waited = asyncio.run(until_won())
    assert 15 <= waited <= 16
    assert me.is_leader
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "me" and api.lease["spec"]["leaseTransitions"] == 1


@pytest.mark.parametrize(
    ("holder_pod", "phase", "error", "at_once"),
    [
        ("ns/op-1", None, None, True),  # our own pod: the holder was this container's earlier run
        ("ns/op-0", "Failed", None, True),  # its containers stopped
        ("ns/op-0", "Succeeded", None, True),
        ("ns/op-0", "Running", None, False),
        ("ns/op-0", "Pending", None, False),
        ("ns/op-0", None, None, False),  # gone: a force-deleted pod may run on
        ("ns/op-0", "Failed", ApiError("GET", "p", 403, "Forbidden", ""), False),  # cannot tell
        (None, None, None, False),  # a holder outside a pod
        ("op-0", "Failed", None, False),  # not `namespace/name`
    ],
)
def test_a_holder_whose_container_stopped_is_taken_over_at_once(
    holder_pod: str | None, phase: str | None, error: ApiError | None, at_once: bool
) -> None:
    """The holder named its pod on the Lease; it renewed a moment ago, then its container stopped."""
    clock, api = Clock(), LeaseApi()
    api.hold("op-0-1", WALL, pod=holder_pod)
    if phase is not None:
        api.pods["ns/op-0"] = {"status": {"phase": phase}}
    api.pod_error = error
    me = elector(api, clock, pod="ns/op-1")
    assert asyncio.run(me.try_acquire()) is at_once
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == ("me" if at_once else "op-0-1")


def test_the_holder_names_its_pod_on_the_lease_and_only_its_own() -> None:
    clock, api = Clock(), LeaseApi()
    assert asyncio.run(elector(api, clock, pod="ns/op-1").try_acquire())
    assert api.lease is not None and api.lease["metadata"]["annotations"] == {HOLDER_POD: "ns/op-1"}
    api.hold("", 0.0, pod="ns/op-1")  # released by a pod; taken by a candidate outside any pod
    assert asyncio.run(elector(api, clock).try_acquire())
    assert HOLDER_POD not in api.lease["metadata"]["annotations"]


def test_a_released_lease_is_taken_at_once() -> None:
    clock, api = Clock(), LeaseApi()
    api.hold("", 0.0)
    assert asyncio.run(elector(api, clock).try_acquire())


def test_the_term_counts_from_when_the_renewal_was_sent() -> None:
    """A PUT that takes 4 s to come back: our term started before it was sent, so it has 4 s less."""
    clock = Clock()
    api = LeaseApi(clock, put_takes_s=4.0)
    api.hold("me", WALL)
    me = elector(api, clock, renew_deadline_s=10.0)
    assert asyncio.run(me.try_acquire())
    assert me.term_left() == pytest.approx(6.0)
    clock.t += 6.0
    assert not me.is_leader


def test_renew_deadline_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_deadline_s"):
        elector(LeaseApi(), Clock(), duration_s=10, renew_deadline_s=10.0)


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientPayloadError("truncated"),
        aiohttp.ServerDisconnectedError(),
        ValueError("bug"),
        KeyError("x"),
    ],
)
def test_no_error_ends_the_elector_and_it_leads_again_once_the_api_answers(error: BaseException) -> None:
    async def scenario() -> None:
        api = LeaseApi()
        me = LeaseElector(api, "ns", "l", "me", duration_s=3, renew_deadline_s=2.0, renew_s=0.01)  # type: ignore[arg-type]
        api.fail_with = error
        task = asyncio.create_task(me.run())
        async with asyncio.timeout(30):
            while me.health.failures < 3 and not task.done():
                await asyncio.sleep(0.01)
        assert not task.done() and not me.is_leader
        api.fail_with = None
        async with asyncio.timeout(30):
            while not me.is_leader:
                await asyncio.sleep(0.01)
        assert me.health.failures == 0 and me.health.problem() is None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_stalled_elector_fails_its_health() -> None:
    clock = Clock()
    me = elector(LeaseApi(), clock, stale_after_s=120.0)
    assert me.health.problem() is None
    clock.t += 121
    assert me.health.problem() == "leader election: no successful round for 121 s"


def test_while_leading_cancels_the_work_when_the_term_lapses() -> None:
    async def scenario() -> None:
        me = LeaseElector(LeaseApi(), "ns", "l", "me")  # type: ignore[arg-type]
        me._renewed_at = me.clock() - me.renew_deadline_s + 0.3  # 0.3 s of term left, no renewal coming
        cancelled = asyncio.Event()

        async def reconcile() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async with asyncio.timeout(30):
            with pytest.raises(LeadershipLost):
                await me.while_leading(reconcile())
        assert cancelled.is_set()

    asyncio.run(scenario())


def test_while_leading_lets_work_finish_while_the_lease_is_renewed() -> None:
    async def scenario() -> None:
        me = LeaseElector(LeaseApi(), "ns", "l", "me")  # type: ignore[arg-type]
        me._renewed_at = me.clock() - me.renew_deadline_s + 0.2

        async def renew() -> None:
            for _ in range(10):
                me._renewed_at = me.clock() - me.renew_deadline_s + 0.2
                await asyncio.sleep(0.1)

        async def reconcile() -> str:
            await asyncio.sleep(0.6)  # three times the term it had when it started
            return "done"

        renewing = asyncio.create_task(renew())
        assert await me.while_leading(reconcile()) == "done"
        await renewing

    asyncio.run(scenario())
