"""Regenerate tests/packaging/fixtures/*.json: SBSDeployment objects as the operator writes them.

Starts its own e2e control plane, runs `sbs-operator run` and walks the sample through the states
the Argo CD health check and kstatus must read, saving each object as the API server returns it
(less managedFields):

    .venv/bin/python tests/packaging/make_fixtures.py        # make packaging-fixtures, about 40 s

A script, not a module: run from the repository root, `python -m` would put operator/ in front of
the standard library's `operator`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import live  # this folder is sys.path[0]
import yaml
from sbs.e2e import binaries
from sbs.e2e.control_plane import ClusterSettings, ControlPlane


def sample(name: str = "deepseek-v3") -> dict:
    obj = yaml.safe_load(live.SAMPLE.read_text())
    obj["metadata"]["name"] = name
    return obj


def main() -> int:
    out: dict[str, dict] = {}
    settings = ClusterSettings(crd_paths=(live.REPO / "crds",))
    with ControlPlane(binaries.find_binaries(), settings, name="fixtures") as plane, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        k = plane.kube
        ns = "fixtures"
        k.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        args = ("-n", ns, "--lease-namespace", ns)
        op = live.OperatorProcess(plane.kubeconfig, Path(tmp) / "operator.log", *args)
        try:
            out["created-no-status"] = k.create(live.DEPS.format(ns=ns), sample())
            out["progressing-create"] = live.wait_dep(
                plane, k, ns, "deepseek-v3", live.phase_is("Progressing"), "first Progressing", 30, 0.01
            )
            out["ready"] = live.wait_dep(plane, k, ns, "deepseek-v3", live.phase_is("Ready"), "Ready")
            patch = {"spec": {"engine": {"image": "lmsysorg/sglang:v0.5.24"}}}
            k.patch(live.DEPS.format(ns=ns) + "/deepseek-v3", patch)
            out["progressing-rolling-update"] = live.wait_dep(
                plane, k, ns, "deepseek-v3", live.phase_is("Progressing"), "rolling update"
            )
            op.stop()
            k.patch(live.DEPS.format(ns=ns) + "/deepseek-v3", {"spec": {"engine": {"image": "x/y:z"}}})
            out["stale-generation"] = live.get_dep(k, ns, "deepseek-v3")
            live.delete_deployment(plane, k, ns, "deepseek-v3")
            op = live.OperatorProcess(plane.kubeconfig, Path(tmp) / "operator-2.log", *args)
            too_big = sample("too-big")
            too_big["spec"]["decode"]["groups"] = 8  # 16 + 72 nodes > 64
            k.create(live.DEPS.format(ns=ns), too_big)
            out["degraded-insufficient-gpus"] = live.wait_dep(
                plane, k, ns, "too-big", live.phase_is("Degraded"), "Degraded"
            )
        finally:
            op.stop()
    live.FIXTURES.mkdir(exist_ok=True)
    for name, obj in out.items():
        path = live.FIXTURES / f"{name}.json"
        path.write_text(json.dumps(live.as_fixture(obj), indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(live.REPO)}: phase {(obj.get('status') or {}).get('phase')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
