"""The whole path on the kwok cluster: SBSDeployment → operator → engine pods run by the node agent as
SGLang-compatible emulators with the operator's own command lines → the scheduler (the operator's
ConfigMap, run as a local process) discovering the leaders through the API → a trace slice sent
through it, every request completed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml
from sbs.e2e import agent, cluster, kube
from sbs.operator import naming, scheduler_objects
from sbs.sim.loaders import azure

from tests.operator.test_operator_e2e import DEPS, Operator, engine_pods, operator, sample, wait_phase

__all__ = ["operator"]  # the fixture, imported for this module

AZURE = (
    Path(__file__).resolve().parents[3] / "shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
)
TIME_FACTOR = 0.05
SBS_ENGINE = shutil.which("sbs-engine", path=str(Path(sys.executable).parent)) or "sbs-engine"


def engine_command(pod: dict) -> list[str]:
    """The pod's own SGLang command line, served by the emulator at the pod's IP."""
    c = pod["spec"]["containers"][0]
    args = [a.replace("$(POD_IP)", pod["status"]["podIP"]) for a in c["args"]]
    return [SBS_ENGINE, *args, "--time-factor", str(TIME_FACTOR)]


async def send(url: str, prompt_tokens: int, output_tokens: int) -> tuple[int, str]:
    body = {"model": "deepseek-v3", "prompt": "x" * (4 * prompt_tokens), "max_tokens": output_tokens,
            "stream": True, "ignore_eos": True}  # fmt: skip
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/completions", json=body) as resp:
        text = await resp.text()
        return resp.status, text


def test_trace_slice_through_operator_deployed_scheduler_and_emulated_engines(
    control_plane: cluster.ControlPlane,
    kube: kube.Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
) -> None:
    operator()
    node_agent(selector=f"{naming.COMPONENT}={naming.ENGINE}", command=engine_command, port_name="http")
    obj = sample()
    obj["spec"]["prefill"].update(groups=2, nodesPerGroup=2, chunkedPrefillSize=32768)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=2)
    kube.create(DEPS.format(ns=namespace), obj)
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    assert len(engine_pods(kube, namespace, "deepseek-v3")) == 6

    # the scheduler exactly as the operator configured it, run locally against this cluster
    cm = kube.get(f"/api/v1/namespaces/{namespace}/configmaps/{naming.scheduler_name('deepseek-v3')}")
    cfg = yaml.safe_load(cm["data"][scheduler_objects.CONFIG_KEY])
    port = cluster.free_port()
    cfg.update(host="127.0.0.1", port=port)
    cfg["engines"]["kubernetes"]["kubeconfig"] = str(control_plane.kubeconfig)
    cfg_path = tmp_path / "scheduler.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = (tmp_path / "scheduler.log").open("ab")
    argv = [str(Path(sys.executable).parent / "sbs-scheduler"), "run", "--config", str(cfg_path)]
    sched = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> dict:
            async with aiohttp.ClientSession() as s:
                for _ in range(200):
                    try:
                        async with s.get(f"{url}/readyz") as r:
                            if r.status == 200:
                                return await r.json()
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            raise AssertionError(
                f"scheduler never ready:\n{(tmp_path / 'scheduler.log').read_text()[-3000:]}"
            )

        status = asyncio.run(ready())
        assert len(status["pools"]) == 1  # one serving revision: prefill and decode paired

        trace = azure.load(AZURE)
        reqs = [r for r in trace.requests if r.prompt_tokens <= 4096][:60]
        t0 = reqs[0].arrival_s

        async def replay() -> list[tuple[int, str]]:
            async def one(r) -> tuple[int, str]:  # type: ignore[no-untyped-def]
                await asyncio.sleep((r.arrival_s - t0) * TIME_FACTOR)
                return await send(url, r.prompt_tokens, min(r.output_tokens, 64))

            return await asyncio.gather(*(one(r) for r in reqs))

        start = time.monotonic()
        results = asyncio.run(replay())
        took = time.monotonic() - start
        bad = [(s, t[-300:]) for s, t in results if s != 200 or "data: [DONE]" not in t]
        assert not bad, bad[:3]
        print(
            f"\n{len(reqs)} trace requests through operator-deployed SBS + emulated engines in {took:.1f} s"
        )

        async def counters() -> dict[str, float]:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
                text = await r.text()
            out: dict[str, float] = {}
            for line in text.splitlines():
                for name in ("sbs_requests_accepted_total", "sbs_requests_completed_total"):
                    if line.startswith(name + "{"):
                        out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            return out

        c = asyncio.run(counters())
        assert c["sbs_requests_accepted_total"] == c["sbs_requests_completed_total"] == len(reqs), c
    finally:
        sched.terminate()
        sched.wait(10)
