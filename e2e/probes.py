"""A kubelet's probes and container status for the node agent's processes (standard library only).

`Prober` runs a container's `startupProbe`, `readinessProbe` and `livenessProbe` (`httpGet` and
`tcpSocket`; `exec` probes are not supported and count as passing) on their own periods, thresholds
and initial delays, and says when the container's `started`/`ready` state changed or liveness
failed. `running_status` and `exited_status` are the pod status patches the kubelet would post.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from sbs.kube import timestamps

KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


def now_rfc3339() -> str:
    return timestamps.rfc3339(time.time())  # noqa: TID251 (an API timestamp, as a kubelet writes it)


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"container {container.get('name')!r} has no port named {port!r}")


def check(probe: dict[str, Any], container: dict[str, Any], ip: str) -> bool:
    """One probe attempt against `ip` (always loopback: the agent's pods live there)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{ip}:{resolve_port(container, get['port'])}{get.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                return 200 <= r.status < 400
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400
        except (OSError, ValueError):
            return False
    if "tcpSocket" in probe:
        try:
            with socket.create_connection((ip, resolve_port(container, probe["tcpSocket"]["port"])), timeout):
                return True
        except OSError:
            return False
    return True  # exec and grpc probes are not run


@dataclasses.dataclass
class _Probe:
    spec: dict[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + self.period
        self.successes, self.failures = (self.successes + 1, 0) if ok else (0, self.failures + 1)


class Prober:
    """The probe state of one running container; `step(now)` runs the probes that are due."""

    def __init__(self, container: dict[str, Any], ip: str, started_at: float) -> None:
        self.container, self.ip = container, ip
        self.probes = {
            k: _Probe(container[k], started_at + float(container[k].get("initialDelaySeconds", 0)))
            for k in KINDS
            if k in container
        }
        self.started = "startupProbe" not in self.probes
        self.ready = self.started and "readinessProbe" not in self.probes
        self.failed: str | None = None
        """Why the kubelet would kill the container (a startup or liveness probe failed), once set."""

    def due(self, now: float) -> bool:
        return any(p.next_at <= now for k, p in self.probes.items() if self._active(k))

    def _active(self, kind: str) -> bool:
        return (kind == "startupProbe") != self.started

    def step(self, now: float) -> bool:
        """Run the due probes; True when `started`, `ready` or `failed` changed."""
        before = (self.started, self.ready, self.failed)
        for kind, probe in self.probes.items():
            if not self._active(kind) or probe.next_at > now or self.failed:
                continue
            probe.record(check(probe.spec, self.container, self.ip), now)
            threshold = int(probe.spec.get("failureThreshold", 3))
            if kind == "startupProbe":
                if probe.successes:
                    self.started = True
                    self.ready = "readinessProbe" not in self.probes
                    for k, p in self.probes.items():  # readiness and liveness start now
                        if k != kind:
                            p.next_at = now + float(p.spec.get("initialDelaySeconds", 0))
                elif probe.failures >= threshold:
                    self.failed = f"Startup probe failed {probe.failures} times"
            elif kind == "readinessProbe":
                if probe.successes >= int(probe.spec.get("successThreshold", 1)):
                    self.ready = True
                elif probe.failures >= threshold:
                    self.ready = False
            elif probe.failures >= threshold:
                self.failed = f"Liveness probe failed {probe.failures} times"
        return (self.started, self.ready, self.failed) != before


def _container_status(container: dict[str, Any], *, ready: bool, started: bool, state: dict) -> dict:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": started,
        "restartCount": 0,
        "state": state,
    }


def _conditions(ready: bool, when: str) -> list[dict[str, str]]:
    value = "True" if ready else "False"
    return [{"type": t, "status": value, "lastTransitionTime": when} for t in ("Ready", "ContainersReady")]


def running_status(container: dict[str, Any], *, ready: bool, started: bool, since: str) -> dict:
    """The status patch of a running container (strategic merge: conditions by type)."""
    state = {"running": {"startedAt": since}}
    return {
        "status": {
            "conditions": _conditions(ready, now_rfc3339()),
            "containerStatuses": [_container_status(container, ready=ready, started=started, state=state)],
        }
    }


def exited_status(container: dict[str, Any], returncode: int, *, since: str, message: str = "") -> dict:
    """The status patch of a container that ended: the pod Succeeded (exit 0) or Failed.

    A kubelet restarts a `restartPolicy: Always` container in place; the agent ends the pod instead,
    so its controller (a Deployment's ReplicaSet, the operator) must replace it."""
    code = returncode if returncode >= 0 else 128 - returncode
    reason = "Completed" if code == 0 else "Error"
    terminated = {"exitCode": code, "reason": reason, "startedAt": since, "finishedAt": now_rfc3339()}
    if returncode < 0:
        terminated["signal"] = -returncode
    if message:
        terminated["message"] = message
    status = _container_status(container, ready=False, started=False, state={"terminated": terminated})
    return {
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "message": message or f"container {container['name']} exited with code {code}",
            "conditions": _conditions(False, now_rfc3339()),
            "containerStatuses": [status],
        }
    }
