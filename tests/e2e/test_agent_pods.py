"""The node agent runs pods as a kubelet would: the operator of `manifests/overlays/dev` under its
ServiceAccount, the scheduler it deploys (config and token from mounted volumes) and the engines;
probes decide Ready, and a killed process is the pod's death, which its controller repairs."""

from __future__ import annotations

import json
import secrets
import signal
import urllib.request
from pathlib import Path

import pytest
from sbs.bench.chaos.cluster import OPERATOR_LABELS, OPERATOR_NS, Stack, pod_ready
from sbs.bench.client import generate_body
from sbs.e2e.control_plane import ControlPlane

pytestmark = pytest.mark.e2e


def _generate(url: str) -> dict:
    body = json.dumps({**generate_body(1, 64, 4), "stream": False}).encode()
    req = urllib.request.Request(f"{url}/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        return json.load(resp)


def test_operator_scheduler_and_engines_run_as_pods(control_plane: ControlPlane, tmp_path: Path) -> None:
    stack = Stack(control_plane, f"pods-{secrets.token_hex(3)}", tmp_path, time_factor=0.05)
    try:
        stack.start()
        assert stack.agent is not None
        # The operator's in-cluster token is a TokenRequest bound to its pod, read from the mapped
        # ServiceAccount directory; the scheduler found the engines the same way, with its own token.
        op = stack.operator_pod()
        assert op is not None and pod_ready(op)
        (url,) = stack.scheduler_urls()
        assert _generate(url)["meta_info"]["completion_tokens"] == 4

        # Killing the operator's process is its pod's death: Failed, then replaced by the Deployment,
        # whose new pod the agent starts and whose readiness probe it runs.
        stack.signal_pod(op, signal.SIGKILL)
        uid = op["metadata"]["uid"]
        stack.wait(
            lambda: any(p["metadata"]["uid"] == uid and p["status"].get("phase") == "Failed"
                        for p in stack.pods(OPERATOR_LABELS, OPERATOR_NS)),
            "the killed operator pod Failed",
        )  # fmt: skip
        new = stack.wait(
            lambda: [
                p for p in stack.ready_pods(OPERATOR_NS, OPERATOR_LABELS) if p["metadata"]["uid"] != uid
            ],
            "a new operator pod Ready",
        )[0]
        assert new["metadata"]["name"] != op["metadata"]["name"]

        # The new operator reconciles: a scale-down converges.
        patch = {"spec": {"decode": {"groups": 1}}}
        stack.kube.patch(f"/apis/sbs.dev/v1alpha1/namespaces/{stack.namespace}/sbsdeployments/chaos", patch)
        stack.shape = type(stack.shape)(decode_groups=1)
        stack.wait_converged(120)
        assert stack.agent.errors == []
    finally:
        stack.stop()
