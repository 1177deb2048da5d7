"""The node agent's pure parts: which pods get a process, at which address."""

import pytest
from sbs.e2e import agent


def make_pod(ip="127.100.0.2", phase="Running", ports=(("http", 30000),), deleting=False):
    meta = {"name": "p", "namespace": "ns", "uid": "u"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "ports": [{"name": n, "containerPort": p} for n, p in ports]}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_first_declared_port_is_used():
    assert agent.pod_port(make_pod(ports=(("a", 1), ("b", 2)))) == 1


def test_named_port_is_used_when_asked():
    assert agent.pod_port(make_pod(ports=(("a", 1), ("b", 2))), port_name="b") == 2


def test_a_pod_without_ports_is_refused_with_its_name():
    with pytest.raises(agent.AgentError, match="ns/p declares no containerPort"):
        agent.pod_port(make_pod(ports=()))


@pytest.mark.parametrize(
    ("pod", "wanted"),
    [
        (make_pod(), True),
        (make_pod(phase="Pending"), False),
        (make_pod(ip=""), False),
        (make_pod(deleting=True), False),
    ],
    ids=["running", "pending", "no-ip", "deleting"],
)
def test_only_running_pods_with_an_ip_get_a_process(pod, wanted):
    assert agent.pod_wants_process(pod) is wanted


@pytest.mark.parametrize(
    ("ip", "ok"), [("127.100.3.4", True), ("10.0.0.5", False), ("::1", True), ("nonsense", False)]
)
def test_only_loopback_ips_are_served(ip, ok):
    assert agent.is_loopback(ip) is ok
