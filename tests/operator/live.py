"""Shared helpers of the operator's e2e tests: the operator as a process, the sample, waits, and the
scheduler run from the operator's own config against emulated engines."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml
from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.procs import stop_group
from sbs.kube import credentials, labels
from sbs.kube.blocking import Kube
from sbs.kube.client import KubeClient
from sbs.operator import api, child_names, reconciler, scheduler_objects

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml"
DEPS = f"/apis/{api.API_VERSION}/namespaces/{{ns}}/{api.PLURAL}"


class Operator:
    def __init__(self, plane: ControlPlane, namespace: str, log: Path, *extra: str) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbs.operator.cli", "run", "--kubeconfig", str(plane.kubeconfig),
                 "-n", namespace, "--lease-namespace", namespace, "--resync-seconds", "5", *extra],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        stop_group(self.proc, 10)


def sample(**overrides: object) -> dict:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"]["updateStrategy"]["drainSeconds"] = 1
    obj["spec"]["restartPolicy"] = {"backoffSeconds": 0}
    obj["spec"].update(overrides)
    return obj


def get_dep(k: Kube, ns: str, name: str) -> dict:
    return k.get(DEPS.format(ns=ns) + f"/{name}")


def wait_phase(plane: ControlPlane, k: Kube, ns: str, name: str, phase: str, timeout_s: float = 60) -> dict:
    def check() -> dict | None:
        obj = get_dep(k, ns, name)
        st = obj.get("status") or {}
        if st.get("phase") == phase and st.get("observedGeneration") == obj["metadata"]["generation"]:
            return obj
        return None

    return plane.wait(check, f"{ns}/{name} phase {phase}", timeout_s)


def engine_pods(k: Kube, ns: str, name: str) -> list[dict]:
    sel = labels.selector_string(labels.engine_selector(name))
    return k.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=sel)["items"]


def groups_of(pods: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for p in pods:
        out[p["metadata"]["labels"][labels.GROUP_ID]].append(p)
    return out


def kubectl(plane: ControlPlane, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    return subprocess.run(
        [str(plane.bins.path("kubectl")), *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def reconcile_writes(plane: ControlPlane, ns: str, name: str) -> int:
    async def once() -> int:
        async with KubeClient(await credentials.from_kubeconfig(plane.kubeconfig)) as client:
            now = time.time()  # noqa: TID251 (the test is the IO edge)
            result = await reconciler.reconcile(client, ns, name, now, gang_available=False)
            assert result is not None
            return result.writes

    return asyncio.run(once())


def delete_and_wait_gone(plane: ControlPlane, k: Kube, ns: str, name: str) -> None:
    k.delete(DEPS.format(ns=ns) + f"/{name}")
    plane.wait(lambda: not engine_pods(k, ns, name), f"{ns}/{name} engine pods garbage-collected", 60)


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


def start_scheduler(
    plane: ControlPlane, k: Kube, namespace: str, name: str, port: int, tmp_path: Path
) -> subprocess.Popen:
    """`sbs-scheduler run` with the config the operator put in the deployment's ConfigMap, listening
    on `127.0.0.1:port` and watching the engines through `plane`'s API server."""
    cm = k.get(f"/api/v1/namespaces/{namespace}/configmaps/{child_names.scheduler_name(name)}")
    cfg = yaml.safe_load(cm["data"][scheduler_objects.CONFIG_KEY])
    cfg.update(host="127.0.0.1", port=port)
    cfg["engines"]["kubernetes"]["kubeconfig"] = str(plane.kubeconfig)
    cfg_path = tmp_path / "scheduler.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    argv = [str(Path(sys.executable).parent / "sbs-scheduler"), "run", "--config", str(cfg_path)]
    with (tmp_path / "scheduler.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


async def send(url: str, prompt_tokens: int, output_tokens: int) -> tuple[int, str]:
    body = {"model": "deepseek-v3", "prompt": "x" * (4 * prompt_tokens), "max_tokens": output_tokens,
            "stream": True, "ignore_eos": True}  # fmt: skip
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/completions", json=body) as resp:
        text = await resp.text()
        return resp.status, text
