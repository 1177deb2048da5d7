"""`make dev-cluster` / `make dev-cluster-down`: a cluster that outlives the command starting it."""

import json
import subprocess
import sys

import pytest
from sbs.e2e import binaries, slots
from sbs.e2e.control_plane import find_clusters
from sbs.kube.blocking import Kube

pytestmark = pytest.mark.e2e


def sbs_e2e(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "sbs.e2e", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_up_prints_a_kubeconfig_that_works_and_down_stops_every_process():
    binaries.find_binaries()  # fails with instructions when they are not built
    name = "cli-test"
    out = sbs_e2e("up", "--name", name, "--nodes", "2")
    try:
        kubeconfig = out.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
        client = Kube.from_kubeconfig(kubeconfig)
        assert len(client.get("/api/v1/nodes")["items"]) == 2
        assert sbs_e2e("kubeconfig", "--name", name).strip() == kubeconfig
        assert "already running" in sbs_e2e("up", "--name", name)  # idempotent
        (plane,) = find_clusters(name)
        pids = dict(json.loads((plane.dir / "state.json").read_text())["pids"])
        assert all(c.alive() for c in plane.components.values())
    finally:
        out = sbs_e2e("down", "--name", name)
    assert f"stopped cluster {name!r}" in out
    assert not any(slots.pid_runs(pid, str(plane.bins.path(n))) for n, pid in pids.items())
    assert not plane.dir.exists()
    assert find_clusters(name) == []
