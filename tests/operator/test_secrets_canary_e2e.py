"""Secrets stay in their Secret: a canary value is referenced from an SBSDeployment (a hub token in the
engines' env, the scheduler's API token, the engines' API key) and the whole path runs: the operator,
engines played by the node agent (the key expanded into their command lines as the kubelet does),
the scheduler with its Secret files mounted (as the kubelet would), requests through it. Then every
object of the namespace (every kind the API lists, status and Events included), the operator's and
the scheduler's logs and both `/metrics` are searched for the canary: it must appear only in the
Secret."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sbs.e2e.control_plane import ControlPlane, free_port
from sbs.kube import labels
from sbs.kube.blocking import Kube
from sbs.operator import child_names, scheduler_objects

from tests.operator import live

NAME = "deepseek-v3"
REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kubelet_env(pod: dict[str, Any], secret_data: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet resolves it (field and Secret references)."""
    env: dict[str, str] = {}
    for var in pod["spec"]["containers"][0].get("env", []):
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[var["name"]] = pod["status"]["podIP"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secret_data[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = var.get("value", "")
    return env


def engine_command_with(secret_data: dict[str, dict[str, str]]) -> Callable[[dict[str, Any]], list[str]]:
    def command(pod: dict[str, Any]) -> list[str]:
        env = kubelet_env(pod, secret_data)
        args = [REF.sub(lambda m: env[m[1]], a) for a in pod["spec"]["containers"][0]["args"]]
        return [live.SBS_ENGINE, *args, "--time-factor", str(live.TIME_FACTOR)]

    return command


def scheduler_with_mounts(
    plane: ControlPlane, k: Kube, ns: str, secret_data: dict[str, dict[str, str]], port: int, tmp: Path
) -> subprocess.Popen:
    """`sbs-scheduler run` with the operator's config, its Secret volumes written under `tmp` the way
    the kubelet mounts them (the paths in the config rewritten to there)."""
    name = child_names.scheduler_name(NAME)
    pod = k.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    for volume in pod["volumes"]:
        if "secret" in volume:
            where = tmp / mounts[volume["name"]].lstrip("/")
            where.mkdir(parents=True)
            for item in volume["secret"]["items"]:
                (where / item["path"]).write_text(secret_data[volume["secret"]["secretName"]][item["key"]])
    cm = k.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")["data"][scheduler_objects.CONFIG_KEY]
    cfg = yaml.safe_load(cm.replace("/etc/sbs/", f"{tmp}/etc/sbs/"))
    cfg.update(host="127.0.0.1", port=port)
    cfg["engines"]["kubernetes"]["kubeconfig"] = str(plane.kubeconfig)
    (tmp / "scheduler.yaml").write_text(yaml.safe_dump(cfg))
    argv = [
        str(Path(sys.executable).parent / "sbs-scheduler"),
        "run",
        "--config",
        str(tmp / "scheduler.yaml"),
    ]
    with (tmp / "scheduler.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def http(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def namespace_objects(plane: ControlPlane, ns: str) -> dict[str, str]:
    """Every listable kind of the namespace but Secrets, as JSON text per kind."""
    kinds = live.kubectl(plane, "api-resources", "--namespaced=true", "--verbs=list", "-o", "name").split()
    return {
        kind: live.kubectl(plane, "get", kind, "-n", ns, "-o", "json") for kind in kinds if kind != "secrets"
    }


def test_secret_values_appear_only_in_their_secret(
    control_plane, kube, namespace, operator, node_agent, tmp_path
):
    canary = f"canary-{secrets.token_hex(8)}"
    data = {
        "hub": f"{canary}-hub-token",
        "tokens": f"{canary}-client-token",
        "engine": f"{canary}-engine-key",
    }
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sbs-secrets"}, "stringData": data,
    })  # fmt: skip
    ref = {"name": "sbs-secrets"}
    obj = live.sample(
        prefill={"groups": 1, "nodesPerGroup": 2, "chunkedPrefillSize": 32768},
        decode={"groups": 1, "nodesPerGroup": 2},
    )
    obj["spec"]["engine"] = {
        **obj["spec"]["engine"],
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {**ref, "key": "hub"}}}],
        "apiKeySecretRef": {**ref, "key": "engine"},
    }
    obj["spec"]["scheduler"] = {**obj["spec"]["scheduler"], "auth": {"secretRef": {**ref, "key": "tokens"}}}
    metrics_port = free_port()
    op = operator("--metrics-port", str(metrics_port))
    secret_data = {"sbs-secrets": data}
    engines = node_agent(selector=f"{labels.COMPONENT}={labels.ENGINE}",
                         command=engine_command_with(secret_data), port_name="http")  # fmt: skip
    kube.create(live.DEPS.format(ns=namespace), obj)
    live.wait_phase(control_plane, kube, namespace, NAME, "Ready", 90)

    def engines_up() -> bool:
        leaders = [p for p in engines.processes.values() if p.name.endswith("-0")]
        return len(leaders) == 2 and all(http(f"http://{p.ip}:{p.port}/health")[0] == 200 for p in leaders)

    control_plane.wait(engines_up, f"both engines serving (agent errors: {engines.errors})", 60)

    port = free_port()
    sched = scheduler_with_mounts(control_plane, kube, namespace, secret_data, port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        control_plane.wait(lambda: http(f"{url}/readyz")[0] == 200, "the scheduler ready", 60)
        body = {"model": "deepseek-v3", "prompt": "hello " * 50, "max_tokens": 8, "ignore_eos": True}
        assert http(f"{url}/v1/completions", body=body)[0] == 401
        assert http(f"{url}/v1/completions", token="wrong", body=body)[0] == 401
        status, text = http(f"{url}/v1/completions", token=data["tokens"], body=body)
        assert status == 200, text  # the engines took the scheduler's key
        scheduler_metrics = http(f"{url}/metrics")[1]
    finally:
        sched.terminate()
        sched.wait(10)
    operator_metrics = http(f"http://127.0.0.1:{metrics_port}/metrics")[1]
    op.stop()

    searched = {
        **{f"objects: {k}": v for k, v in namespace_objects(control_plane, namespace).items()},
        "operator log": op.log(),
        "scheduler log": (tmp_path / "scheduler.log").read_text(),
        "operator /metrics": operator_metrics,
        "scheduler /metrics": scheduler_metrics,
    }
    encoded = [base64.b64encode(v.encode()).decode() for v in data.values()]
    leaks = [where for where, text in searched.items() if canary in text or any(e in text for e in encoded)]
    print(f"\nsecret canary: searched {len(searched)} sources ({sum(map(len, searched.values()))} bytes), "
          f"found in {leaks or 'none'}")  # fmt: skip
    assert not leaks, leaks
    assert "sbs-secrets" in searched["objects: sbsdeployments.sbs.dev"]  # the references are there
    stored = kube.get(f"/api/v1/namespaces/{namespace}/secrets/sbs-secrets")["data"]
    assert base64.b64decode(stored["engine"]).decode() == data["engine"]  # the one place it is
