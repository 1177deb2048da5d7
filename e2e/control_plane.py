"""`ControlPlane`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as
local processes, with N fake H800 nodes, started and stopped by PID.

Everything listens on 127.0.0.1 at free ports, so clusters never collide. Each cluster owns a
*slot*: a directory `<runtime root>/<slot>` holding its certificates, etcd data, logs, kubeconfig
and `state.json` (PIDs and command lines), and the pod network 127.(100+slot).0.0/16. The runtime
root is on /dev/shm when there is one (etcd then never touches a disk).

Every wait has a timeout and, while waiting, checks that no component has exited: a crash is
reported at once as `ComponentError` with the tail of that component's log, never as a hang.
Flags and pitfalls: ../shared/design/controlplane.md.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sbs.e2e import binaries, nodes, pki, slots
from sbs.e2e.crds import crd_documents, install_crds
from sbs.e2e.waits import WaitTimeout, wait_until
from sbs.kube.blocking import Kube

_PR_SET_PDEATHSIG = 1
NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})


class ControlPlaneError(Exception):
    """The control plane could not be started, or is not in the state a caller needs."""


class ComponentError(ControlPlaneError):
    """A component process exited; carries the tail of its log."""

    def __init__(self, name: str, returncode: int | None, log_path: Path, tail: str) -> None:
        super().__init__(f"{name} exited with code {returncode}; last lines of {log_path}:\n{tail}")
        self.name, self.returncode, self.log_path, self.tail = name, returncode, log_path, tail


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """How a control plane is laid out and how long it may take."""

    node_count: int = 64
    """Fake GPU nodes (at most `nodes.MAX_NODES`, 4,096); 64 × 8 = 512 simulated H800s."""
    shape: nodes.NodeShape = dataclasses.field(default_factory=nodes.NodeShape)
    topology: nodes.Topology = dataclasses.field(default_factory=nodes.Topology)
    crd_paths: tuple[Path, ...] = ()
    """YAML files or directories of them whose CustomResourceDefinitions are installed at start."""
    wait_timeout_s: float = 60.0
    """Per wait (etcd healthy, apiserver ready, nodes Ready, ...). Warm starts take about 5 s;
    the margin is for a loaded 2-core machine."""
    stop_timeout_s: float = 10.0
    """Between SIGTERM and SIGKILL."""
    extra_args: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Extra flags per component name (e.g. feature gates, or a broken flag in a test)."""


@dataclasses.dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    pid: int
    proc: subprocess.Popen | None = None
    """Set when this process started it (then `returncode` is exact)."""

    def returncode(self) -> int | None:
        """None while the process runs, else its exit code (-1 when not our child)."""
        if self.proc is not None:
            return self.proc.poll()
        return None if slots.pid_runs(self.pid, self.argv[0]) else -1

    def alive(self) -> bool:
        return self.returncode() is None

    def tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    kept = [line if len(line) <= 400 else line[:400] + " …" for line in text.splitlines()[-lines:]]
    return "\n".join(kept) or "(empty log)"


_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-plane-spawner")
"""The one thread that starts components (see `start_process`)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlane:
    """One local control plane. `start()` it (or use it as a context manager), then `stop()`."""

    def __init__(
        self,
        bins: binaries.Binaries,
        settings: ClusterSettings | None = None,
        *,
        name: str = "e2e",
        owned: bool = True,
    ) -> None:
        """`owned`: the components die with this process (tests); False for `make dev-cluster`."""
        self.bins = bins
        self.settings = settings or ClusterSettings()
        self.name = name
        self.owned = owned
        self.components: dict[str, Component] = {}
        self.slot: int = -1
        self.dir: Path = Path()
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._kube: Kube | None = None

    # -- accessors --------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> pki.Pki:
        return pki.Pki(self.dir / "pki")

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            p = self.pki
            self._kube = Kube.from_certificates(
                self.server, ca_file=p.ca_crt, cert_file=p.admin_crt, key_file=p.admin_key
            )
        return self._kube

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        try:
            self.slot, self.dir = slots.claim_slot(slots.runtime_root())
        except slots.SlotsExhausted as exc:
            raise ControlPlaneError(str(exc)) from None
        try:
            self._start(t0)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, t0: float) -> None:
        s = self.settings
        (self.dir / "logs").mkdir()
        (self.dir / "name").write_text(self.name)
        self.ports = {
            "etcd": free_port(),
            "etcd-peer": free_port(),
            "apiserver": free_port(),
            "kwok": free_port(),
        }
        keys = pki.make_pki(self.dir / "pki", service_ip=nodes.SERVICE_IP)
        self.kubeconfig.write_text(pki.kubeconfig(keys, self.server, name=f"sbs-{self.name}"))
        self.kubeconfig.chmod(0o600)

        def mark(what: str) -> None:
            self.timings[what] = round(time.monotonic() - t0, 2)

        self._spawn("etcd", self._etcd_args())
        self.wait(self._etcd_healthy, "etcd /health")
        mark("etcd")
        self._spawn("kube-apiserver", self._apiserver_args())
        self.wait(lambda: self.kube.request("GET", "/readyz", timeout_s=5) == "ok", "kube-apiserver /readyz")
        mark("apiserver_ready")
        # kubectl apply right after /readyz can fail with "failed to download openapi".
        self.wait(lambda: self.kube.request("GET", "/openapi/v2", timeout_s=10), "kube-apiserver OpenAPI")
        mark("openapi")
        self._spawn("kube-controller-manager", self._kcm_args())
        self._spawn("kube-scheduler", self._scheduler_args())
        config = self.dir / "kwok.yaml"
        config.write_text(
            nodes.kwok_config(
                self.bins.stage_documents(),
                slot=self.slot,
                server_port=self.ports["kwok"],
                node_count=s.node_count,
            )
        )
        self._spawn("kwok", self._kwok_args(config))
        self._write_state()

        built = nodes.build_nodes(s.node_count, slot=self.slot, shape=s.shape, topology=s.topology)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda node: self.kube.create("/api/v1/nodes", node), built))
        mark("nodes_created")
        self.wait(lambda: self.ready_nodes() >= s.node_count, f"{s.node_count} nodes Ready")
        mark("nodes_ready")
        # The service-account controller (KCM) makes `default`; pods need it (ServiceAccount admission).
        self.wait(lambda: self.kube.exists("/api/v1/namespaces/default/serviceaccounts/default"),
                  "kube-controller-manager to create the default ServiceAccount")  # fmt: skip
        mark("controllers")
        if s.crd_paths:
            install_crds(self.kube, crd_documents(s.crd_paths), timeout_s=s.wait_timeout_s, check=self.check)
            mark("crds")
        self.check()
        self._write_state()

    def stop(self) -> None:
        """Stop the components by PID and remove the slot.

        Clients first, then the apiserver, then etcd (an apiserver whose etcd is gone takes
        seconds to give up): each stage gets SIGTERM, then SIGKILL after `stop_timeout_s`.
        """
        for stage in (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)):
            self.terminate([c for n, c in self.components.items() if n in stage])
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.components.clear()

    def terminate(self, components: list[Component]) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout_s`, for each running one."""
        running = [c for c in components if c.alive()]
        for c in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout_s
        while any(c.alive() for c in running) and time.monotonic() < deadline:
            time.sleep(0.02)
        for c in running:
            if c.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGKILL)
        for c in components:
            if c.proc is not None:
                c.proc.wait()

    # -- health -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise `ComponentError` for the first component that is no longer running."""
        for c in self.components.values():
            rc = c.returncode()
            if rc is not None:
                raise ComponentError(c.name, rc, c.log_path, c.tail())

    def wait(self, predicate: Any, what: str, timeout_s: float | None = None) -> Any:
        """`wait_until` that fails at once, with the log, if a component dies meanwhile."""
        timeout = self.settings.wait_timeout_s if timeout_s is None else timeout_s
        try:
            return wait_until(predicate, timeout, what, check=self.check)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n{self.logs_report(lines=15)}") from None

    def logs_report(self, lines: int = 30) -> str:
        """The last lines of every component's log, for a failure message."""
        parts = []
        for c in self.components.values():
            rc = c.returncode()
            state = "running" if rc is None else f"exited with code {rc}"
            parts.append(f"--- {c.name} (pid {c.pid}, {state}): {c.log_path}\n{c.tail(lines)}")
        return "\n".join(parts)

    def ready_nodes(self) -> int:
        """Nodes Ready and free of the node lifecycle controller's not-ready/unreachable taints: a
        node it first saw before kwok made it Ready keeps `not-ready:NoSchedule` until its taint
        pass comes round, and the scheduler places nothing there until then."""
        items = self.kube.get("/api/v1/nodes")["items"]
        return sum(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions") or []
            )
            and not any(t.get("key") in NOT_READY_TAINTS for t in n.get("spec", {}).get("taints") or [])
            for n in items
        )

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['etcd']}/health"
        with urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
            return json.load(resp).get("health") == "true"

    # -- processes --------------------------------------------------------------------------

    def restart(self, name: str) -> float:
        """Stop one component (SIGTERM, then SIGKILL) and start it again with the same flags, for
        fault tests; returns the seconds until it is healthy again (etcd, the apiserver) or running."""
        old = self.components[name]
        self.terminate([old])
        t0 = time.monotonic()
        self.start_process(name, old.argv)
        self._write_state()
        if name == "etcd":
            self.wait(self._etcd_healthy, "etcd /health after a restart")
        elif name == "kube-apiserver":
            self.wait(
                lambda: self.kube.request("GET", "/readyz", timeout_s=5) == "ok", "kube-apiserver /readyz"
            )
        return time.monotonic() - t0

    def _spawn(self, name: str, args: list[str]) -> Component:
        return self.start_process(
            name, [str(self.bins.path(name)), *args, *self.settings.extra_args.get(name, ())]
        )

    def start_process(self, name: str, argv: list[str]) -> Component:
        """Start `argv` as component `name` (logged to `log_path(name)`, watched by `check`)."""
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            # PDEATHSIG fires when the *thread* that forked dies: fork from one thread that lives as
            # long as this process, never from a caller's short-lived thread (a restart in a test).
            proc = _SPAWNER.submit(
                subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent if self.owned else None,
            ).result()  # fmt: skip
        comp = Component(name, argv, log_path, proc.pid, proc)
        self.components[name] = comp
        return comp

    def _write_state(self) -> None:
        state = {
            "name": self.name,
            "slot": self.slot,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "pids": {n: c.pid for n, c in self.components.items()},
            "argv": {n: c.argv for n, c in self.components.items()},
            "logs": {n: str(c.log_path) for n, c in self.components.items()},
            "timings": self.timings,
            "nodes": self.settings.node_count,
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.rename(self.dir / "state.json")

    @classmethod
    def attach(cls, directory: Path) -> ControlPlane:
        """A handle on a cluster started by another process (`make dev-cluster-down`)."""
        state = json.loads((directory / "state.json").read_text())
        cp = cls(
            binaries.Binaries(Path(state["argv"]["etcd"][0]).parent.parent), name=state["name"], owned=False
        )
        cp.slot, cp.dir, cp.ports, cp.timings = state["slot"], directory, state["ports"], state["timings"]
        for name, pid in state["pids"].items():
            cp.components[name] = Component(name, state["argv"][name], Path(state["logs"][name]), pid)
        return cp

    # -- flags ------------------------------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            f"--name={self.name}",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        port = self.ports["apiserver"]
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={p.dir}",
            f"--tls-cert-file={p.apiserver_crt}",
            f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca_crt}",
            f"--service-account-issuer=https://127.0.0.1:{port}/",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={nodes.SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            # On top of the default plugins (PodSecurity among them), as OpenShift and hardened
            # clusters run it: setting blockOwnerDeletion needs `update` on the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true",
            # Without this the apiserver keeps trying to put 127.0.0.1 into the `kubernetes`
            # Endpoints, which validation rejects (loopback).
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _kcm_args(self) -> list[str]:
        p = self.pki
        return [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            f"--root-ca-file={p.ca_crt}",
            f"--service-account-private-key-file={p.sa_key}",
            f"--cluster-signing-cert-file={p.ca_crt}",
            f"--cluster-signing-key-file={p.ca_key}",
            "--controllers=*",
            # Client-side rate limit (default 20/s, burst 30): the node lifecycle controller patches
            # each new node's not-ready taint on and off, which took minutes for 1,000 nodes.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # Its default, /usr/libexec/kubernetes/..., would be created on the host.
            f"--flex-volume-plugin-dir={self.dir / 'flexvolume'}",
            "--profiling=false",
        ]

    def _scheduler_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--profiling=false",
        ]

    def _kwok_args(self, config: Path) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={config}",
            f"--manage-nodes-with-annotation-selector={nodes.FAKE_NODE_ANNOTATION}=fake",
        ]


# ---------------------------------------------------------------------------------------------
# Finding clusters started by other processes.


def remove_stale() -> list[Path]:
    """Delete the slot directories of clusters whose processes are all gone."""
    root = slots.runtime_root()
    stale = [p for p in root.glob("[0-9]*") if (p / "state.json").exists() and slots.slot_is_stale(p)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def find_clusters(name: str | None = None) -> list[ControlPlane]:
    """Running (or partly running) clusters under the runtime root, optionally by name."""
    root = slots.runtime_root()
    found = []
    for path in sorted(root.glob("[0-9]*"), key=lambda p: int(p.name)) if root.is_dir() else []:
        if not (path / "state.json").exists() or slots.slot_is_stale(path):
            continue
        try:
            cp = ControlPlane.attach(path)
        except (OSError, ValueError, KeyError):
            continue
        if name is None or cp.name == name:
            found.append(cp)
    return found
