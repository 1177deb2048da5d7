"""cyclonus, an independent NetworkPolicy engine, as the judge of the operator's NetworkPolicies.

The e2e cluster has no CNI, so nothing enforces a NetworkPolicy there. cyclonus
(github.com/mattfenwick/cyclonus, the upstream SIG Network policy tool) reads policy YAML and answers,
for each connection (source pod and namespace labels, destination, port, protocol), whether the
Kubernetes semantics allow it: `cyclonus analyze --mode query-traffic`.

It is built once per machine with `go install` through the Go module proxy into
`$SBS_TOOLS_CACHE` (else `~/.cache/sbs-tools`)/`cyclonus-<version>/bin`, under a lock, sharing the
e2e binaries' Go caches; a `complete` stamp is written only after `cyclonus --help` runs. About 2.5
minutes on 2 cores the first time, nothing after.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sbs.e2e import binaries, toolcache

VERSION = "v0.5.6"
MODULE = "github.com/mattfenwick/cyclonus/cmd/cyclonus"
BUILD_TIMEOUT_S = 1200


class CyclonusError(RuntimeError):
    """cyclonus could not be built or run, or answered something unexpected."""


def _install(root: Path) -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**binaries.go_env(), "GOBIN": str(root / "bin"), "GOFLAGS": "-buildvcs=false"}
    toolcache.run(
        [go, "install", f"{MODULE}@{VERSION}"],
        f"go install {MODULE}@{VERSION}",
        timeout_s=BUILD_TIMEOUT_S,
        error=CyclonusError,
        env=env,
        cwd=root,
    )
    toolcache.run([root / "bin" / "cyclonus", "--help"], "cyclonus --help", timeout_s=60, error=CyclonusError)
    return f"{MODULE}@{VERSION}\n"


@functools.cache
def ensure() -> Path:
    """The cyclonus binary, built on first use."""
    root = toolcache.cache_root("tools") / f"cyclonus-{VERSION}"
    toolcache.stamped_build(root, _install)
    return root / "bin" / "cyclonus"


@dataclass(frozen=True)
class Peer:
    """A pod as NetworkPolicy sees it (its namespace, with labels, and its labels), or an address
    outside the cluster (`namespace` None)."""

    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"

    def traffic_peer(self) -> dict[str, Any]:
        if self.namespace is None:
            return {"IP": self.ip}
        ns_labels = {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}
        internal = {"PodLabels": self.labels, "NamespaceLabels": ns_labels, "Namespace": self.namespace}
        return {"Internal": internal, "IP": self.ip}


@dataclass(frozen=True)
class Connection:
    source: Peer
    destination: Peer
    port: int
    protocol: str = "TCP"

    def traffic(self) -> dict[str, Any]:
        return {
            "Source": self.source.traffic_peer(),
            "Destination": self.destination.traffic_peer(),
            "ResolvedPort": self.port,
            "ResolvedPortName": "",
            "Protocol": self.protocol,
        }


VERDICT = re.compile(r"\|\s*IS ALLOWED\?\s*\|\s*(TRUE|FALSE)\s*\|")


def allowed(policies: Iterable[dict[str, Any]], connections: list[Connection]) -> list[bool]:
    """Whether each connection is allowed by `policies` (ingress and egress), as cyclonus judges it."""
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        for i, policy in enumerate(policies):
            (policy_dir / f"{i}.yaml").write_text(yaml.safe_dump(policy))
        traffic = Path(tmp) / "traffic.json"
        traffic.write_text(json.dumps([c.traffic() for c in connections]))
        out = subprocess.run(
            [
                str(ensure()),
                "analyze",
                "--mode",
                "query-traffic",
                "--policy-path",
                str(policy_dir),
                "--traffic-path",
                str(traffic),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if out.returncode != 0:
        raise CyclonusError(f"cyclonus exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    verdicts = [m == "TRUE" for m in VERDICT.findall(out.stdout)]
    if len(verdicts) != len(connections):
        raise CyclonusError(
            f"{len(verdicts)} verdicts for {len(connections)} connections:\n{out.stdout[-3000:]}"
        )
    return verdicts
