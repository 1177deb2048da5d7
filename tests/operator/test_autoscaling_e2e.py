"""Autoscaling on the real control plane: per-role /scale targets (HPA, kubectl scale), ownership, and
an SBSAutoscalingPolicy driven by a live scheduler's metrics (burst up, quiet down, budget held)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
from sbs.e2e import agent
from sbs.e2e.control_plane import ControlPlane, free_port
from sbs.kube import labels
from sbs.kube.blocking import Kube

from tests.operator.live import DEPS, Operator, engine_command, kubectl, sample, start_scheduler, wait_phase

SCALERS = "/apis/sbs.dev/v1alpha1/namespaces/{ns}/sbsrolescalers"
POLICIES = "/apis/sbs.dev/v1alpha1/sbsautoscalingpolicies"


def small(prefill_owner: str = "Static", decode_owner: str = "Static") -> dict:
    obj = sample()
    obj["spec"]["prefill"].update(
        groups=1, nodesPerGroup=2, chunkedPrefillSize=32768, groupsOwner=prefill_owner
    )
    obj["spec"]["decode"].update(groups=1, nodesPerGroup=2, groupsOwner=decode_owner)
    return obj


def role_status(k: Kube, ns: str, role: str) -> dict:
    return (k.get(DEPS.format(ns=ns) + "/deepseek-v3").get("status") or {}).get(role) or {}


def test_role_scale_targets_follow_their_owner_and_hpa_drives_an_external_role(
    control_plane: ControlPlane, kube: Kube, namespace: str, operator: Callable[..., Operator]
) -> None:
    operator()
    kube.create(DEPS.format(ns=namespace), small(prefill_owner="External"))
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    scalers = SCALERS.format(ns=namespace)
    pre = kube.get(f"{scalers}/deepseek-v3-prefill")
    assert pre["spec"] == {"deployment": "deepseek-v3", "role": "prefill", "replicas": 1}
    assert (
        pre["status"]["selector"].count("sbs.dev/leader=true") == 1 and pre["status"]["owner"] == "External"
    )
    scale = kube.get(f"{scalers}/deepseek-v3-prefill/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1

    # a Static role's scaler is the spec's mirror: `kubectl scale` on it is undone
    kubectl(control_plane, "scale", "-n", namespace, "sbsrs/deepseek-v3-decode", "--replicas=3")
    control_plane.wait(
        lambda: kube.get(f"{scalers}/deepseek-v3-decode")["spec"]["replicas"] == 1,
        "Static scaler restored",
        30,
    )
    assert role_status(kube, namespace, "decode")["desired"] == 1

    # an HPA targeting the External prefill role's /scale: its minReplicas raises the role to 2 groups
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "prefill"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "sbs.dev/v1alpha1", "kind": "SBSRoleScaler",
                               "name": "deepseek-v3-prefill"},
            "minReplicas": 2,
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80},
            }}],
        },
    }  # fmt: skip
    kube.create(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers", hpa)
    control_plane.wait(
        lambda: role_status(kube, namespace, "prefill").get("ready") == 2,
        "HPA scaled prefill to 2 groups",
        90,
    )
    assert kube.get(f"{scalers}/deepseek-v3-prefill")["spec"]["replicas"] == 2
    dep = wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    assert dep["spec"]["prefill"]["groups"] == 1  # GitOps' field untouched: no fight
    kube.delete(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/prefill")
    kube.delete(DEPS.format(ns=namespace) + "/deepseek-v3")
    control_plane.wait(lambda: not kube.get(scalers)["items"], "scalers garbage-collected", 60)


async def _burst(url: str, path: str, body: dict, n: int, gap_s: float) -> list[int]:
    """`n` streamed requests of `body` to `path`, `gap_s` apart; their statuses."""

    async def one(i: int) -> int:
        await asyncio.sleep(i * gap_s)
        async with aiohttp.ClientSession() as s, s.post(f"{url}{path}", json=body) as r:
            await r.read()
            return r.status

    return await asyncio.gather(*(one(i) for i in range(n)))


@contextlib.contextmanager
def _autoscaled(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
    policy_name: str,
    policy_spec: dict,
) -> Iterator[str]:
    """The small deployment (both roles `External`) Ready under the operator, its scheduler running
    and ready, and an SBSAutoscalingPolicy selecting it; yields the scheduler's URL."""
    operator()
    node_agent(selector=f"{labels.COMPONENT}={labels.ENGINE}", command=engine_command, port_name="http")
    port = free_port()
    obj = small("External", "External")
    obj["metadata"]["labels"] = {"sbs.dev/autoscale": namespace}
    obj["metadata"]["annotations"] = {"sbs.dev/scheduler-metrics-url": f"http://127.0.0.1:{port}/metrics"}
    kube.create(DEPS.format(ns=namespace), obj)
    wait_phase(control_plane, kube, namespace, "deepseek-v3", "Ready")
    sched = start_scheduler(control_plane, kube, namespace, "deepseek-v3", port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    policy = {
        "apiVersion": "sbs.dev/v1alpha1",
        "kind": "SBSAutoscalingPolicy",
        "metadata": {"name": policy_name},
        "spec": {"selector": {"matchLabels": {"sbs.dev/autoscale": namespace}}, **policy_spec},
    }
    try:
        control_plane.wait(lambda: _ready(url), "scheduler ready", 30)
        kube.create(POLICIES, policy)
        yield url
    finally:
        kube.delete(f"{POLICIES}/{policy_name}", missing_ok=True)
        sched.terminate()
        sched.wait(10)
    kube.delete(DEPS.format(ns=namespace) + "/deepseek-v3")


def _decisions(kube: Kube, policy_name: str, heading: str) -> list[dict]:
    """The policy's recorded decisions, printed under `heading`."""
    decisions = kube.get(f"{POLICIES}/{policy_name}")["status"]["decisions"]
    print(f"\nautoscaling decisions{heading}:")
    for d in decisions:
        print(f"  {d['time']} prefill {d['prefillFrom']}->{d['prefillTo']} "
              f"decode {d['decodeFrom']}->{d['decodeTo']}: {d['reason']}")  # fmt: skip
    return decisions


def test_policy_scales_prefill_up_on_a_burst_within_budget_and_down_after_quiet(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
) -> None:
    policy_name = f"burst-{namespace}"[:63]
    budget = 48  # 1 prefill + 1 decode group = 32 GPUs; a second prefill group fits, a third does not
    spec = {
        "prefill": {"minGroups": 1, "maxGroups": 4},
        "decode": {"minGroups": 1, "maxGroups": 2},
        "gpuBudget": budget,
        "ratio": {"minPrefillPerDecode": 0.5, "maxPrefillPerDecode": 4},
        # wall seconds, with engines 20× faster than real ones; so small that any burst asks for
        # the full step (+2 groups), which the budget must cap at +1
        "slo": {"ttftP90Seconds": 0.001},
        "signals": {"queueWaitP90Seconds": 0.001},
        "behaviour": {"syncPeriodSeconds": 2, "scaleUpStabilizationSeconds": 0,
                      "scaleDownStabilizationSeconds": 6, "cooldownSeconds": 6, "maxStepGroups": 2},
    }  # fmt: skip
    fixtures = (control_plane, kube, namespace, operator, node_agent, tmp_path)
    with _autoscaled(*fixtures, policy_name, spec) as url:
        t0 = time.monotonic()
        body = {"model": "deepseek-v3", "prompt": "y" * (4 * 4000), "max_tokens": 8, "stream": True}
        statuses = asyncio.run(_burst(url, "/v1/completions", body, 150, 0.02))
        assert set(statuses) == {200}
        control_plane.wait(
            lambda: role_status(kube, namespace, "prefill").get("ready") == 2,
            "burst: prefill up to 2 groups",
            60,
        )
        up_at = time.monotonic() - t0
        control_plane.wait(
            lambda: role_status(kube, namespace, "prefill").get("desired") == 1,
            "quiet: prefill back to 1",
            60,
        )
        down_at = time.monotonic() - t0
        decisions = _decisions(
            kube, policy_name, f" (prefill up after {up_at:.1f} s, down after {down_at:.1f} s)"
        )
        ups = [d for d in decisions if d["prefillTo"] > d["prefillFrom"]]
        downs = [d for d in decisions if d["prefillTo"] < d["prefillFrom"]]
        assert ups and downs and decisions.index(ups[0]) < decisions.index(downs[-1])
        assert max(d["prefillTo"] for d in decisions) == 2  # the budget held the burst at 2 prefill groups
        assert all(d["prefillTo"] * 16 + d["decodeTo"] * 16 <= budget for d in decisions)
        assert "GPU budget" in ups[0]["reason"]  # the signals asked for more than the budget allows


def _ready(url: str) -> bool:
    async def probe() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    return asyncio.run(probe())


def test_policy_scales_decode_up_on_tpot(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator: Callable[..., Operator],
    node_agent: Callable[..., agent.NodeAgent],
    tmp_path: Path,
) -> None:
    """The scheduler measures TPOT on the streams it relays (`sbs_tpot_seconds`); a policy whose TPOT
    target the decode side misses adds a decode group, while TTFT and queue wait (far within their
    targets) leave prefill alone."""
    policy_name = f"tpot-{namespace}"[:63]
    spec = {
        "prefill": {"minGroups": 1, "maxGroups": 2},
        "decode": {"minGroups": 1, "maxGroups": 2},
        "gpuBudget": 48,
        "ratio": {"minPrefillPerDecode": 0.5, "maxPrefillPerDecode": 4},  # 1 prefill takes 2 decode
        # wall seconds: a TPOT of 1 ms no emulated decode step meets; TTFT and queue wait never bind
        "slo": {"ttftP90Seconds": 600, "tpotP90Seconds": 0.001},
        "signals": {"queueWaitP90Seconds": 600},
        "behaviour": {"syncPeriodSeconds": 2, "scaleUpStabilizationSeconds": 0,
                      "scaleDownStabilizationSeconds": 60, "cooldownSeconds": 60, "maxStepGroups": 1},
    }  # fmt: skip
    fixtures = (control_plane, kube, namespace, operator, node_agent, tmp_path)
    with _autoscaled(*fixtures, policy_name, spec) as url:
        body = {
            "text": "z" * 2000,
            "sampling_params": {"max_new_tokens": 64, "ignore_eos": True},
            "stream": True,
        }
        statuses = asyncio.run(_burst(url, "/generate", body, 60, 0.05))
        assert set(statuses) == {200}
        control_plane.wait(
            lambda: role_status(kube, namespace, "decode").get("desired") == 2, "TPOT: decode up to 2", 60
        )
        decisions = _decisions(kube, policy_name, "")
        up = next(d for d in decisions if d["decodeTo"] > d["decodeFrom"])
        assert "TPOT p90" in up["reason"] and up["prefillTo"] == up["prefillFrom"] == 1, up
