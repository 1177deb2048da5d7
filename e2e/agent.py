"""The node agent: runs a real process for each fake pod, bound to the pod's loopback IP.

kwok only pretends pods run. For data-plane tests (the scheduler talking to engine emulators)
something must listen where a pod says it is: this agent watches pods matching a label
selector, and for each one that is Running with a pod IP it starts `command` with `{ip}`,
`{port}`, `{name}`, `{namespace}` and `{node}` filled in (also exported as `SBS_POD_IP`,
`SBS_POD_PORT`, `SBS_POD_NAME`, `SBS_POD_NAMESPACE` and `SBS_NODE_NAME`). `{port}` is the
first declared containerPort (or the one called `port_name`). When the pod is deleted, or
stops running, the process group gets SIGTERM, then SIGKILL after `stop_timeout_s`.

Without `command`, the agent runs each pod's own container as a kubelet would (`sbs.e2e.kubelet`):
its command and args with `$(VAR)` expanded, its env (literal, `valueFrom`, `envFrom`), its ConfigMap,
Secret and projected volumes (the ServiceAccount token by TokenRequest) as files whose mount paths
are mapped onto a per-pod directory, under `sbs.e2e.pod_shim` (listeners on the pod IP, the
in-cluster ServiceAccount from that directory). `program` may rewrite the resolved argv (an image's
command the host cannot run, e.g. SGLang -> the emulator). The agent then posts the container's
status as a kubelet does: not Ready until its startup and readiness probes pass (`sbs.e2e.probes`),
NotReady when readiness fails, killed when liveness fails, and the pod Failed (Succeeded on exit 0)
when the process ends: kwok only marks pods Running and Ready, once, when they are bound.

Pod IPs outside 127.0.0.0/8 are refused: nothing here may serve or dial off loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sbs.e2e import kubelet, probes
from sbs.e2e.procs import stop_group
from sbs.kube.blocking import ApiError, Kube, Watch
from sbs.operator import sglang_args

logger = logging.getLogger(__name__)

Command = Sequence[str] | Callable[[dict], Sequence[str]]
STATS = "stats.jsonl"
"""In a pod's directory: the shim's asyncio task and thread counts over time (`sbs.e2e.pod_shim`)."""
Program = Callable[[dict, list[str]], Sequence[str]]
"""(pod, the container's resolved argv) -> the argv to run on the host."""


class AgentError(Exception):
    """A pod cannot be run by the agent (no port, or an IP off loopback)."""


def sglang_as_emulator(time_factor: float, *extra: str) -> Program:
    """A `program` for engine pods: SGLang's launcher -> `sbs-engine` with the same arguments (its
    model of the engine, `time_factor` wall seconds per modelled second); other argv unchanged."""
    launch = list(sglang_args.LAUNCH)

    def program(pod: dict, argv: list[str]) -> list[str]:
        if argv[: len(launch)] != launch:
            return argv
        return ["sbs-engine", *argv[len(launch) :], "--time-factor", str(time_factor), *extra]

    return program


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
    node: str = ""
    container: dict | None = None
    """Set in container mode: the agent then posts this container's status."""
    prober: probes.Prober | None = None
    since: str = ""
    stopping: bool = False
    pod_dir: Path | None = None

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
        command: Command | None = None,
        log_dir: Path,
        namespace: str | None = None,
        port_name: str | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout_s: float = 5.0,
        program: Program | None = None,
        api: kubelet.ApiEndpoint | None = None,
    ) -> None:
        """`command` (with `{ip}`, `{port}`, ...) per pod, or None to run each pod's own container;
        `program` maps a container's argv for the host; `api` is where in-cluster clients reach the
        API server (default: the host and port of `client`'s server)."""
        self.kube = client
        self.selector = selector
        self.command = command
        self.log_dir = Path(log_dir).resolve()  # pods run in their own directories: no relative paths
        self.namespace = namespace
        self.port_name = port_name
        self.env = dict(env or {})
        self.stop_timeout_s = stop_timeout_s
        self.program = program
        host, _, port = client.server.removeprefix("https://").rpartition(":")
        self.api = api or kubelet.ApiEndpoint(host, int(port))
        self.lost_nodes: set[str] = set()
        """Nodes whose "kubelet" died: their pods' processes are gone and nothing is posted for them."""
        self._ended: set[str] = set()
        """Pods whose container ran and ended: a pod's container is started once."""
        self.processes: dict[str, PodProcess] = {}
        """By pod UID."""
        self.errors: list[str] = []
        """Pods the agent refused or failed to start, one line each."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self._status_thread: threading.Thread | None = None
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
        if self.command is None:
            self._status_thread = threading.Thread(
                target=self._status_loop, name="node-agent-status", daemon=True
            )
            self._status_thread.start()
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
        for thread in (self._thread, self._status_thread):
            if thread is not None:
                thread.join(timeout=10)
        with self._lock:
            procs = list(self.processes.values())
            self.processes.clear()
        for p in procs:
            self._terminate(p)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def signal(self, namespace: str, name: str, sig: int) -> int:
        """Send `sig` to a pod's process group (SIGKILL: the container dies); returns its pid."""
        p = self.process_for(namespace, name)
        if p is None:
            raise AgentError(f"no process runs for pod {namespace}/{name}")
        os.killpg(p.proc.pid, sig)
        return p.proc.pid

    def lose_node(self, node: str) -> list[str]:
        """The node's kubelet dies with its containers: kill them, post nothing, start nothing there.
        Returns the pods that were running on it."""
        with self._lock:
            self.lost_nodes.add(node)
            victims = [p for p in self.processes.values() if p.node == node]
            for p in victims:
                p.stopping = True
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()
        return [f"{p.namespace}/{p.name}" for p in victims]

    def restore_node(self, node: str) -> None:
        """The node's kubelet is back: pods bound there are run again."""
        with self._lock:
            self.lost_nodes.discard(node)

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
            node = pod["spec"].get("nodeName", "")
            if (
                uid in self.processes
                or uid in self._ended
                or node in self.lost_nodes
                or self._stopping.is_set()
            ):
                return
        try:
            started = self._launch(pod)
        except (AgentError, OSError, kubelet.PodSpecError, ApiError) as exc:
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
                p.stopping = True
        if p is not None:
            self._terminate(p)

    def _launch(self, pod: dict) -> PodProcess:
        meta, status = pod["metadata"], pod["status"]
        ip = status["podIP"]
        if not is_loopback(ip):
            raise AgentError(f"pod IP {ip} is not in 127.0.0.0/8; the agent serves on loopback only")
        log_path = self.log_dir / f"{meta['namespace']}_{meta['name']}.log"
        if self.command is None:
            return self._launch_container(pod, log_path)
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
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        logger.info("node agent: started pid %d for %s/%s at %s:%d", proc.pid, values["namespace"],
                    values["name"], ip, port)  # fmt: skip
        return PodProcess(
            meta["namespace"], meta["name"], meta["uid"], ip, port, proc, log_path, values["node"]
        )

    def _launch_container(self, pod: dict, log_path: Path) -> PodProcess:
        """The pod's own container, as a kubelet would start it (module docstring)."""
        meta, ip = pod["metadata"], pod["status"]["podIP"]
        pod_dir = self.log_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        launch = kubelet.prepare(self.kube, pod, pod_dir, self.api)
        argv = list(self.program(pod, launch.argv)) if self.program else launch.argv
        shim = [
            sys.executable,
            "-m",
            "sbs.e2e.pod_shim",
            "--pod-ip",
            ip,
            "--stats-file",
            str(pod_dir / STATS),
        ]
        if launch.service_account_dir is not None:
            shim += ["--service-account-dir", str(launch.service_account_dir)]
        env = {**kubelet.host_env(launch), **self.env, "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*shim, "--", *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=pod_dir, start_new_session=True,
            )  # fmt: skip
        container = pod["spec"]["containers"][0]
        try:
            port = pod_port(pod, self.port_name)
        except AgentError:
            port = 0
        prober = probes.Prober(container, ip, time.monotonic())
        node = pod["spec"].get("nodeName", "")
        p = PodProcess(meta["namespace"], meta["name"], meta["uid"], ip, port, proc, log_path, node,
                       container, prober, probes.now_rfc3339(), pod_dir=pod_dir)  # fmt: skip
        logger.info("node agent: started pid %d for %s/%s (container %s) at %s", proc.pid, p.namespace,
                    p.name, container["name"], ip)  # fmt: skip
        # kwok marked the pod Ready when it bound it; what holds now is what the probes say.
        self._post(
            p, probes.running_status(container, ready=prober.ready, started=prober.started, since=p.since)
        )
        return p

    # -- the kubelet's status loop (container mode) -----------------------------------------

    def _status_loop(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                running = [p for p in self.processes.values() if not p.stopping]
            for p in running:
                try:
                    self._status_step(p)
                except Exception as exc:  # an API hiccup: try again on the next round
                    logger.warning("node agent: status of %s/%s: %s", p.namespace, p.name, exc)

    def _status_step(self, p: PodProcess) -> None:
        assert p.container is not None and p.prober is not None
        code = p.proc.poll()
        if code is None and p.prober.failed is None:
            now = time.monotonic()
            if p.prober.due(now) and p.prober.step(now):
                ready, started = p.prober.ready, p.prober.started
                logger.info("node agent: %s/%s started=%s ready=%s", p.namespace, p.name, started, ready)
                self._post(p, probes.running_status(p.container, ready=ready, started=started, since=p.since))
            if p.prober.failed is None:
                return
            stop_group(p.proc, 0)  # a kubelet kills a container that fails liveness
            code = p.proc.wait()
        with self._lock:
            if p.stopping or p.node in self.lost_nodes or self.processes.get(p.uid) is not p:
                return
            del self.processes[p.uid]
            self._ended.add(p.uid)
        message = p.prober.failed or ""
        logger.info("node agent: %s/%s exited with %s %s", p.namespace, p.name, code, message)
        self._post(p, probes.exited_status(p.container, code, since=p.since, message=message))

    def _post(self, p: PodProcess, patch: dict) -> None:
        path = f"/api/v1/namespaces/{p.namespace}/pods/{p.name}/status"
        try:
            self.kube.patch(path, patch, kind="strategic")
        except ApiError as exc:
            if exc.status != 404:  # a deleted pod has no status to post
                raise

    def _terminate(self, p: PodProcess) -> None:
        stop_group(p.proc, self.stop_timeout_s)
        logger.info("node agent: stopped %s/%s (exit %s)", p.namespace, p.name, p.proc.returncode)
