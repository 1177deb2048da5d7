"""The node agent runs a real process at a fake pod's loopback IP, and stops it with the pod."""

import ipaddress
import sys
import urllib.request

import pytest
from sbs.e2e import nodes

pytestmark = pytest.mark.e2e


def make_engine_pod(name: str, port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"sbs.dev/emulate": "engine"}},
        "spec": {
            "containers": [
                {
                    "name": "engine",
                    "image": "sglang:fake",
                    "ports": [{"name": "http", "containerPort": port}],
                    "resources": {"limits": {nodes.GPU_RESOURCE: "8"}},
                }
            ]
        },
    }


def http_get(ip: str, port: int) -> str:
    assert ipaddress.ip_address(ip).is_loopback  # never dial off loopback
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=2) as resp:
        return resp.read().decode()


def test_agent_serves_at_the_pod_ip_and_stops_with_the_pod(
    control_plane, kube, namespace, node_agent, tmp_path
):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("engine emulator")
    agent = node_agent(
        selector="sbs.dev/emulate=engine",
        namespace=namespace,
        command=[sys.executable, "-m", "http.server", "--bind", "{ip}", "--directory", str(tmp_path / "www"),
                 "{port}"],
    )  # fmt: skip
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(pods, make_engine_pod("decode-0", 30000))

    proc = control_plane.wait(lambda: agent.process_for(namespace, "decode-0"), "the agent to start decode-0")
    pod = kube.get(f"{pods}/decode-0")
    assert proc.address == (pod["status"]["podIP"], 30000)
    assert control_plane.wait(lambda: http_get(*proc.address), "the emulator to answer") == "engine emulator"

    kube.delete(f"{pods}/decode-0")
    control_plane.wait(lambda: proc.proc.poll() is not None, "the emulator to stop with its pod")
    assert agent.process_for(namespace, "decode-0") is None
    with pytest.raises(OSError):
        http_get(*proc.address)
    assert agent.errors == []


def test_agent_refuses_pods_without_a_port(control_plane, kube, namespace, node_agent):
    agent = node_agent(selector="sbs.dev/emulate=engine", namespace=namespace, command=["true"])
    pod = make_engine_pod("portless", 1)
    del pod["spec"]["containers"][0]["ports"]
    kube.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    control_plane.wait(lambda: agent.errors, "the agent to report the portless pod")
    assert "portless declares no containerPort" in agent.errors[0]
    assert agent.process_for(namespace, "portless") is None
