"""The node agent's kubelet pieces without a cluster: `$(VAR)` expansion, mount-path mapping, env
and volume resolution against a fake API, probes and the status patches."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sbs.e2e import agent, kubelet, probes
from sbs.kube.blocking import ApiError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--host $(POD_IP)", "--host 127.100.0.7"),
        ("$(POD_IP):$(PORT)", "127.100.0.7:30000"),
        ("$$(POD_IP)", "$(POD_IP)"),
        ("$(UNKNOWN) stays", "$(UNKNOWN) stays"),
        ("$POD_IP and $(", "$POD_IP and $("),
    ],
)
def test_var_expansion_follows_kubernetes(text: str, expected: str) -> None:
    assert kubelet.expand(text, {"POD_IP": "127.100.0.7", "PORT": "30000"}) == expected


def test_mount_paths_are_mapped_at_path_boundaries_longest_first(tmp_path: Path) -> None:
    mounts = {"/etc/sbs": tmp_path / "a", "/etc/sbs/auth": tmp_path / "b"}
    assert kubelet.map_paths("--config /etc/sbs/config.yaml", mounts) == f"--config {tmp_path}/a/config.yaml"
    assert (
        kubelet.map_paths("tokens_file: /etc/sbs/auth/tokens", mounts) == f"tokens_file: {tmp_path}/b/tokens"
    )
    assert kubelet.map_paths("/etc/sbsx/y", mounts) == "/etc/sbsx/y"
    assert kubelet.map_paths("--dir=/etc/sbs", mounts) == f"--dir={tmp_path}/a"


class FakeKube:
    """The few API calls `prepare` makes: ConfigMaps, Secrets and TokenRequests."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.token_requests: list[tuple[str, dict]] = []

    def get(self, path: str, **_: Any) -> dict:
        if path not in self.objects:
            raise ApiError("GET", path, 404, "NotFound", "not found")
        return self.objects[path]

    def create(self, path: str, body: dict, **_: Any) -> dict:
        self.token_requests.append((path, body))
        return {"status": {"token": "tok-" + body["spec"]["boundObjectRef"]["name"]}}


def _pod(**container: Any) -> dict:
    return {
        "metadata": {"name": "op-1", "namespace": "sbs-system", "uid": "u-1", "labels": {"app": "x"}},
        "spec": {
            "serviceAccountName": "sbs-operator",
            "nodeName": "node-3",
            "containers": [{"name": "c", "image": "img", **container}],
            "volumes": [
                {"name": "config", "configMap": {"name": "cfg"}},
                {"name": "auth", "secret": {"secretName": "auth", "items": [{"key": "t", "path": "tokens"}]}},
                {"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt",
                                                                          "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                                                "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                ]}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
        "status": {"podIP": "127.100.3.4", "phase": "Running"},
    }  # fmt: skip


@pytest.fixture
def fake() -> FakeKube:
    k = FakeKube()
    ns = "/api/v1/namespaces/sbs-system"
    k.objects[f"{ns}/configmaps/cfg"] = {
        "data": {"config.yaml": "auth: {tokens_file: /etc/sbs/auth/tokens}\n"}
    }
    k.objects[f"{ns}/configmaps/kube-root-ca.crt"] = {"data": {"ca.crt": "CA"}}
    k.objects[f"{ns}/configmaps/env"] = {"data": {"LEVEL": "debug"}}
    k.objects[f"{ns}/secrets/auth"] = {"data": {"t": base64.b64encode(b"secret-token").decode()}}
    return k


def test_prepare_resolves_env_volumes_token_and_maps_mount_paths(fake: FakeKube, tmp_path: Path) -> None:
    pod = _pod(
        command=["sbs-scheduler"],
        args=["run", "--config", "/etc/sbs/config/config.yaml", "--ip", "$(MY_IP)"],
        envFrom=[{"configMapRef": {"name": "env"}, "prefix": "X_"}],
        env=[
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "t"}}},
            {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "URL", "value": "http://$(MY_IP):8000"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/sbs/config"},
            {"name": "auth", "mountPath": "/etc/sbs/auth"},
            {"name": "kube-api-access-x", "mountPath": kubelet.SA_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    launch = kubelet.prepare(fake, pod, tmp_path, kubelet.ApiEndpoint("127.0.0.1", 6443))  # type: ignore[arg-type]
    vols = tmp_path / "volumes"
    assert launch.argv == [
        "sbs-scheduler",
        "run",
        "--config",
        f"{vols}/config/config.yaml",
        "--ip",
        "127.100.3.4",
    ]
    assert (vols / "config" / "config.yaml").read_text() == f"auth: {{tokens_file: {vols}/auth/tokens}}\n"
    assert (vols / "auth" / "tokens").read_bytes() == b"secret-token"
    assert launch.service_account_dir == vols / "kube-api-access-x"
    assert (vols / "kube-api-access-x" / "token").read_text() == "tok-op-1"
    assert (vols / "kube-api-access-x" / "ca.crt").read_text() == "CA"
    assert (vols / "kube-api-access-x" / "namespace").read_text() == "sbs-system"
    assert (vols / "tmp").is_dir()
    env = launch.env
    got = (env["X_LEVEL"], env["KEY"], env["URL"], env["NODE"])
    assert got == ("debug", "secret-token", "http://127.100.3.4:8000", "node-3")
    assert "GONE" not in env
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")
    ((path, body),) = fake.token_requests
    assert path == "/api/v1/namespaces/sbs-system/serviceaccounts/sbs-operator/token"
    assert body["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "op-1", "uid": "u-1"}


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"command": ["x"],
          "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "no"}}}]},
         "configMap sbs-system/cfg has no key 'no'"),
        ({"command": ["x"], "volumeMounts": [{"name": "config", "mountPath": "/c", "subPath": "a"}]},
         "subPath is not supported"),
        ({"command": ["x"], "volumeMounts": [{"name": "nope", "mountPath": "/c"}]}, "names no volume"),
        ({}, "the container has no command"),
    ],
)  # fmt: skip
def test_pods_the_agent_cannot_run_say_why(
    fake: FakeKube, tmp_path: Path, container: dict, message: str
) -> None:
    with pytest.raises(kubelet.PodSpecError, match=message):
        kubelet.prepare(fake, _pod(**container), tmp_path, kubelet.ApiEndpoint("127.0.0.1", 1))  # type: ignore[arg-type]


def test_sglang_runs_as_the_emulator_and_other_programs_unchanged() -> None:
    program = agent.sglang_as_emulator(0.05)
    argv = ["python3", "-m", "sglang.launch_server", "--host", "127.1.2.3"]
    assert program({}, argv) == ["sbs-engine", "--host", "127.1.2.3", "--time-factor", "0.05"]
    assert program({}, ["sbs-scheduler", "run"]) == ["sbs-scheduler", "run"]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health() -> Iterator[tuple[type[_Health], int]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probes_gate_started_and_ready_and_liveness_kills(health: tuple[type[_Health], int]) -> None:
    handler, port = health
    container = {
        "name": "c",
        "ports": [{"name": "http", "containerPort": port}],
        "startupProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "readinessProbe": {
            "httpGet": {"path": "/", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1},
    }
    p = probes.Prober(container, "127.0.0.1", 0.0)
    assert (p.started, p.ready) == (False, False)
    assert p.step(0.0) and (p.started, p.ready) == (True, True)  # startup passed, then readiness at once
    handler.status = 503
    assert not p.step(1.0) and p.ready  # one failure of two
    assert p.step(2.0) and not p.ready
    handler.status = 200
    assert p.step(3.0) and p.ready
    container["livenessProbe"]["tcpSocket"]["port"] = 1  # nothing listens there
    assert p.step(4.0) and p.failed == "Liveness probe failed 1 times"


def test_exit_statuses_say_how_the_container_ended() -> None:
    c = {"name": "c", "image": "img"}
    killed = probes.exited_status(c, -9, since="t0")["status"]
    assert killed["phase"] == "Failed"
    assert killed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert {x["type"]: x["status"] for x in killed["conditions"]} == {
        "Ready": "False",
        "ContainersReady": "False",
    }
    assert probes.exited_status(c, 0, since="t0")["status"]["phase"] == "Succeeded"
