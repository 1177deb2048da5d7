"""The service's API tokens and the engines' API key (issue 13, "Secure by default"): 401 with
`WWW-Authenticate: Bearer` without a valid token, probes and metrics open, the tokens file re-read when
it changes, no token in logs or metrics; the engines' key sent on every engine call."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sbs.scheduler.service import auth

from tests.scheduler.service.harness import Cluster, Service, start_cluster, start_service

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}}
TOKEN = "tok-4f1b2c9e-canary"
ENGINE_KEY = "engine-key-7d3a-canary"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2)
    yield c
    await c.close()


@pytest.fixture
async def secured(cluster: Cluster, tmp_path: Path) -> AsyncIterator[tuple[Service, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"\n  {TOKEN}  \nsecond-token\n")
    svc = await start_service(cluster, auth={"tokens_file": str(tokens)})
    yield svc, tokens
    await svc.close()


async def get(svc: Service, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with svc.client.get(svc.url + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("path", ["/health", "/readyz", "/metrics", "/openapi.json"])
async def test_probes_metrics_and_the_api_description_stay_open(
    secured: tuple[Service, Path], path: str
) -> None:
    svc, _ = secured
    assert (await get(svc, path))[0] == 200


@pytest.mark.parametrize("path", ["/engines", "/v1/models", "/no/such/route"])
async def test_everything_else_needs_a_token(secured: tuple[Service, Path], path: str) -> None:
    svc, _ = secured
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"X-API-Key": "nope"}):
        status, got, body = await get(svc, path, **headers)
        assert status == 401 and got["WWW-Authenticate"] == "Bearer" and b"invalid_api_key" in body
    assert (await get(svc, path, Authorization=f"Bearer {TOKEN}"))[0] != 401
    assert (await get(svc, path, Authorization="bearer second-token"))[0] != 401
    assert (await get(svc, path, **{"X-API-Key": TOKEN}))[0] != 401


async def test_generation_needs_a_token_and_its_body_is_not_read_without_one(
    secured: tuple[Service, Path],
) -> None:
    svc, _ = secured
    status, _, headers = await svc.post("/generate", {"text": "x" * 900_000})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert svc.metric("sbs_requests_rejected_total", reason="unauthorized") == 1
    assert svc.total("sbs_requests_accepted_total") == 0
    status, _, _ = await svc.post("/generate", GEN, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


async def test_the_tokens_file_is_read_again_when_it_changes(secured: tuple[Service, Path]) -> None:
    svc, tokens = secured
    tokens.write_text("rotated\n")
    async with asyncio.timeout(5):
        while (await get(svc, "/engines", Authorization="Bearer rotated"))[0] == 401:
            await asyncio.sleep(0.1)
    assert (await get(svc, "/engines", Authorization=f"Bearer {TOKEN}"))[0] == 401
    tokens.unlink()  # a Secret being swapped: the last tokens read stay valid meanwhile
    await asyncio.sleep(1.2)
    assert (await get(svc, "/engines", Authorization="Bearer rotated"))[0] == 200


async def test_no_token_leaks_into_logs_or_metrics(
    secured: tuple[Service, Path], caplog: pytest.LogCaptureFixture
) -> None:
    svc, _ = secured
    caplog.set_level(logging.DEBUG)
    await get(svc, "/engines", Authorization="Bearer wrong-canary-token")
    await svc.post("/generate", GEN, headers={"X-API-Key": TOKEN})
    metrics = (await get(svc, "/metrics"))[2].decode()
    for secret in (TOKEN, "wrong-canary-token", "second-token"):
        assert secret not in caplog.text and secret not in metrics


async def test_tokens_are_compared_in_constant_time(
    secured: tuple[Service, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = secured
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert (await get(svc, "/engines", Authorization=f"Bearer {TOKEN}"))[0] == 200
    assert len(calls) == 2  # every accepted token compared, no early exit on the first match


async def test_an_empty_or_missing_tokens_file_refuses_everyone(cluster: Cluster, tmp_path: Path) -> None:
    svc = await start_service(cluster, auth={"tokens_file": str(tmp_path / "missing")})
    try:
        assert (await get(svc, "/engines", Authorization="Bearer "))[0] == 401
        assert (await get(svc, "/health"))[0] == 200
    finally:
        await svc.close()


async def test_the_engines_api_key_is_sent_to_engines_that_want_it(tmp_path: Path) -> None:
    cluster = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2, api_key=ENGINE_KEY)
    key = tmp_path / "engine-key"
    key.write_text(ENGINE_KEY + "\n")
    svc = await start_service(cluster, engines={"api_key_file": str(key)})
    try:
        assert (await svc.post("/generate", GEN))[0] == 200
        assert (await svc.post("/generate", {**GEN, "stream": True}))[0] == 200
        assert (await get(svc, "/v1/models"))[0] == 200
        assert ENGINE_KEY not in (await get(svc, "/metrics"))[2].decode()
        key.write_text("a-wrong-key\n")  # the engines' 401 is the service's fault, not the client's
        async with asyncio.timeout(10):
            while (answer := await svc.post("/generate", GEN))[0] == 200:
                await asyncio.sleep(0.1)
        assert answer[0] == 503 and answer[1]["error"]["retryable"]
    finally:
        await svc.close()
        await cluster.close()


async def test_without_the_engines_key_the_service_stays_unready(tmp_path: Path) -> None:
    cluster = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2, api_key=ENGINE_KEY)
    try:
        with pytest.raises(TimeoutError):
            await start_service(cluster, ready_timeout_s=1.0)  # the engines answer 401: never usable
    finally:
        await cluster.close()
