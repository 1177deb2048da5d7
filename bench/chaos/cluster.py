"""The chaos environment: the operator, the scheduler and emulated engines as pods on the e2e plane.

`Stack` installs the operator from `manifests/overlays/dev` (its Deployment, ServiceAccount and
RBAC), runs one node agent in container mode for every SBS pod (`SELECTOR`), creates a small
SBSDeployment from the sample (`Shape`) and offers the handles a scenario needs: pods by component,
the scheduler's ready endpoints (its Service's EndpointSlices, as kube-proxy would route), and the
faults (signals to a pod's process, a lost node, a control-plane component restarted).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from sbs.bench.emulated_cluster import BenchCluster
from sbs.e2e import agent
from sbs.e2e.control_plane import ControlPlane
from sbs.e2e.nodes import FAKE_NODE_ANNOTATION
from sbs.kube import labels, timestamps
from sbs.kube.blocking import ApiError, Kube
from sbs.operator import api

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml"
DEV_OVERLAY = REPO / "manifests" / "overlays" / "dev"
OPERATOR_NS = "sbs-system"
OPERATOR_LABELS = "app.kubernetes.io/name=sbs-operator"
SELECTOR = "app.kubernetes.io/component in (operator,engine,scheduler)"
DEPS = f"/apis/{api.API_VERSION}/namespaces/{{ns}}/{api.PLURAL}"
EP_SIZE = 32
"""EP size every emulated engine is costed with (as `sbs-bench`): a one-node group of DeepSeek-V3 at
its own EP8 would have no room for KV."""


@dataclasses.dataclass(frozen=True)
class Shape:
    """The SBSDeployment under test: one-node groups of DP8, prefill chunk 4096 tokens per rank."""

    prefill_groups: int = 2
    decode_groups: int = 2
    chunk_per_rank: int = 4096
    decode_running_per_rank: int = 2304
    scheduler_port: int = 8000

    def bench_cluster(self) -> BenchCluster:
        """The same cluster as `sbs-bench` sees it: its yardstick of capacity (`nominal_prefill_tok_s`)."""
        return BenchCluster(
            prefill_instances=self.prefill_groups,
            prefill_dp=8,
            decode_instances=self.decode_groups,
            decode_dp=8,
            chunk_tokens=self.chunk_per_rank,
            decode_max_running=self.decode_running_per_rank,
            ep_size=EP_SIZE,
        )

    def manifest(self, name: str, namespace: str) -> dict[str, Any]:
        obj = yaml.safe_load(SAMPLE.read_text())
        obj["metadata"].update(name=name, namespace=namespace)
        spec = obj["spec"]
        spec["prefill"].update(
            groups=self.prefill_groups, nodesPerGroup=1, chunkedPrefillSize=8 * self.chunk_per_rank
        )
        spec["decode"].update(groups=self.decode_groups, nodesPerGroup=1,
                              maxRunningRequests=8 * self.decode_running_per_rank)  # fmt: skip
        spec["updateStrategy"]["drainSeconds"] = 1
        # Chaos kills groups every 10 s: no backoff, a budget that outlasts the run.
        spec["restartPolicy"] = {"backoffSeconds": 0, "maxRestarts": 1000, "notReadySeconds": 15}
        return obj


def _kubectl(plane: ControlPlane, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    done = subprocess.run([str(plane.bins.path("kubectl")), *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return {}


def ready_urls(kube: Kube, namespace: str, selector: str, port: int) -> list[str]:
    """A Service's endpoints as its EndpointSlice would list them: the ready pods of `selector` (the
    API refuses loopback addresses in EndpointSlices, so the controller writes none here)."""
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
    return sorted(f"http://{p['status']['podIP']}:{port}" for p in pods if pod_ready(p))


def _node_ready(node: dict[str, Any], *, addressed: bool = False) -> bool:
    status = node["status"]
    if addressed and not status.get("addresses"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running and Ready as the node agent posted it (`started` is the agent's: kwok marks a pod
    Ready the moment it binds it, before the agent has started its process)."""
    status = pod.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    containers = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and conditions.get("Ready") == "True"
        and bool(containers)
        and all(c.get("started") for c in containers)
        and not pod["metadata"].get("deletionTimestamp")
    )


class Stack:
    """One SBSDeployment, its operator, scheduler and engines, all as pods on `plane`."""

    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        log_dir: Path,
        *,
        time_factor: float,
        shape: Shape | None = None,
        name: str = "chaos",
    ) -> None:
        self.plane, self.kube = plane, plane.kube
        self.namespace, self.name = namespace, name
        self.log_dir = log_dir
        self.time_factor = time_factor
        self.shape = shape or Shape()
        self.agent: agent.NodeAgent | None = None
        self.slow_groups: dict[tuple[str, int], float] = {}
        """(role, group index) of this deployment -> how many times slower its engines start."""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 180.0) -> Stack:
        """Namespace, operator and agent up, the deployment Ready, the scheduler Ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        try:
            self.kube.create("/api/v1/namespaces", ns)
        except ApiError as exc:
            if exc.status != 409:
                raise
        _kubectl(self.plane, "apply", "-k", str(DEV_OVERLAY))
        self.agent = agent.NodeAgent(
            self.kube,
            selector=SELECTOR,
            log_dir=self.log_dir / "pods",
            program=self._program,
            port_name="http",
        ).start()
        self.wait(lambda: self.ready_pods(OPERATOR_NS, OPERATOR_LABELS), "the operator pod Ready", timeout_s)
        self.kube.create(DEPS.format(ns=self.namespace), self.shape.manifest(self.name, self.namespace))
        self.wait_converged(timeout_s)
        return self

    def _program(self, pod: dict[str, Any], argv: list[str]) -> list[str]:
        """Engines as `sbs-engine` at the stack's time factor (`slow_groups` slower), EP32, streaming
        every 8 tokens (as `sbs-bench`)."""
        lab = pod["metadata"].get("labels") or {}
        slow = 1.0
        if lab.get(labels.DEPLOYMENT) == self.name and lab.get(labels.GROUP, "").isdigit():
            slow = self.slow_groups.get((lab.get(labels.ROLE, ""), int(lab[labels.GROUP])), 1.0)
        extra = ("--ep-size", str(EP_SIZE), "--stream-interval", "8")
        return list(agent.sglang_as_emulator(self.time_factor * slow, *extra)(pod, argv))

    def dump_events(self, path: Path) -> None:
        """The namespaces' events, oldest first, one line each (why the operator did what it did)."""
        lines = []
        for ns in (self.namespace, OPERATOR_NS):
            with contextlib.suppress(Exception):  # the API may be down: events are a diagnostic
                for e in self.kube.get(f"/api/v1/namespaces/{ns}/events")["items"]:
                    when = e.get("lastTimestamp") or e.get("eventTime") or ""
                    obj = e.get("involvedObject") or {}
                    what = f"{e.get('type')} {e.get('reason')} {obj.get('kind')}/{obj.get('name')}"
                    lines.append(f"{when} {what}: {e.get('message')} (x{e.get('count', 1)})")
        path.write_text("\n".join(sorted(lines)) + "\n")

    def stop(self) -> None:
        if self.agent is not None:
            with contextlib.suppress(Exception):  # best effort, as the deletions below
                self.restore_nodes()
            self.agent.stop()
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        for path in (f"{DEPS.format(ns=self.namespace)}/{self.name}", f"/api/v1/namespaces/{self.namespace}",
                     f"/api/v1/namespaces/{OPERATOR_NS}", f"{rbac}/clusterrolebindings/sbs-operator",
                     f"{rbac}/clusterroles/sbs-operator"):  # fmt: skip
            with contextlib.suppress(Exception):  # best effort: the plane may be going down
                self.kube.delete(path, missing_ok=True)
        # The next stack on this plane applies into `sbs-system` again: a namespace still Terminating
        # would take its new operator with it. Wait (best effort) until both are gone.
        with contextlib.suppress(Exception):
            self.wait(lambda: not self._namespaces_left(), "the stack's namespaces deleted", 120.0)

    def _namespaces_left(self) -> list[str]:
        names = {self.namespace, OPERATOR_NS}
        return [n["metadata"]["name"] for n in self.kube.get("/api/v1/namespaces")["items"]
                if n["metadata"]["name"] in names]  # fmt: skip

    def wait(self, predicate: Any, what: str, timeout_s: float = 120.0) -> Any:
        return self.plane.wait(predicate, what, timeout_s)

    # -- what is there ----------------------------------------------------------------------

    def pods(self, selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        ns = namespace or self.namespace
        return self.kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"]

    def ready_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(selector, namespace) if pod_ready(p)]

    def engine_selector(self, role: str | None = None, leader: bool = False) -> str:
        sel = labels.engine_selector(self.name)
        if role:
            sel[labels.ROLE] = role
        if leader:
            sel[labels.LEADER] = "true"
        return labels.selector_string(sel)

    @property
    def scheduler_selector(self) -> str:
        return labels.selector_string(labels.scheduler_selector(self.name))

    def deployment(self) -> dict[str, Any]:
        return self.kube.get(f"{DEPS.format(ns=self.namespace)}/{self.name}")

    def converged(self, name: str | None = None, shape: Shape | None = None) -> bool:
        """Ready at the current generation, every group's leader Ready, a scheduler Ready."""
        name, shape = name or self.name, shape or self.shape
        obj = self.kube.get(f"{DEPS.format(ns=self.namespace)}/{name}")
        st = obj.get("status") or {}
        if st.get("phase") != "Ready" or st.get("observedGeneration") != obj["metadata"]["generation"]:
            return False
        sel = labels.selector_string({**labels.engine_selector(name), labels.LEADER: "true"})
        leaders = [p for p in self.pods(sel) if pod_ready(p)]
        scheduler = labels.selector_string(labels.scheduler_selector(name))
        return len(leaders) == shape.prefill_groups + shape.decode_groups and bool(
            self.ready_pods(self.namespace, scheduler)
        )

    def wait_converged(self, timeout_s: float = 120.0) -> float:
        """Seconds until `converged()`."""
        t0 = time.monotonic()
        self.wait(self.converged, f"{self.namespace}/{self.name} converged", timeout_s)
        return time.monotonic() - t0

    def scheduler_urls(self) -> list[str]:
        return ready_urls(self.kube, self.namespace, self.scheduler_selector, self.shape.scheduler_port)

    def engines(self) -> list[dict[str, Any]]:
        """The scheduler's view (`GET /engines`): url, role, state (usable, suspect, ...)."""
        return [e for url in self.scheduler_urls() for e in _get_json(f"{url}/engines").get("engines", [])]

    def scheduler_in_flight(self, url: str) -> int:
        """Requests the scheduler at `url` holds (its `outstanding`)."""
        return int(_get_json(f"{url}/engines").get("outstanding", 0))

    # -- changes ----------------------------------------------------------------------------

    def scale(self, shape: Shape, *, wait: bool = True) -> None:
        """Set the deployment's group counts (and `self.shape`); wait until converged."""
        patch = {
            "spec": {"prefill": {"groups": shape.prefill_groups}, "decode": {"groups": shape.decode_groups}}
        }
        self.kube.patch(f"{DEPS.format(ns=self.namespace)}/{self.name}", patch)
        self.shape = shape
        if wait:
            self.wait_converged(180)

    def apply_other(self, name: str, shape: Shape, *, roll: int, create: bool) -> None:
        """Create or change a second deployment (no load on it): group counts, and a rollout per
        `roll` (an engine env var, which changes the pod template)."""
        obj = shape.manifest(name, self.namespace)
        obj["spec"]["engine"]["env"] = [{"name": "SBS_CHAOS_ROLL", "value": str(roll)}]
        if create:
            self.kube.create(DEPS.format(ns=self.namespace), obj)
        else:
            self.kube.patch(f"{DEPS.format(ns=self.namespace)}/{name}", {"spec": obj["spec"]})

    def group_problems(self, name: str, shape: Shape) -> list[str]:
        """Duplicate or orphaned groups (live leaders per role and index) and group restarts."""
        problems = []
        sel = labels.selector_string({**labels.engine_selector(name), labels.LEADER: "true"})
        live = [p for p in self.pods(sel) if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        for role, want in (("prefill", shape.prefill_groups), ("decode", shape.decode_groups)):
            indices = sorted(int(p["metadata"]["labels"][labels.GROUP]) for p in live
                             if p["metadata"]["labels"][labels.ROLE] == role)  # fmt: skip
            if indices != list(range(want)):
                problems.append(f"{role} group indices {indices}, expected 0..{want - 1}")
        status = self.kube.get(f"{DEPS.format(ns=self.namespace)}/{name}").get("status") or {}
        restarts = [f"{r['role']}/{r['index']}: {r['count']}" for r in status.get("groupRestarts") or []
                    if r.get("count")]  # fmt: skip
        if restarts:
            problems.append(f"group restarts {restarts}")
        return problems

    def delete_other(self, name: str) -> None:
        self.kube.delete(f"{DEPS.format(ns=self.namespace)}/{name}", missing_ok=True)
        sel = labels.selector_string(labels.engine_selector(name))
        self.wait(lambda: not self.pods(sel), f"{name}'s engine pods gone", 120)

    # -- faults -----------------------------------------------------------------------------

    def signal_pod(self, pod: dict[str, Any], sig: int) -> int:
        assert self.agent is not None
        return self.agent.signal(pod["metadata"]["namespace"], pod["metadata"]["name"], sig)

    def operator_pod(self) -> dict[str, Any] | None:
        running = [p for p in self.pods(OPERATOR_LABELS, OPERATOR_NS)
                   if (p.get("status") or {}).get("phase") == "Running"]  # fmt: skip
        return running[0] if running else None

    def lose_node(self, node: str) -> list[str]:
        """The node's kubelet dies (its pods' processes with it) and kwok stops playing it: the node
        goes NotReady as the node controller sees an unanswered node."""
        assert self.agent is not None
        victims = self.agent.lose_node(node)
        path = f"/api/v1/nodes/{node}"
        meta = copy.deepcopy(self.kube.get(path)["metadata"])
        annotations = {k: None for k in meta.get("annotations") or {} if k.startswith("kwok.x-k8s.io/")}
        self.kube.patch(path, {"metadata": {"annotations": annotations}})
        now = timestamps.rfc3339(time.time())  # noqa: TID251 (an API timestamp, as the node controller writes)
        ready = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                 "message": "Kubelet stopped posting node status (chaos)", "lastHeartbeatTime": now,
                 "lastTransitionTime": now}  # fmt: skip
        self.kube.patch(f"{path}/status", {"status": {"conditions": [ready]}}, kind="strategic")
        return victims

    def restore_nodes(self) -> None:
        """Lost nodes come back: kwok plays them again (Ready, pods left there deleted) and the agent
        runs pods there again, so the next user of the plane finds every node."""
        assert self.agent is not None
        for node in sorted(self.agent.lost_nodes):
            # kwok's node-initialize writes the whole status, addresses only where there are none
            # (a node that kept them would come back without any): take them off first
            self.kube.patch(f"/api/v1/nodes/{node}/status", {"status": {"addresses": None}})
            self.kube.patch(
                f"/api/v1/nodes/{node}", {"metadata": {"annotations": {FAKE_NODE_ANNOTATION: "fake"}}}
            )
            self.agent.restore_node(node)
            self.wait(
                lambda n=node: _node_ready(self.kube.get(f"/api/v1/nodes/{n}"), addressed=True),
                f"node {node} Ready again",
                60,
            )
