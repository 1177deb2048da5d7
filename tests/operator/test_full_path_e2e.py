"""The whole path on the kwok cluster: SBSDeployment → operator → engine pods run by the node agent as
SGLang-compatible emulators with the operator's own command lines → the scheduler as the pod of the
operator's own Deployment (the node agent runs its container command and args, mounts its ConfigMap
and a projected ServiceAccount token: in-cluster configuration and the operator's RBAC) discovering
the leaders through the API → a trace slice sent through it, every request completed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from sbs.bench.chaos.cluster import ready_urls
from sbs.e2e import agent
from sbs.e2e.control_plane import ControlPlane
from sbs.kube import labels
from sbs.kube.blocking import Kube
from sbs.sim.loaders import azure

from tests.operator.live import (
    AZURE,
    DEPS,
    TIME_FACTOR,
    Operator,
    engine_pods,
    sample,
    send,
    wait_phase,
)


def test_trace_slice_through_operator_deployed_scheduler_and_emulated_engines(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
) -> None:
    operator()
    pods_log = tmp_path / "agent"
    node_agent(
        selector=f"{labels.COMPONENT} in ({labels.ENGINE},{labels.SCHEDULER})",
        command=None,  # each pod's own container: the engines' SGLang command lines, the scheduler's
        program=agent.sglang_as_emulator(TIME_FACTOR),
        port_name="http",
    )
    obj = sample()
    obj["spec"]["prefill"].update(groups=2, nodesPerGroup=2, chunkedPrefillSize=32768)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=2)
    kube.create(DEPS.format(ns=namespace), obj)
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    assert len(engine_pods(kube, namespace, "deepseek-v3")) == 6

    # the scheduler as the operator deployed it: its pod, run by the node agent
    selector = labels.selector_string(labels.scheduler_selector("deepseek-v3"))
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    sched_pod = control_plane.wait(
        lambda: next(iter(kube.get(pods_path, labelSelector=selector)["items"]), None),
        "the scheduler pod",
        60,
    )
    ports = sched_pod["spec"]["containers"][0]["ports"]
    port = next(p["containerPort"] for p in ports if p["name"] == "http")
    url = control_plane.wait(lambda: ready_urls(kube, namespace, selector, port), "a Ready scheduler", 60)[0]
    sched_log = pods_log / f"{namespace}_{sched_pod['metadata']['name']}.log"
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
            raise AssertionError(f"scheduler never ready:\n{sched_log.read_text()[-3000:]}")

        status = asyncio.run(ready())
        assert len(status["pools"]) == 1  # one serving revision: prefill and decode paired
        assert "(in-cluster)" in sched_log.read_text(), sched_log.read_text()[-3000:]

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
        print(f"\n{len(reqs)} trace requests through the scheduler pod + emulated engines in {took:.1f} s")

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
        print(f"scheduler pod log: {sched_log}")
