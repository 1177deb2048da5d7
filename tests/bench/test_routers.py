"""sglang-router 0.3.2 and SMG 1.13.0 from PyPI route PD requests to emulated engines.

The router environment is built on first use (cached in ~/.cache/sbs-routers); a build failure
fails the test with pip's output.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from sbs.bench import procs, routers, systems
from sbs.bench.client import generate_body
from sbs.bench.emulated_cluster import BenchCluster

CLUSTER = BenchCluster(prefill_instances=2, prefill_dp=2, decode_instances=1, decode_dp=2)


def test_router_env_builds_with_both_routers() -> None:
    env = routers.ensure_routers()  # RouterEnvError (with pip's output) fails the test
    assert env.versions() == {"sglang-router": "0.3.2", "smg": "1.13.0"}
    assert env.python.exists()


async def _stream(http: aiohttp.ClientSession, url: str, i: int) -> list[bytes]:
    async with http.post(f"{url}/generate", json=generate_body(1000 + i, 40 + 30 * i, 5)) as resp:
        assert resp.status == 200, await resp.text()
        events = [line async for line in resp.content if line.startswith(b"data:")]
    return events


@pytest.mark.parametrize("system", ["sglang-router", "smg", "sglang-router+delayer"])
async def test_router_streams_pd_requests_from_emulated_engines(system: str, tmp_path: Path) -> None:
    (spec,) = systems.parse_systems(system)
    router = system.partition("+")[0]
    with procs.ProcGroup() as group:
        eng = await systems.start_engines(
            group, CLUSTER, time_factor=0.02, stream_interval=1, log_dir=tmp_path,
            prefill_flags=spec.prefill_flags,
        )  # fmt: skip
        prefill_argvs = [a for a in eng.argv if "prefill" in a]
        assert all(("--enable-prefill-delayer" in a) == system.endswith("+delayer") for a in prefill_argvs)
        running = await systems.start_system(group, spec, eng, CLUSTER, time_factor=0.02, log_dir=tmp_path)
        assert "--pd-disaggregation" in running.argv
        assert running.argv[running.argv.index("--policy") + 1] == systems.DEFAULT_ROUTER_POLICY[router]
        assert ("--dp-aware" in running.argv) == (router == "smg")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for i in range(4):
                events = await _stream(http, running.url, i)
                assert events[-1].strip() == b"data: [DONE]"
                assert b'"error"' not in b"".join(events)
                assert b'"completion_tokens":5' in events[-2]
