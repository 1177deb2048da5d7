"""`--api-key` as SGLang 0.5.23 checks it (`sglang.srt.utils.auth`, API key only): every route but
`/health*`, `/ready*` and `/metrics*` wants `Authorization: Bearer <key>`, else 401
`{"error": "Unauthorized"}`."""

from __future__ import annotations

import aiohttp
import pytest
from sbs.sim.emulator import cli

from tests.sim.emulator.conftest import Start
from tests.sim.emulator.test_cli import settings


async def status(http: aiohttp.ClientSession, method: str, url: str, **headers: str) -> tuple[int, object]:
    async with http.request(
        method, url, headers=headers, json={"text": "hi"} if method == "POST" else None
    ) as r:
        return r.status, await r.json(content_type=None) if r.content_type == "application/json" else None


@pytest.mark.parametrize("path", ["/health", "/health_generate", "/ready", "/metrics"])
async def test_probes_and_metrics_stay_open(start: Start, http: aiohttp.ClientSession, path: str) -> None:
    engine = await start(mode="decode", api_key="sekrit")
    assert (await status(http, "GET", engine.url + path))[0] == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/loads"),
        ("GET", "/server_info"),
        ("GET", "/v1/models"),
        ("GET", "/ping"),
        ("POST", "/generate"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/abort_request"),
        ("GET", "/no/such/route"),
    ],
)
async def test_everything_else_wants_the_bearer_key(
    start: Start, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    engine = await start(mode="decode", api_key="sekrit")
    url = engine.url + path
    assert await status(http, method, url) == (401, {"error": "Unauthorized"})
    assert (await status(http, method, url, Authorization="Bearer wrong"))[0] == 401
    assert (await status(http, method, url, Authorization="sekrit"))[0] == 401  # no scheme
    assert (await status(http, method, url, **{"X-API-Key": "sekrit"}))[
        0
    ] == 401  # SGLang reads no other header
    for good in ("Bearer sekrit", "bearer sekrit"):
        assert (await status(http, method, url, Authorization=good))[0] != 401


async def test_without_a_key_nothing_is_checked(start: Start, http: aiohttp.ClientSession) -> None:
    engine = await start(mode="decode")
    assert (await status(http, "GET", engine.url + "/v1/loads"))[0] == 200


def test_the_flag_sets_the_key_and_the_launch_command_hides_it() -> None:
    assert settings("--api-key", "sekrit").api_key == "sekrit"
    assert "sekrit" not in repr(settings("--api-key", "sekrit"))
    shown = cli.redacted_command(["sbs-engine", "--api-key", "sekrit", "--port", "1", "--api-key=x2"])
    assert "sekrit" not in shown and "x2" not in shown and "--port 1" in shown
