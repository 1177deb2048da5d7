"""`make demo-operator`: the operator's main job on the embedded default cluster.

Starts (or reuses) the local control plane with its 64 fake H800 nodes, installs the generated
CRDs, runs `sbs-operator run` as a local process, applies the DeepSeek-V3 sample and follows it to
Ready, then prints `kubectl get sbsd`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml
from sbs.e2e import crds
from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.procs import stop_group
from sbs.kube.blocking import Kube

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml"
SBSD = "/apis/sbs.dev/v1alpha1/namespaces/{ns}/sbsdeployments"


def follow(client: Kube, ns: str, name: str, timeout_s: float) -> tuple[str, float]:
    """Print each status change until Ready (or timeout); returns the last phase and the seconds taken."""
    t0 = time.monotonic()
    last = None
    phase = ""
    while time.monotonic() - t0 < timeout_s:
        obj = client.get(SBSD.format(ns=ns) + f"/{name}")
        st = obj.get("status") or {}
        phase = st.get("phase", "")
        line = (phase, (st.get("prefill") or {}).get("summary"), (st.get("decode") or {}).get("summary"),
                (st.get("scheduler") or {}).get("summary"))  # fmt: skip
        if line != last:
            click.echo(f"  {time.monotonic() - t0:5.1f} s  phase={phase or '-'} prefill={line[1]} "
                       f"decode={line[2]} scheduler={line[3]}")  # fmt: skip
            last = line
        if phase == "Ready" and st.get("observedGeneration") == obj["metadata"]["generation"]:
            break
        time.sleep(0.25)
    return phase, time.monotonic() - t0


def run_demo(plane: ControlPlane, log_dir: Path, namespace: str = "default", timeout_s: float = 120) -> int:
    client = plane.kube
    documents = crds.crd_documents([REPO / "crds"])
    crds.install_crds(client, documents, check=plane.check)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "operator.log"
    with log_path.open("ab") as log:
        argv = [sys.executable, "-m", "sbs.operator.cli", "run", "--kubeconfig", str(plane.kubeconfig)]
        op = subprocess.Popen(
            [*argv, "-n", namespace], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        obj = yaml.safe_load(SAMPLE.read_text())
        name = obj["metadata"]["name"]
        obj["metadata"]["namespace"] = namespace
        client.apply(SBSD.format(ns=namespace), obj)
        click.echo(f"applied {SAMPLE.relative_to(REPO)} ({name}); operator log: {log_path}")
        phase, took = follow(client, namespace, name, timeout_s)
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        out = subprocess.run([str(plane.bins.path("kubectl")), "get", "sbsd", "-n", namespace], env=env,
                             capture_output=True, text=True, check=False)  # fmt: skip
        click.echo(out.stdout + out.stderr)
        if phase != "Ready":
            click.echo(f"{name} is {phase or 'not reconciled'} after {took:.0f} s; see {log_path}", err=True)
            return 1
        click.echo(f"{name}: apply -> Ready in {took:.1f} s")
        click.echo(f"the cluster keeps running: export KUBECONFIG={plane.kubeconfig}")
        click.echo("stop it with `make dev-cluster-down`")
        return 0
    finally:
        stop_group(op, 15)
