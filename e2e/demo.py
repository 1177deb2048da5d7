"""`make demo-operator`: the operator's main job on the embedded default cluster.

Starts (or reuses) the local control plane with its 64 fake H800 nodes, installs the generated
CRDs, runs `sbs-operator run` as a local process, applies the DeepSeek-V3 sample and follows it to
Ready, then prints `kubectl get sbsd`.

With `--kueue`, Kueue (e2e/kueue.py) starts first and the namespace gets the LocalQueue `sbs` of a
ClusterQueue holding every GPU of the cluster, so the operator runs its pods through Kueue. Kueue
lives as long as the operator process: both stop when the demo ends, while the cluster, the queues
and the pods stay. Pods Kueue manages keep its finalizer until Kueue runs again (the next
`demo-operator --kueue`), so delete them, or the namespace, with Kueue running.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml
from sbs.e2e import crds, kueue, nodes
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


def start_kueue(plane: ControlPlane, namespace: str) -> kueue.Kueue:
    """Kueue on `plane`, with a queue for `namespace` whose quota is every GPU of the cluster."""
    running = kueue.Kueue(plane).start()
    try:
        gpus = sum(int(n["status"]["allocatable"].get(nodes.GPU_RESOURCE, 0))
                   for n in plane.kube.get("/api/v1/nodes")["items"])  # fmt: skip
        queues = kueue.install_queues(plane.kube, namespace, name=f"sbs-{namespace}", gpus=gpus)
    except BaseException:
        running.stop()
        raise
    click.echo(f"kueue: webhooks at {running.url}, log {running.log_path}; LocalQueue {namespace}/"
               f"{queues.local_queue} -> ClusterQueue {queues.cluster_queue} ({gpus} GPUs)")  # fmt: skip
    return running


def run_demo(
    plane: ControlPlane,
    log_dir: Path,
    namespace: str = "default",
    timeout_s: float = 120,
    *,
    use_kueue: bool = False,
) -> int:
    """The demo; with `use_kueue`, Kueue runs for as long as the operator does (see `start_kueue`)."""
    client = plane.kube
    documents = crds.crd_documents([REPO / "crds"])
    crds.install_crds(client, documents, check=plane.check)
    with contextlib.ExitStack() as stack:
        if use_kueue:
            stack.callback(start_kueue(plane, namespace).stop)
        return _operator_demo(plane, log_dir, namespace, timeout_s)


def _operator_demo(plane: ControlPlane, log_dir: Path, namespace: str, timeout_s: float) -> int:
    client = plane.kube
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
