"""Kueue (`sigs.k8s.io/kueue`) on the e2e control plane: built from the Go module proxy, run as a
local process with URL webhooks, and a topology-aware queue per namespace.

Build: the Go module in `e2e/kueue/` pins the release and names `cmd/kueue` in a `tool` directive.
`ensure_kueue` builds `bin/kueue` into `<cache>/kueue-<version>_<go>_<hash>/` (the control plane's
cache root and atomic rename, `binaries.build_into`) and copies Kueue's CRDs and webhook manifests
next to it. Nothing of Kueue is kept in the repository.

Run: `Kueue(plane).start()` signs a 127.0.0.1 serving certificate with the plane's CA, applies the
CRDs (server-side; the conversion webhooks point at the local process), starts the unmodified binary
with the plane's admin kubeconfig, waits for `/readyz`, and only then registers the webhooks (they
fail closed). Pods are managed only in namespaces labelled `MANAGED_NAMESPACE_LABEL`, so a stopped
Kueue never blocks pods elsewhere. With its own certificate management off, Kueue insists on reading
/etc/kueue/metrics/certs; it therefore runs in a private mount namespace (and a user namespace when
not root) with an overlay on /etc that adds that folder; the host's /etc is never touched.

Pods of an admitted group keep Kueue's finalizer: a deleted one (Failed, see `nodes.POD_STOP_STAGE`)
stays until a replacement joins the group or the group's Workload is deleted. Deleting the Workload
is how a group is torn down (the `namespace` fixture does it for every test namespace).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import yaml
from sbs.e2e import binaries, nodes, pki
from sbs.e2e.control_plane import ComponentError, ControlPlane, free_port
from sbs.e2e.crds import install_crds
from sbs.e2e.waits import wait_until
from sbs.kube.blocking import ApiError, Kube
from sbs.operator import kueue as operator_kueue

log = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parent / "kueue"
KUEUE = "sigs.k8s.io/kueue"
COMMAND = "sigs.k8s.io/kueue/cmd/kueue"
COMPONENT = "kueue"
"""Its name among the plane's components (and its log, `<plane>/logs/kueue.log`)."""
NAMESPACE = "kueue-system"
MANAGED_NAMESPACE_LABEL = "kueue.x-k8s.io/managed"
"""Namespaces labelled `"true"` are Kueue's: its managedJobsNamespaceSelector and the pod webhooks."""
LOCAL_QUEUE = "sbs"
TOPOLOGY = FLAVOR = "h800"
HOSTNAME_LABEL = "kubernetes.io/hostname"
TOPOLOGY_LEVELS = (nodes.BLOCK_LABEL, nodes.RACK_LABEL, HOSTNAME_LABEL)
# The pod-group fields, as the operator writes them (one definition: sbs.operator.kueue).
QUEUE_NAME_LABEL = operator_kueue.QUEUE_LABEL
POD_GROUP_NAME_LABEL = operator_kueue.GROUP_LABEL
POD_GROUP_TOTAL_COUNT_ANNOTATION = operator_kueue.TOTAL_COUNT
POD_GROUP_SERVING_ANNOTATION = "kueue.x-k8s.io/pod-group-serving"
REQUIRED_TOPOLOGY_ANNOTATION = operator_kueue.REQUIRED_TOPOLOGY
API = f"/apis/{operator_kueue.API_VERSION}"
WORKLOADS = API + "/namespaces/{ns}/workloads"
WEBHOOK_API = "/apis/admissionregistration.k8s.io/v1"
WEBHOOK_CONFIGURATIONS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
"""kind -> name (the names a kustomize install of Kueue gives them); the resource is `kind.lower()+"s"`."""
METRICS_CERTS = "kueue/metrics/certs"
"""Where under /etc Kueue reads its metrics certificate (hard-coded in cmd/kueue)."""
QUEUE_RESOURCES = ("cpu", "memory", nodes.GPU_RESOURCE, "rdma/ib")
"""What an engine pod requests; a ClusterQueue must cover all of it to admit the pod."""
LARGE_QUOTA = {"cpu": "100000", "memory": "10000Ti", "rdma/ib": "100000"}


class KueueError(Exception):
    """Kueue could not be built or started, or is not in the state a caller needs."""


class KueueMissing(KueueError):
    """Kueue has not been built on this machine."""


# ---------------------------------------------------------------------------------------------
# Build.


@dataclasses.dataclass(frozen=True)
class KueueBuild:
    """A complete build: `bin/kueue`, `crds/*.yaml`, `webhooks.yaml` and `build.json`."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "kueue"

    @property
    def crd_dir(self) -> Path:
        return self.root / "crds"

    @property
    def webhooks(self) -> Path:
        return self.root / "webhooks.yaml"

    def is_complete(self) -> bool:
        files = (self.binary, self.webhooks, self.root / "build.json")
        return all(f.is_file() for f in files) and any(self.crd_dir.glob("*.yaml"))

    def build_info(self) -> dict:
        return json.loads((self.root / "build.json").read_text())


def read_version(gomod: str) -> str:
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(KUEUE)}\s+(v\S+)", gomod, re.M)
    if not m:
        raise KueueError(f"e2e/kueue/go.mod: no require line for {KUEUE}")
    return m[1]


def cache_key(version: str, go_version: str, gomod: str, gosum: str) -> str:
    return f"kueue-{version}_{go_version}_{binaries.module_digest(gomod, gosum)}"


def conversion_patches(kustomization: str) -> list[str]:
    """The conversion-webhook patches Kueue's CRD kustomization enables (not commented out)."""
    return re.findall(r"^\s*-\s*path:\s*(patches/webhook_in_\S+\.yaml)\s*$", kustomization, re.M)


def go_env(root: Path) -> dict[str, str]:
    """The control plane's Go environment with a build cache of Kueue's own (wiped on its own)."""
    return {**binaries.go_env(root), "GOCACHE": str(root / "go" / "build-kueue")}


def build_for(root: Path | None = None) -> KueueBuild:
    """The cache directory for the pinned release (built or not)."""
    root = root or binaries.cache_root()
    gomod, gosum = (MODULE_DIR / "go.mod").read_text(), (MODULE_DIR / "go.sum").read_text()
    go_version = binaries.local_go_version(go_env(root))
    return KueueBuild(root / cache_key(read_version(gomod), go_version, gomod, gosum))


def find_kueue() -> KueueBuild:
    """The built Kueue, or `KueueMissing` saying how to build it."""
    build = build_for()
    if not build.is_complete():
        raise KueueMissing(f"Kueue is not built ({build.root} is incomplete): run `make e2e-bins`")
    return build


def ensure_kueue(log: Callable[[str], None] = print) -> KueueBuild:
    """Build Kueue for the pinned release unless a complete build is cached."""
    root = binaries.cache_root()
    env = go_env(root)
    build = build_for(root)
    if build.is_complete():
        log(f"kueue: cached in {build.root}")
        return build
    version = read_version((MODULE_DIR / "go.mod").read_text())
    started = time.monotonic()
    log(f"kueue {version}: building into {build.root} (about 3 min cold on 2 idle cores)")
    info = json.loads(
        binaries.run_go(["mod", "download", "-json", f"{KUEUE}@{version}"], env, cwd=MODULE_DIR)
    )
    if info.get("Error"):
        raise binaries.BuildError(f"go mod download {KUEUE}@{version}: {info['Error']}")
    source = Path(info["Dir"]) / "config" / "components"
    binaries.run_go(["mod", "download"], env, cwd=MODULE_DIR)
    downloaded = time.monotonic()

    def fill(tmp: Path) -> None:
        flags = f"-s -w -X {KUEUE}/pkg/version.GitVersion={version}"
        binaries.run_go(["build", "-trimpath", "-ldflags", flags, "-o", str(tmp / "bin" / "kueue"), COMMAND],
                        env, cwd=MODULE_DIR)  # fmt: skip
        (tmp / "crds").mkdir()
        for crd in sorted((source / "crd" / "bases").glob("*.yaml")):
            shutil.copyfile(crd, tmp / "crds" / crd.name)
        shutil.copyfile(source / "webhook" / "manifests.yaml", tmp / "webhooks.yaml")
        patches = conversion_patches((source / "crd" / "kustomization.yaml").read_text())
        conversion = sorted(
            yaml.safe_load((source / "crd" / p).read_text())["metadata"]["name"] for p in patches
        )
        seconds = {
            "download": round(downloaded - started, 1),
            "build": round(time.monotonic() - downloaded, 1),
        }
        go = binaries.local_go_version(env)
        build_info = {"version": version, "go": go, "conversion": conversion, "seconds": seconds}
        (tmp / "build.json").write_text(json.dumps(build_info, indent=2) + "\n")

    binaries.build_into(build.root, fill)
    log(f"kueue: built in {time.monotonic() - started:.0f} s -> {build.binary}")
    return build


# ---------------------------------------------------------------------------------------------
# Objects (pure).


def webhook_configurations(manifests: str, *, url: str, ca_bundle: str) -> list[dict]:
    """Kueue's webhook configurations for a local process: only the pod and kueue.x-k8s.io webhooks
    (the other integrations are off), called at `url` + path; the pod webhooks only in managed
    namespaces."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        hooks = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if not (path.endswith("--v1-pod") or "-kueue-x-k8s-io-" in path):
                continue
            hook = {**hook, "clientConfig": {"url": url + path, "caBundle": ca_bundle}, "timeoutSeconds": 10}
            if path.endswith("--v1-pod"):
                hook["namespaceSelector"] = {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}}
            hooks.append(hook)
        name = WEBHOOK_CONFIGURATIONS[doc["kind"]]
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": {"name": name},
                    "webhooks": hooks})  # fmt: skip
    return out


def with_conversion(crds: Sequence[dict], names: Sequence[str], *, url: str, ca_bundle: str) -> list[dict]:
    """The CRDs, those named in `names` converting their versions through the webhook at `url`."""
    webhook = {
        "clientConfig": {"url": url + "/convert", "caBundle": ca_bundle},
        "conversionReviewVersions": ["v1"],
    }
    return [
        {**crd, "spec": {**crd["spec"], "conversion": {"strategy": "Webhook", "webhook": webhook}}}
        if crd["metadata"]["name"] in names
        else crd
        for crd in crds
    ]


def config(*, webhook_port: int, metrics_port: int, health_port: int, cert_dir: Path) -> dict:
    """Kueue's configuration: standalone, only the pod integration, only managed namespaces."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": ["pod"]},
        # Otherwise it serves an aggregated API on a fixed port (8082).
        "featureGates": {"VisibilityOnDemand": False},
    }


def overlay_argv(argv: Sequence[str], *, upper: Path, work: Path, root: bool) -> list[str]:
    """`argv` in a private mount namespace whose /etc is an overlay adding `upper`'s files."""
    for path in (upper, work):
        if re.search(r"[,:\s]", str(path)):
            raise KueueError(f"{path}: an overlay directory cannot contain commas, colons or spaces")
    mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
    userns = [] if root else ["--user", "--map-root-user"]
    namespaces = ["unshare", *userns, "--mount", "--propagation", "private"]
    return [*namespaces, "sh", "-c", f"{mount} && exec {shlex.join(argv)}"]


# ---------------------------------------------------------------------------------------------
# The process.


class Kueue:
    """Kueue on one control plane: `start()`, then `stop()` (before the plane stops)."""

    def __init__(self, plane: ControlPlane, build: KueueBuild | None = None, *, log_level: int = 2) -> None:
        self.plane = plane
        self.build = build
        self.log_level = log_level
        self.ports: dict[str, int] = {}

    @property
    def dir(self) -> Path:
        return self.plane.dir / "kueue"

    @property
    def log_path(self) -> Path:
        return self.plane.log_path(COMPONENT)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports['webhook']}"

    def start(self) -> Kueue:
        """Certificates, CRDs, the process, then the webhooks; returns once they answer."""
        build = self.build = self.build or find_kueue()
        if not build.is_complete():
            raise KueueMissing(f"Kueue is not built ({build.root} is incomplete): run `make e2e-bins`")
        missing = [tool for tool in ("unshare", "mount", "sh") if shutil.which(tool) is None]
        if missing:
            raise KueueError(f"Kueue needs {', '.join(missing)} (util-linux) to get its /etc overlay")
        if COMPONENT in self.plane.components:
            raise KueueError(f"Kueue already runs on cluster {self.plane.name!r}")
        t0 = time.monotonic()
        try:
            self._start(build)
        except BaseException:
            self.stop()
            raise
        log.info("Kueue ready on %s in %.1f s", self.url, time.monotonic() - t0)
        return self

    def _start(self, build: KueueBuild) -> None:
        plane, kube = self.plane, self.plane.kube
        self.ports = {"webhook": free_port(), "metrics": free_port(), "health": free_port()}
        certs, upper, work = self.dir / "certs", self.dir / "etc" / "upper", self.dir / "etc" / "work"
        for d in (certs, upper / METRICS_CERTS, work):
            d.mkdir(parents=True, exist_ok=True)
        pki.write_serving_cert(plane.pki, certs, "kueue")
        for name in ("tls.crt", "tls.key"):
            shutil.copy2(certs / name, upper / METRICS_CERTS / name)
        ca_bundle = base64.b64encode(plane.pki.ca_crt.read_bytes()).decode()

        kube.apply(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        crds = [yaml.safe_load(f.read_text()) for f in sorted(build.crd_dir.glob("*.yaml"))]
        conversion = build.build_info()["conversion"]
        install_crds(kube, with_conversion(crds, conversion, url=self.url, ca_bundle=ca_bundle),
                     timeout_s=plane.settings.wait_timeout_s, check=plane.check)  # fmt: skip

        cfg = config(webhook_port=self.ports["webhook"], metrics_port=self.ports["metrics"],
                     health_port=self.ports["health"], cert_dir=certs)  # fmt: skip
        (self.dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        argv = [str(build.binary), f"--config={self.dir / 'config.json'}", f"--kubeconfig={plane.kubeconfig}",
                f"--zap-log-level={self.log_level}"]  # fmt: skip
        # A component of the plane: its log is in the plane's reports, and `plane.check()` (every
        # `plane.wait`) fails at once when it has exited.
        plane.start_process(COMPONENT, overlay_argv(argv, upper=upper, work=work, root=os.geteuid() == 0))
        health = f"http://127.0.0.1:{self.ports['health']}/readyz"
        try:
            plane.wait(lambda: _http_ok(health), "Kueue /readyz")
            for kind, doc in zip(WEBHOOK_CONFIGURATIONS, self._webhooks(build, ca_bundle), strict=True):
                kube.apply(f"{WEBHOOK_API}/{kind.lower()}s", doc)
            # A dry-run create goes through the validating webhook: the apiserver reaches Kueue.
            flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                      "metadata": {"name": "sbs-webhook-probe"}}  # fmt: skip
            plane.wait(
                lambda: kube.create(f"{API}/resourceflavors", flavor, dryRun="All"), "Kueue's webhooks"
            )
        except ComponentError as exc:
            if exc.name != COMPONENT:
                raise
            raise KueueError(
                f"Kueue exited at start (code {exc.returncode}). It runs the unmodified binary under "
                "`unshare` with an overlay on /etc, which needs mount namespaces and overlayfs (and user "
                f"namespaces when not root). Last lines of {exc.log_path}:\n{exc.tail}"
            ) from None

    def _webhooks(self, build: KueueBuild, ca_bundle: str) -> list[dict]:
        docs = webhook_configurations(build.webhooks.read_text(), url=self.url, ca_bundle=ca_bundle)
        by_kind = {d["kind"]: d for d in docs}
        return [by_kind[kind] for kind in WEBHOOK_CONFIGURATIONS]

    def stop(self) -> None:
        """Deregister the webhooks (pods in managed namespaces are admitted again), then stop Kueue.

        Pods it manages keep their finalizer until Kueue runs again; the CRDs and queues stay.
        """
        kube = self.plane.kube
        for kind, name in WEBHOOK_CONFIGURATIONS.items():
            try:
                kube.delete(f"{WEBHOOK_API}/{kind.lower()}s/{name}", missing_ok=True)
            except (ApiError, OSError, aiohttp.ClientError) as exc:
                log.warning("deregistering Kueue's webhook configuration %s: %s", name, exc)
        comp = self.plane.components.pop(COMPONENT, None)
        if comp is not None:
            self.plane.terminate([comp])
        for parent, dirs, _ in os.walk(self.dir):  # overlayfs leaves its work dir at mode 000
            for d in dirs:
                os.chmod(os.path.join(parent, d), 0o700)
        shutil.rmtree(self.dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
        return resp.status == 200


# ---------------------------------------------------------------------------------------------
# Queues.


@dataclasses.dataclass(frozen=True)
class Queues:
    """What `install_queues` made: pods labelled `QUEUE_NAME_LABEL: local_queue` in `namespace`
    are admitted by ClusterQueue `cluster_queue` onto flavor `FLAVOR` (Topology `TOPOLOGY`)."""

    namespace: str
    cluster_queue: str
    local_queue: str = LOCAL_QUEUE


def queue_objects(namespace: str, *, name: str, gpus: int, topology_levels: Sequence[str]) -> list[dict]:
    """Topology, ResourceFlavor, ClusterQueue `name` (for `namespace` only) and LocalQueue."""
    gvk = {"apiVersion": "kueue.x-k8s.io/v1beta2"}
    quotas = {**LARGE_QUOTA, nodes.GPU_RESOURCE: str(gpus)}
    return [
        {**gvk, "kind": "Topology", "metadata": {"name": TOPOLOGY},
         "spec": {"levels": [{"nodeLabel": level} for level in topology_levels]}},
        {**gvk, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
         "spec": {"nodeLabels": {nodes.GPU_PRODUCT_LABEL: nodes.NodeShape().gpu_product},
                  "topologyName": TOPOLOGY}},
        {**gvk, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{"coveredResources": list(QUEUE_RESOURCES), "flavors": [
                {"name": FLAVOR,
                 "resources": [{"name": r, "nominalQuota": quotas[r]} for r in QUEUE_RESOURCES]},
            ]}],
        }},
        {**gvk, "kind": "LocalQueue", "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
         "spec": {"clusterQueue": name}},
    ]  # fmt: skip


def _collection(obj: dict) -> str:
    plural = {"Topology": "topologies"}.get(obj["kind"], obj["kind"].lower() + "s")
    ns = obj["metadata"].get("namespace")
    return f"{API}/namespaces/{ns}/{plural}" if ns else f"{API}/{plural}"


def _active(kube: Kube, path: str) -> bool:
    conditions = (kube.get(path).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Active" and c["status"] == "True" for c in conditions)


def install_queues(
    kube: Kube, namespace: str, *, name: str, gpus: int, topology_levels: Sequence[str] = TOPOLOGY_LEVELS,
    timeout_s: float = 30.0,
) -> Queues:  # fmt: skip
    """Create or update (server-side apply) the shared Topology and ResourceFlavor `h800`, ClusterQueue
    `name` with `gpus` GPUs (cpu, memory and RDMA without limit), label `namespace` as Kueue's and give
    it LocalQueue `LOCAL_QUEUE`; returns once both queues are Active."""
    kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": {MANAGED_NAMESPACE_LABEL: "true"}}})
    objs = queue_objects(namespace, name=name, gpus=gpus, topology_levels=topology_levels)
    for obj in objs:
        kube.apply(_collection(obj), obj)
    for obj in objs[2:]:
        path = f"{_collection(obj)}/{obj['metadata']['name']}"
        wait_until(
            lambda p=path: _active(kube, p), timeout_s, f"{obj['kind']} {obj['metadata']['name']} Active"
        )
    return Queues(namespace=namespace, cluster_queue=name)


def delete_queues(kube: Kube, namespace: str, *, name: str) -> None:
    """Delete the LocalQueue and ClusterQueue `name` (the shared Topology and flavor stay).

    The namespace keeps its label, so Kueue still finalizes its pods as they go; admitted Workloads
    hold the ClusterQueue (a finalizer) until they are deleted too.
    """
    kube.delete(f"{API}/namespaces/{namespace}/localqueues/{LOCAL_QUEUE}", missing_ok=True)
    kube.delete(f"{API}/clusterqueues/{name}", missing_ok=True)
