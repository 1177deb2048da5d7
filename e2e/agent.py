"""The node agent: runs a real process for each fake pod, bound to the pod's loopback IP.

kwok only pretends pods run. For data-plane tests (the scheduler talking to engine emulators)
something must listen where a pod says it is: this agent watches pods matching a label
selector, and for each one that is Running with a pod IP it starts `command` with `{ip}`,
`{port}`, `{name}`, `{namespace}` and `{node}` filled in (also exported as `SBS_POD_IP`,
`SBS_POD_PORT`, `SBS_POD_NAME`, `SBS_POD_NAMESPACE` and `SBS_NODE_NAME`). `{port}` is the
first declared containerPort (or the one called `port_name`). When the pod is deleted, or
stops running, the process group gets SIGTERM, then SIGKILL after `stop_timeout_s`.

Pod IPs outside 127.0.0.0/8 are refused: nothing here may serve or dial off loopback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sbs.e2e.procs import stop_group
from sbs.kube.blocking import Kube, Watch

logger = logging.getLogger(__name__)

Command = Sequence[str] | Callable[[dict], Sequence[str]]


class AgentError(Exception):
    """A pod cannot be run by the agent (no port, or an IP off loopback)."""


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def pod_port(pod: dict, port_name: str | None = None) -> int:
    """The first containerPort of the pod (or the one named `port_name`)."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port_name is None or port.get("name") == port_name:
                return int(port["containerPort"])
    wanted = f"containerPort named {port_name!r}" if port_name else "containerPort"
    meta = pod["metadata"]
    raise AgentError(f"pod {meta.get('namespace')}/{meta['name']} declares no {wanted}")


def pod_wants_process(pod: dict) -> bool:
    """Running, with an IP, and not being deleted."""
    status = pod.get("status", {})
    return (
        not pod["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Running"
        and bool(status.get("podIP"))
    )


@dataclasses.dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        return self.ip, self.port


class NodeAgent:
    """Watches pods matching `selector` and keeps one process per running pod."""

    def __init__(
        self,
        client: Kube,
        *,
        selector: str,
        command: Command,
        log_dir: Path,
        namespace: str | None = None,
        port_name: str | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.kube = client
        self.selector = selector
        self.command = command
        self.log_dir = log_dir
        self.namespace = namespace
        self.port_name = port_name
        self.env = dict(env or {})
        self.stop_timeout_s = stop_timeout_s
        self.processes: dict[str, PodProcess] = {}
        """By pod UID."""
        self.errors: list[str] = []
        """Pods the agent refused or failed to start, one line each."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self._synced = threading.Event()

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods" if self.namespace else "/api/v1/pods"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> NodeAgent:
        """Start watching; returns once the first list has been reconciled."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"node-agent[{self.selector}]", daemon=True)
        self._thread.start()
        if not self._synced.wait(timeout_s):
            self.stop()
            raise AgentError(f"node agent for {self.selector!r} did not list pods in {timeout_s:g} s")
        return self

    def stop(self) -> None:
        """Stop watching and terminate every process this agent started."""
        self._stopping.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            procs = list(self.processes.values())
            self.processes.clear()
        for p in procs:
            self._terminate(p)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def process_for(self, namespace: str, name: str) -> PodProcess | None:
        with self._lock:
            return next(
                (p for p in self.processes.values() if (p.namespace, p.name) == (namespace, name)), None
            )

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                listing = self.kube.get(self._pods_path, labelSelector=self.selector)
                self._resync(listing["items"])
                self._synced.set()
                watch = self.kube.watch(
                    self._pods_path, timeout_s=30, labelSelector=self.selector,
                    resourceVersion=listing["metadata"]["resourceVersion"], allowWatchBookmarks=True,
                )  # fmt: skip
                with self._lock:
                    self._watch = watch
                if self._stopping.is_set():
                    return
                for event in watch:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._reconcile(event["object"])
                    elif event["type"] == "DELETED":
                        self._forget(event["object"]["metadata"]["uid"])
                    elif event["type"] == "ERROR":
                        break  # e.g. 410 Gone: relist
            except Exception as exc:  # keep watching through API hiccups
                if self._stopping.is_set():
                    return
                logger.warning("node agent %s: %s; relisting in 1 s", self.selector, exc)
                self._stopping.wait(1.0)

    def _resync(self, pods: list[dict]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            gone = [uid for uid in self.processes if uid not in seen]
        for uid in gone:
            self._forget(uid)
        for pod in pods:
            self._reconcile(pod)

    def _reconcile(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        if not pod_wants_process(pod):
            self._forget(uid)
            return
        with self._lock:
            if uid in self.processes or self._stopping.is_set():
                return
        try:
            started = self._launch(pod)
        except (AgentError, OSError) as exc:
            message = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}: {exc}"
            if message not in self.errors:
                self.errors.append(message)
                logger.error("node agent: %s", message)
            return
        with self._lock:
            self.processes[uid] = started

    def _forget(self, uid: str) -> None:
        with self._lock:
            p = self.processes.pop(uid, None)
        if p is not None:
            self._terminate(p)

    def _launch(self, pod: dict) -> PodProcess:
        meta, status = pod["metadata"], pod["status"]
        ip = status["podIP"]
        if not is_loopback(ip):
            raise AgentError(f"pod IP {ip} is not in 127.0.0.0/8; the agent serves on loopback only")
        port = pod_port(pod, self.port_name)
        values = {
            "ip": ip,
            "port": str(port),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "node": pod["spec"].get("nodeName", ""),
        }
        argv = (
            list(self.command(pod)) if callable(self.command) else [a.format(**values) for a in self.command]
        )
        env = {
            **os.environ,
            **self.env,
            **{f"SBS_POD_{k.upper()}": v for k, v in values.items() if k != "node"},
        }
        env["SBS_NODE_NAME"] = values["node"]
        log_path = self.log_dir / f"{meta['namespace']}_{meta['name']}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        logger.info("node agent: started pid %d for %s/%s at %s:%d", proc.pid, values["namespace"],
                    values["name"], ip, port)  # fmt: skip
        return PodProcess(meta["namespace"], meta["name"], meta["uid"], ip, port, proc, log_path)

    def _terminate(self, p: PodProcess) -> None:
        stop_group(p.proc, self.stop_timeout_s)
        logger.info("node agent: stopped %s/%s (exit %s)", p.namespace, p.name, p.proc.returncode)
