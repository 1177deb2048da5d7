"""The operator's runtime without an API server: reconciles cancelled when leadership lapses, loops
that survive any error, the liveness probe over every loop, and kopf's server-side selectors."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import kopf
import pytest
from kopf._cogs.structs import references
from sbs.kube import labels
from sbs.operator import handlers, reconciler, supervision
from sbs.operator.autoscaling.controller import Autoscaler
from sbs.operator.config import OperatorConfig
from sbs.operator.leader import LeaseElector
from sbs.operator.work_queue import WorkQueue


class FakeClient:
    """Lists SBSDeployments (or raises `fail_with`); counts nothing else."""

    def __init__(self) -> None:
        self.fail_with: BaseException | None = None
        self.lists = 0
        self.writes: Counter[str] = Counter()

    def fork(self) -> FakeClient:
        return self

    async def list(self, path: str, **_: Any) -> list[dict[str, Any]]:
        self.lists += 1
        if self.fail_with is not None:
            raise self.fail_with
        return [{"metadata": {"namespace": "ns", "name": "d"}}]

    async def get_or_none(self, path: str) -> Any:
        return None


def leading(elector: LeaseElector, seconds: float) -> None:
    """Make `elector` the leader for `seconds` more (as if it had just renewed)."""
    elector._renewed_at = elector.clock() - elector.renew_deadline_s + seconds


def queue(**cfg: Any) -> tuple[WorkQueue, FakeClient]:
    client = FakeClient()
    elector = LeaseElector(client, "ns", "lease", "me")  # type: ignore[arg-type]
    return WorkQueue(client, OperatorConfig(**cfg), elector), client  # type: ignore[arg-type]


def test_a_reconcile_running_when_leadership_lapses_is_cancelled_and_no_new_one_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[str, str]] = []
    cancelled = asyncio.Event()

    async def slow_reconcile(client: Any, namespace: str, name: str, now: float, **_: Any) -> None:
        started.append((namespace, name))
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(reconciler, "reconcile", slow_reconcile)

    async def scenario() -> None:
        work, _ = queue(workers=1)
        leading(work.elector, 0.5)
        work.start()
        work.enqueue("ns", "d")
        async with asyncio.timeout(30):
            await cancelled.wait()  # the lease lapsed half a second in; the reconcile was cancelled
            while work.running:
                await asyncio.sleep(0.01)
        work.enqueue("ns", "d")  # a new event while not leading: no reconcile starts
        async with asyncio.timeout(30):
            while work.queued:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert started == [("ns", "d")]
        assert work.problems() == []
        await work.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("error", [aiohttp.ClientPayloadError("truncated body"), RuntimeError("bug")])
def test_the_resync_survives_any_error_and_the_probe_reports_it_stalled(error: BaseException) -> None:
    async def scenario() -> None:
        work, client = queue(resync_s=0.01, stale_after_s=0.3)
        client.fail_with = error
        work.start()
        resync = work.tasks[-1]
        async with asyncio.timeout(30):
            while client.lists < 4 and not resync.done():
                await asyncio.sleep(0.01)
        assert not resync.done() and work.resync_health.failures >= 3
        async with asyncio.timeout(30):
            while not work.problems():
                await asyncio.sleep(0.05)
        assert work.problems() == [f"resync: no successful round for {work.resync_health.age_s:.0f} s"]
        with pytest.raises(kopf.PermanentError, match="resync: no successful round"):
            handlers.liveness(work, [])
        client.fail_with = None
        async with asyncio.timeout(30):
            while work.problems():
                await asyncio.sleep(0.01)
        assert handlers.liveness(work, [])["queue"] >= 0
        await work.stop()

    asyncio.run(scenario())


def test_the_probe_fails_when_the_elector_died_even_though_the_resync_is_fresh() -> None:
    """The old probe read only the resync's age: an elector that died left it green while nothing
    was reconciled any more."""

    async def scenario() -> None:
        work, _ = queue()

        async def dies() -> None:
            raise aiohttp.ClientPayloadError("Response payload is not completed")

        task = supervision.start(work.elector.health, dies())
        with pytest.raises(aiohttp.ClientPayloadError):
            await task
        with pytest.raises(kopf.PermanentError, match="leader election stopped: ClientPayloadError"):
            handlers.liveness(work, [work.elector.health])

    asyncio.run(scenario())


def test_the_probe_fails_when_the_elector_stalls() -> None:
    work, _ = queue()
    health = work.elector.health
    health.last_progress -= health.stale_after_s + 1
    with pytest.raises(kopf.PermanentError, match="leader election: no successful round"):
        handlers.liveness(work, [health])


def test_a_dead_worker_fails_the_probe() -> None:
    async def scenario() -> None:
        work, _ = queue(workers=2)
        work.start()
        work.tasks[0].cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert work.problems() == ["worker 0 stopped"]
        await work.stop()

    asyncio.run(scenario())


def test_the_autoscaler_survives_any_error_in_a_round() -> None:
    async def scenario() -> None:
        ticks = 0

        class Broken(Autoscaler):
            async def tick(self, mono: float) -> None:
                nonlocal ticks
                ticks += 1
                raise aiohttp.ClientPayloadError("truncated") if ticks % 2 else KeyError("status")

        scaler = Broken(FakeClient(), lambda: True, tick_s=0.001)  # type: ignore[arg-type]
        task = supervision.start(scaler.health, scaler.run())
        async with asyncio.timeout(30):
            while ticks < 4 and not task.done():
                await asyncio.sleep(0.01)
        assert not task.done() and scaler.health.problem() is None  # rounds complete: not stuck
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_kopf_watches_pods_and_deployments_through_a_server_side_label_selector() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings, OperatorConfig())
    selectors = settings.watching.label_selectors

    def selector(group: str, plural: str) -> list[str]:
        return selectors.collect(references.Resource(group, "v1", plural, namespaced=True))

    assert selector("", "pods") == [f"{labels.COMPONENT}=engine,{labels.DEPLOYMENT}"]
    assert selector("apps", "deployments") == [f"{labels.COMPONENT}=scheduler,{labels.DEPLOYMENT}"]
    assert selector("sbs.dev", "sbsdeployments") == []  # our own kinds: every object is ours


def test_a_reconcile_that_hangs_is_cancelled_after_its_timeout_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def hangs(client: Any, namespace: str, name: str, now: float, **_: Any) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(60)

    monkeypatch.setattr(reconciler, "reconcile", hangs)

    async def scenario() -> None:
        work, _ = queue(workers=1, reconcile_timeout_s=0.2)
        leading(work.elector, 60)
        work.start()
        work.enqueue("ns", "d")
        async with asyncio.timeout(30):
            while ("ns", "d") not in work.timers:  # cancelled at 0.2 s, then a retry is scheduled
                await asyncio.sleep(0.01)
        assert calls >= 1 and work.problems() == []
        assert "reconcile ns/d took over 0 s; cancelled, retrying" in caplog.text
        await work.stop()

    asyncio.run(scenario())
