"""`sbs-bench operator-scale`: the SBSDeployment operator at cluster scale on the e2e control plane.

Starts the harness's real control plane (`sbs.e2e.control_plane`: etcd, kube-apiserver, controller
manager, scheduler, kwok) with N fake H800 nodes in the Topology's blocks, installs the CRDs, the
operator's least-privilege RBAC (`manifests/rbac`) and three FlowSchemas that isolate its
ServiceAccount's requests (`scale_metrics`), runs `sbs-operator run` as that ServiceAccount (as a
process, as the operator tests run it), applies D SBSDeployments of the sample's shape, waits until
all are Ready, then watches an idle window. It reports the control plane's start time and memory,
apply → all Ready, reconcile latency (the operator's `sbs_operator_reconcile_seconds`), the
operator's request rate during and after convergence from the API server's own counters, the
operator's RSS, and whether the request rate fell to near zero (no hot loop).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sbs.bench import scale_metrics as sm
from sbs.bench.procs import BenchError, free_port
from sbs.e2e import binaries
from sbs.e2e.control_plane import ClusterSettings, ControlPlane, ControlPlaneError
from sbs.e2e.crds import install_crds
from sbs.e2e.procs import stop_group
from sbs.e2e.tokens import service_account_kubeconfig
from sbs.e2e.waits import WaitTimeout
from sbs.kube import labels
from sbs.kube.blocking import Kube
from sbs.kube.client import ApiError, collection_path
from sbs.operator import api, crdgen

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml"
RBAC_DIR = REPO / "manifests" / "rbac"
OPERATOR_NS, OPERATOR_SA = "sbs-system", "sbs-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
FLOW_PREFIX = "sbs-operator-bench"
RECONCILE_HISTOGRAM = "sbs_operator_reconcile_seconds"
COMPONENTS = ("kube-apiserver", "etcd", "kwok", "kube-controller-manager", "kube-scheduler")
STARTUP_SETTLE_S = 3.0
"""Between the operator taking its Lease and the first window: its start-up calls (kopf's watches,
the takeover's list) are over, so the windows' edges cut through as few requests as possible."""
BACKGROUND_PER_S = 2.0
"""The operator's fixed calls while leading, whatever it manages: its Lease (GET and PUT every 2 s,
`leader.py`) and the autoscaler's LIST of SBSAutoscalingPolicies every second
(`autoscaling/controller.py`)."""
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ScaleRun:
    """What to run: the cluster, the deployments' shape and the operator's settings."""

    nodes: int = 1000
    deployments: int = 20
    prefill: tuple[int, int] = (4, 4)
    """Groups × nodes per group (the sample: 4 × 4)."""
    decode: tuple[int, int] = (2, 9)
    """Groups × nodes per group (the sample: 2 × 9)."""
    workers: int = 8
    """The operator's `--workers` (its default)."""
    resync_s: float = 30.0
    """The operator's `--resync-seconds` (its default)."""
    idle_s: float = 60.0
    """How long the request rate is watched after all are Ready."""
    slice_s: float = 10.0
    """Progress and idle-rate interval."""
    ready_timeout_s: float = 1200.0
    namespace: str = "sbs-scale"
    log_dir: Path = Path("out/operator-scale")

    @property
    def pods_per_deployment(self) -> int:
        return self.prefill[0] * self.prefill[1] + self.decode[0] * self.decode[1]

    def check(self) -> None:
        if self.nodes < 1 or self.deployments < 1 or self.idle_s <= 0 or self.slice_s <= 0:
            raise BenchError("--nodes, --deployments, --idle-seconds and the slice must be > 0")
        if min(*self.prefill, *self.decode) < 1:
            raise BenchError("--prefill and --decode must be GROUPSxNODES with both ≥ 1")
        need = self.deployments * self.pods_per_deployment
        if need > self.nodes:
            raise BenchError(f"{self.deployments} deployments need {need} nodes, only {self.nodes} given")


def parse_groups(text: str, option: str) -> tuple[int, int]:
    """`GROUPSxNODES` (e.g. 4x4) as a pair of positive integers."""
    a, sep, b = text.lower().partition("x")
    if sep and a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0:
        return int(a), int(b)
    raise BenchError(f"{option}: expected GROUPSxNODES with positive integers (e.g. 4x4), got {text!r}")


def deployment(run: ScaleRun, index: int) -> dict[str, Any]:
    """The sample SBSDeployment (manifests/samples) named `ds3-<index>`, with the run's group shape."""
    obj = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    obj["metadata"] = {"name": f"ds3-{index:02d}", "namespace": run.namespace}
    obj["spec"]["prefill"].update(groups=run.prefill[0], nodesPerGroup=run.prefill[1])
    obj["spec"]["decode"].update(groups=run.decode[0], nodesPerGroup=run.decode[1])
    return obj


def install_operator_identity(k: Kube) -> None:
    """The operator's namespace, ServiceAccount and RBAC (manifests/rbac), and the FlowSchemas that
    count its requests."""
    k.apply(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}}
    )
    if not RBAC_DIR.is_dir():
        raise BenchError(f"{RBAC_DIR} not found: run from a checkout of the repository")
    for path in sorted(RBAC_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") not in (None, "Kustomization"):
                ns = doc["metadata"].get("namespace")
                k.apply(collection_path(doc["apiVersion"], doc["kind"].lower() + "s", ns), doc)
    for fs in sm.flow_schemas(FLOW_PREFIX, OPERATOR_NS, OPERATOR_SA):
        k.apply(f"{sm.FLOWCONTROL}/flowschemas", fs)


class OperatorProc:
    """`python -m sbs.operator.cli run` as its own process group, with its metrics on a local port."""

    def __init__(self, run: ScaleRun, kubeconfig: Path, log: Path) -> None:
        self.metrics_port = free_port()
        self.log_path = log
        self.argv = [
            sys.executable, "-m", "sbs.operator.cli", "run", "--kubeconfig", str(kubeconfig),
            "-n", run.namespace, "--lease-namespace", OPERATOR_NS, "--workers", str(run.workers),
            "--resync-seconds", f"{run.resync_s:g}", "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )  # fmt: skip

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
            return resp.read().decode()

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"sbs-operator exited with {self.proc.returncode}; log tail:\n{tail}")

    def leading(self) -> bool:
        self.check()
        try:
            found = sm.samples(self.metrics(), ("sbs_operator_leader",))
        except OSError:
            return False
        return any(v == 1 for _, _, v in found)

    def stop(self) -> None:
        stop_group(self.proc, 10)


def component_rss(plane: ControlPlane) -> dict[str, float]:
    """RSS of each control-plane process (MiB) and their total."""
    out = {name: sm.rss_mib(plane.components[name].pid) for name in COMPONENTS if name in plane.components}
    out["total"] = round(sum(v for v in out.values() if not math.isnan(v)), 1)
    return out


def readiness(k: Kube, run: ScaleRun) -> tuple[int, int, int]:
    """(deployments Ready at their generation, engine pods, engine pods Ready)."""
    deps = k.get(collection_path(api.API_VERSION, api.PLURAL, run.namespace))["items"]
    ready = sum(
        (d.get("status") or {}).get("phase") == "Ready"
        and (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
        for d in deps
    )
    pods = k.get(
        f"/api/v1/namespaces/{run.namespace}/pods", labelSelector=f"{labels.COMPONENT}={labels.ENGINE}"
    )
    items = pods["items"]
    pods_ready = sum(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
        for p in items
    )
    return ready, len(items), pods_ready


def latency(later: dict[float, float], earlier: dict[float, float]) -> dict[str, Any]:
    """Count, p50 and p99 of the reconciles between two snapshots; `p99_beyond_buckets` when the p99
    lies past the histogram's last finite bucket (then `p99_s` is that bound: a lower bound)."""
    n = sm.observations(later, earlier)
    finite = [b for b in later if not math.isinf(b)]
    last = max(finite) if finite else math.inf
    return {
        "reconciles": n,
        "p50_s": _round(sm.quantile(0.5, later, earlier)),
        "p99_s": _round(sm.quantile(0.99, later, earlier)),
        "p99_beyond_buckets": n > 0 and later.get(last, 0.0) - earlier.get(last, 0.0) < 0.99 * n,
    }


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


class Sampler:
    """Snapshots of the operator's requests (from the API server) and its reconcile histogram."""

    def __init__(self, plane: ControlPlane, op: OperatorProc) -> None:
        self.plane, self.op = plane, op

    def requests(self) -> sm.ClientCount:
        # The counters are read somewhere during the call: stamp its middle (IO edge: the audit
        # log's timestamps are wall-clock).
        t0, wall0 = time.monotonic(), time.time()  # noqa: TID251
        text = self.plane.kube.request("GET", "/metrics", timeout_s=60)
        t1, wall1 = time.monotonic(), time.time()  # noqa: TID251
        return sm.client_count(text, FLOW_PREFIX, (t0 + t1) / 2, (wall0 + wall1) / 2, (t1 - t0) / 2)

    def reconciles(self) -> dict[float, float]:
        return sm.histogram(self.op.metrics(), RECONCILE_HISTOGRAM)


def verdict(idle: dict[str, Any], reconciles: int, run: ScaleRun) -> dict[str, Any]:
    """No hot loop: after convergence the operator writes nothing but its Lease, and its request
    rate falls back to its fixed background calls (`BACKGROUND_PER_S`, with half again as slack) in
    at least one slice: a loop, on writes or on events, would keep every slice busy. Reconciles and
    the resync's share are reported, not judged: a resync round re-reads every deployment."""
    slices = idle["slices_per_s"]
    quiet = min(slices, default=math.nan)
    ok = idle["by_class"]["write"] == 0 and quiet <= 1.5 * BACKGROUND_PER_S
    settled = next((i + 1 for i, r in enumerate(slices) if r <= 1.5 * BACKGROUND_PER_S), None)
    resync_rounds = math.floor(idle["seconds"] / run.resync_s) + 1  # at most
    return {
        "ok": ok,
        "idle_writes": idle["by_class"]["write"],
        "idle_reconciles": reconciles,
        "resync_reconciles": run.deployments * resync_rounds,
        "quietest_slice_per_s": quiet,
        "background_per_s": BACKGROUND_PER_S,
        "settled_after_s": None if settled is None else settled * run.slice_s,
        "line": (
            f"{'no hot loop' if ok else 'HOT LOOP'}: after all Ready the operator made "
            f"{idle['requests']} requests in {idle['seconds']:.0f} s ({idle['per_s']:.2f}/s: "
            f"{idle['per_s_by_class']['lease']:.2f} Lease, {idle['per_s_by_class']['read']:.2f} reads, "
            f"{idle['by_class']['write']} writes) in {reconciles} reconciles (up to {resync_rounds} resync "
            f"rounds account for {run.deployments * resync_rounds}); quietest {run.slice_s:g} s: "
            f"{quiet:.2f}/s against a background of {BACKGROUND_PER_S:g}/s"
            + (
                ""
                if settled is None
                else f", first in the {run.slice_s:g} s ending {settled * run.slice_s:g} s after all Ready"
            )
        ),
    }


def run_scale(run: ScaleRun, progress: Progress) -> dict[str, Any]:
    """Run the whole benchmark; returns the report (see `summary_lines`)."""
    run.check()
    run.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        bins = binaries.find_binaries()
    except (binaries.BinariesMissing, binaries.BuildError) as exc:
        raise BenchError(f"e2e binaries: {exc}") from None
    audit_log = (run.log_dir / "apiserver-audit.log").resolve()
    audit_log.unlink(missing_ok=True)
    policy = (run.log_dir / "audit-policy.yaml").resolve()
    policy.write_text(sm.audit_policy(OPERATOR_USER))
    audit_args = (f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}", "--audit-log-format=json")
    settings = ClusterSettings(
        node_count=run.nodes, wait_timeout_s=60.0 + 0.3 * run.nodes, extra_args={"kube-apiserver": audit_args}
    )
    plane = ControlPlane(bins, settings, name="operator-scale")
    progress(f"starting the control plane with {run.nodes} kwok H800 nodes")
    try:
        plane.start()
    except (ControlPlaneError, WaitTimeout, ApiError) as exc:
        raise BenchError(f"the control plane did not start: {exc}") from None
    op: OperatorProc | None = None
    try:
        cp: dict[str, Any] = {
            "start_s": plane.timings["controllers"],
            "timings_s": dict(plane.timings),
            "rss_mib_at_start": component_rss(plane),
        }
        progress(
            f"{run.nodes} nodes Ready in {plane.timings['nodes_ready']:.1f} s; control plane RSS "
            f"{cp['rss_mib_at_start']['total']:.0f} MiB"
        )
        k = plane.kube
        install_crds(k, list(crdgen.all_crds().values()), timeout_s=60, check=plane.check)
        install_operator_identity(k)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": run.namespace}}
        k.apply("/api/v1/namespaces", namespace)
        kubeconfig = service_account_kubeconfig(  # 2 h: longer than any run
            plane,
            k,
            run.log_dir / "operator.kubeconfig",
            namespace=OPERATOR_NS,
            name=OPERATOR_SA,
            expiration_s=7200,
        )
        op = OperatorProc(run, kubeconfig, run.log_dir / "operator.log")
        plane.wait(op.leading, "sbs-operator to hold its Lease", 90)
        time.sleep(STARTUP_SETTLE_S)
        conv = _converge(run, plane, op, progress)
        cp["rss_mib_converged"] = component_rss(plane)
        rss_converged = sm.rss_mib(op.proc.pid)
        idle = _idle(run, plane, op, progress)
        cp["rss_mib_end"] = component_rss(plane)
        cp["nodes_ready_end"] = plane.ready_nodes()
        for window in (conv["requests"], idle["requests"]):
            window["audit_calls"] = sm.audit_calls(audit_log, *window["window_unix"])
            window["audit_requests"] = sum(window["audit_calls"].values())
        report = {
            "config": _config(run),
            "operator_argv": op.argv,
            "control_plane": cp,
            "convergence": conv["convergence"],
            "reconcile": {"convergence": conv["reconcile"], "after_convergence": idle["reconcile"]},
            "operator_requests": {"convergence": conv["requests"], "after_convergence": idle["requests"]},
            "operator_rss_mib": {
                "converged": rss_converged,
                "end": sm.rss_mib(op.proc.pid),
                "peak": sm.rss_mib(op.proc.pid, "VmHWM"),
            },
            "hot_loop": verdict(idle["requests"], idle["reconcile"]["reconciles"], run),
        }
        op.check()
        return report
    except (WaitTimeout, ControlPlaneError, ApiError, OSError) as exc:
        raise BenchError(f"operator-scale failed: {exc}") from None
    finally:
        if op is not None:
            op.stop()
        plane.stop()


def _converge(run: ScaleRun, plane: ControlPlane, op: OperatorProc, progress: Progress) -> dict[str, Any]:
    sampler = Sampler(plane, op)
    k = plane.kube
    before, hist0 = sampler.requests(), sampler.reconciles()
    want_pods = run.deployments * run.pods_per_deployment
    progress(f"applying {run.deployments} SBSDeployments ({want_pods} engine pods)")
    t0 = time.monotonic()
    for i in range(run.deployments):
        k.create(collection_path(api.API_VERSION, api.PLURAL, run.namespace), deployment(run, i))
    next_note = t0 + run.slice_s
    while True:
        plane.check()
        op.check()
        ready, pods, pods_ready = readiness(k, run)
        now = time.monotonic()
        if ready == run.deployments and pods_ready >= want_pods:
            break
        if now - t0 > run.ready_timeout_s:
            tail = op.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(
                f"{ready}/{run.deployments} Ready after {run.ready_timeout_s:g} s; operator log:\n{tail}"
            )
        if now >= next_note:
            got = sampler.requests().minus(before)
            progress(
                f"t={now - t0:5.0f}s: {ready}/{run.deployments} Ready, {pods_ready}/{want_pods} engine "
                f"pods Ready ({pods} created); operator {got['requests']} requests ({got['per_s']:.1f}/s), "
                f"RSS {sm.rss_mib(op.proc.pid):.0f} MiB"
            )
            next_note += run.slice_s
        time.sleep(0.5)
    took = time.monotonic() - t0
    after, hist1 = sampler.requests(), sampler.reconciles()
    conv = after.minus(before)
    progress(f"all {run.deployments} Ready in {took:.1f} s ({pods_ready} engine pods Ready); operator "
             f"{conv['requests']} requests ({conv['per_s']:.1f}/s)")  # fmt: skip
    return {
        "convergence": {"apply_to_all_ready_s": round(took, 2), "deployments_ready": ready,
                        "engine_pods": pods, "engine_pods_ready": pods_ready},
        "reconcile": latency(hist1, hist0),
        "requests": conv,
    }  # fmt: skip


def _idle(run: ScaleRun, plane: ControlPlane, op: OperatorProc, progress: Progress) -> dict[str, Any]:
    sampler = Sampler(plane, op)
    start = prev = sampler.requests()
    hist0 = sampler.reconciles()
    slices = []
    progress(f"watching the operator's request rate for {run.idle_s:g} s after convergence")
    while prev.t - start.t < run.idle_s - 1e-3:
        time.sleep(max(0.0, min(run.slice_s, run.idle_s - (prev.t - start.t))))
        plane.check()
        op.check()
        now = sampler.requests()
        part = now.minus(prev)
        slices.append(part)
        progress(f"idle t={now.t - start.t:4.0f}s: operator {_req(part)}")
        prev = now
    idle = prev.minus(start)
    idle["slices_per_s"] = [s["per_s"] for s in slices]
    return {"requests": idle, "reconcile": latency(sampler.reconciles(), hist0)}


def _config(run: ScaleRun) -> dict[str, Any]:
    cfg = dataclasses.asdict(run)
    cfg["log_dir"] = str(run.log_dir)
    cfg["engine_pods"] = run.deployments * run.pods_per_deployment
    return cfg


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary table."""
    cp, conv = report["control_plane"], report["convergence"]
    req, rec, rss = report["operator_requests"], report["reconcile"], report["operator_rss_mib"]
    cfg = report["config"]
    shape = f"{cfg['nodes']} / {cfg['deployments']} / {cfg['engine_pods']}"
    started = (
        f"{cp['start_s']:.1f} (nodes Ready at {cp['timings_s']['nodes_ready']:.1f}; "
        f"{cp['nodes_ready_end']} Ready at the end)"
    )
    ready = f"{conv['apply_to_all_ready_s']:.1f} ({conv['engine_pods_ready']} engine pods Ready)"
    op_rss = f"{rss['converged']:.0f} / {rss['end']:.0f} / {rss['peak']:.0f}"
    rows = [
        ("nodes / deployments / engine pods", shape),
        ("control plane + nodes Ready (s)", started),
        ("RSS at start MiB: apiserver/etcd/kwok/total", _rss(cp["rss_mib_at_start"])),
        ("RSS converged MiB: apiserver/etcd/kwok/total", _rss(cp["rss_mib_converged"])),
        ("apply → all Ready (s)", ready),
        ("reconcile p50 / p99 (s), converging", _lat(rec["convergence"])),
        ("reconcile p50 / p99 (s), after", _lat(rec["after_convergence"])),
        ("operator requests/s, converging", _req(req["convergence"])),
        ("operator requests/s, after", _req(req["after_convergence"])),
        ("operator RSS MiB: converged / end / peak", op_rss),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{k:>{width}}  {v}" for k, v in rows]
    for when, r in req.items():
        calls = ", ".join(f"{what} {n}" for what, n in list(r.get("audit_calls", {}).items())[:8])
        lines.append(f"operator calls, {when.replace('_', ' ')} (audit log, top 8): {calls}")
    return [*lines, report["hot_loop"]["line"]]


def _rss(r: dict[str, float]) -> str:
    return " / ".join(f"{r.get(n, math.nan):.0f}" for n in ("kube-apiserver", "etcd", "kwok", "total"))


def _lat(r: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    p99 = (">" if r["p99_beyond_buckets"] else "") + f(r["p99_s"])
    return f"{f(r['p50_s'])} / {p99} ({r['reconciles']} reconciles)"


def _req(r: dict[str, Any]) -> str:
    c = r["per_s_by_class"]
    return (
        f"{r['per_s']:.2f}/s ({r['requests']} in {r['seconds']:.0f} s; Lease {c['lease']:.2f}, "
        f"reads {c['read']:.2f}, writes {c['write']:.2f}; 429s {r['rejected_429']}; "
        f"audit log {r.get('audit_requests', '-')}; all clients {r['all_clients_per_s']:.0f}/s)"
    )
