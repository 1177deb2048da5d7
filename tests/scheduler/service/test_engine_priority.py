"""`+prio` policies in the live service: each PD pair carries the dispatch's SGLang `priority`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sbs.scheduler.core.types import Dispatch
from sbs.scheduler.service import upstream
from sbs.scheduler.service.bodies import decode
from sbs.scheduler.service.config_file import build_settings
from sbs.settings import scheduling
from sbs.settings.service import EstimateSettings, LimitsSettings

from tests.scheduler.service.harness import Cluster, Recorder, start_cluster, start_service

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 2}, "priority": 77}
PD = {"rid": "r", "bootstrap_host": "h", "bootstrap_port": 1, "room": 8, "prefill_rank": 0, "decode_rank": 1}


def test_the_live_service_accepts_engine_priority() -> None:
    data = {"scheduler": {"policy": {"type": "eft", "engine_priority": True}}}
    pol = build_settings(data, where="f.yaml").scheduler.policy
    assert isinstance(pol, scheduling.EftPolicy) and pol.name == "eft+prio"


def test_pd_bodies_carry_the_dispatch_priority_on_both_sides() -> None:
    p, d = upstream.pd_bodies({"text": "hi", "priority": 5}, **PD, priority=-42)
    assert p["priority"] == d["priority"] == -42
    p, d = upstream.pd_bodies({"text": "hi", "priority": 5}, **PD)  # no policy priority: the client's
    assert p["priority"] == d["priority"] == 5


def test_engine_prefix_drops_the_client_priority_only_when_the_service_sends_one() -> None:
    body = {"text": "hi", "priority": 5}
    kept = json.loads(upstream.engine_prefix(body) + b"}")
    assert kept["priority"] == 5
    prefix = upstream.engine_prefix(body, own_priority=True)
    p, d = upstream.pd_payloads(prefix, **PD, priority=-9)
    assert json.loads(p)["priority"] == json.loads(d)["priority"] == -9
    raw = json.dumps(body).encode()
    parsed = decode("/generate", raw, EstimateSettings(), LimitsSettings(), own_priority=True)
    assert b"priority" not in parsed.prefix


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=1, decode=1, enable_priority_scheduling=True)
    yield c
    await c.close()


async def test_prio_policy_sends_sbs_key_on_the_wall_clock(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster, scheduler={"policy": {"type": "least_load", "engine_priority": True}})
    try:
        before = datetime.now(UTC).timestamp()
        results = await asyncio.gather(*(svc.post("/generate", GEN) for _ in range(3)))
        assert [s for s, _, _ in results] == [200] * 3
        assert len(rec.bodies) == 3
        for p, d in rec.bodies:
            assert p["priority"] == d["priority"] != 77  # the client's priority is replaced
            key_s = -p["priority"] / 1e6  # arrival + size term, on the wall clock
            assert before - 1 < key_s < before + 1 + scheduling.BatchingSettings().size_priority_max_s
        # the core's priority shifted by one constant (the loop clock → the wall clock)
        disp = svc.dispatcher
        d0 = Dispatch(0, 0, 0, 0, 0, priority=-1_000_000)
        assert (
            disp.engine_priority(d0) - disp.engine_priority(Dispatch(0, 0, 0, 0, 0, priority=0)) == -1_000_000
        )
        assert disp.engine_priority(Dispatch(0, 0, 0, 0, 0)) is None
    finally:
        await svc.close()


async def test_plain_policy_forwards_the_client_priority(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster, policy="least_load")
    try:
        status, _, _ = await svc.post("/generate", GEN)
        assert status == 200
        [(p, d)] = rec.bodies
        assert p["priority"] == d["priority"] == 77
    finally:
        await svc.close()
