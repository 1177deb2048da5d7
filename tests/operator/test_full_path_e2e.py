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
from sbs.bench.chaos.cluster import pod_ready, ready_urls
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

SCHEDULER = labels.selector_string(labels.scheduler_selector("deepseek-v3"))
PODS = "/api/v1/namespaces/{ns}/pods"


def _deploy(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    scheduler_replicas: int = 1,
) -> tuple[list[dict], int]:
    """The small sample (2 prefill groups, 1 decode, 2 nodes each) Ready, its engines and scheduler
    pods run by the node agent; returns the scheduler pods once all are Ready, and their port."""
    operator()
    node_agent(
        selector=f"{labels.COMPONENT} in ({labels.ENGINE},{labels.SCHEDULER})",
        command=None,  # each pod's own container: the engines' SGLang command lines, the scheduler's
        program=agent.sglang_as_emulator(TIME_FACTOR),
        port_name="http",
    )
    obj = sample()
    obj["spec"]["prefill"].update(groups=2, nodesPerGroup=2, chunkedPrefillSize=32768)
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=2)
    obj["spec"]["scheduler"]["replicas"] = scheduler_replicas
    kube.create(DEPS.format(ns=namespace), obj)
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    assert len(engine_pods(kube, namespace, "deepseek-v3")) == 6

    def ready_pods() -> list[dict] | None:
        pods = [
            p for p in kube.get(PODS.format(ns=namespace), labelSelector=SCHEDULER)["items"] if pod_ready(p)
        ]
        return pods if len(pods) == scheduler_replicas else None

    pods = control_plane.wait(ready_pods, f"{scheduler_replicas} Ready scheduler pods", 90)
    ports = pods[0]["spec"]["containers"][0]["ports"]
    return pods, next(p["containerPort"] for p in ports if p["name"] == "http")


def test_trace_slice_through_operator_deployed_scheduler_and_emulated_engines(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
) -> None:
    pods_log = tmp_path / "agent"
    # the scheduler as the operator deployed it: its pod, run by the node agent
    (sched_pod,), port = _deploy(control_plane, kube, namespace, operator, node_agent)
    url = ready_urls(kube, namespace, SCHEDULER, port)[0]
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


async def _engines(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/engines") as r:
        return await r.json()


def _owned(url: str) -> list[str]:
    return sorted(k for p in asyncio.run(_engines(url))["pools"] for k in p["prefill"])


def _owned_or_none(url: str) -> list[str] | None:
    """`_owned`, or None while the replica does not answer yet (a replacement starting)."""
    try:
        return _owned(url)
    except (aiohttp.ClientError, OSError, KeyError, ValueError):
        return None


def test_two_scheduler_replicas_split_the_prefill_through_leases_and_take_over_from_a_deleted_one(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
) -> None:
    pods, port = _deploy(control_plane, kube, namespace, operator, node_agent, scheduler_replicas=2)
    urls = ready_urls(kube, namespace, SCHEDULER, port)
    leaders = labels.selector_string(labels.leader_selector("deepseek-v3", "prefill"))
    listed = kube.get(PODS.format(ns=namespace), labelSelector=leaders)["items"]
    prefill = sorted(f"{namespace}/{p['metadata']['name']}" for p in listed)
    assert len(prefill) == 2

    def split() -> list[list[str]] | None:
        owned = [_owned(u) for u in urls]
        return owned if all(owned) and sorted(owned[0] + owned[1]) == prefill else None

    owned = control_plane.wait(split, "the prefill split between the replicas (found through Leases)", 30)
    print(f"\nscheduler replicas own {owned}")
    leases = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")["items"]
    holders = sorted(
        lease["spec"]["holderIdentity"] for lease in leases if "sched" in lease["metadata"]["name"]
    )
    assert holders == sorted(p["metadata"]["name"] for p in pods)

    async def burst(targets: list[str], n: int) -> list[tuple[int, str]]:
        return await asyncio.gather(*(send(targets[i % len(targets)], 200, 8) for i in range(n)))

    results = asyncio.run(burst(urls, 16))
    assert all(s == 200 and "data: [DONE]" in t for s, t in results), results[:2]

    victim = pods[0]
    (survivor,) = [u for u in urls if f"//{victim['status']['podIP']}:" not in u]
    t0 = time.monotonic()
    kube.delete(f"{PODS.format(ns=namespace)}/{victim['metadata']['name']}", gracePeriodSeconds=0)

    def owned_again() -> list[list[str]] | None:
        """The live replicas (the survivor, and the Deployment's replacement once it serves) own every
        prefill instance, each exactly once, the deleted one none."""
        live = [
            u
            for u in ready_urls(kube, namespace, SCHEDULER, port)
            if f"//{victim['status']['podIP']}:" not in u
        ]
        owned = [_owned_or_none(u) for u in live]
        flat = sorted(k for o in owned for k in o or [])
        return owned if flat == prefill else None

    owned = control_plane.wait(owned_again, "every prefill instance owned again by the live replicas", 30)
    took = time.monotonic() - t0
    print(f"every prefill instance owned again {took:.1f} s after a replica's pod was deleted: {owned}")
    assert took < 5.0
    results = asyncio.run(burst([survivor], 8))
    assert all(s == 200 and "data: [DONE]" in t for s, t in results), results[:2]
