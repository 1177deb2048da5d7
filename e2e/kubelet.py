"""What a kubelet does before it starts a container, for the node agent: env, files, token, argv.

`prepare(kube, pod, pod_dir, api)` resolves the pod's first container into a `Launch`:

- env: literal values, `valueFrom` (`fieldRef`, `secretKeyRef`, `configMapKeyRef`, `resourceFieldRef`
  as the literal quantity) and `envFrom`, with `$(VAR)` expanded as Kubernetes does (`$$` escapes,
  unknown names stay as written); `KUBERNETES_SERVICE_HOST`/`_PORT` point at the e2e API server;
- volumes: `configMap`, `secret`, `projected` (`serviceAccountToken` from a TokenRequest bound to the
  pod, `configMap`, `secret`, `downwardAPI`), `downwardAPI` and `emptyDir`, written under
  `pod_dir/volumes/<name>`; the ServiceAccount admission plugin's `kube-api-access-*` volume is a
  projected one, so the in-cluster token, CA and namespace arrive the same way;
- no chroot or mount namespace: each volume's `mountPath` is *mapped* to its directory. Every
  argument, env value and ConfigMap file that names a mount path (at a path boundary) is rewritten
  to the directory (longest mount first), and `service_account_dir` is where the process must look
  for `/var/run/secrets/kubernetes.io/serviceaccount` (`sbs.e2e.pod_shim` redirects it for this
  project's programs).

Limits: one container (the first; init and sidecar containers are not run), no `subPath`, no image
(the command runs on the host's PATH, or as `program` maps it), no user, capability, read-only root
or resource limits, and the process shares the host's network namespace (the shim keeps its
listeners on the pod IP). Tokens are requested for an hour and not rotated (runs are shorter).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sbs.kube.blocking import ApiError, Kube

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_TTL_S = 3600
_SOURCES = ("configMap", "secret", "projected", "downwardAPI")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(Exception):
    """The pod cannot be started as written (a missing ConfigMap key, an unsupported field)."""


@dataclasses.dataclass(frozen=True)
class ApiEndpoint:
    """Where in-cluster clients reach the API server."""

    host: str
    port: int


@dataclasses.dataclass
class Launch:
    """A container resolved for the host: argv and env with mount paths mapped, and its volumes."""

    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]
    """mountPath -> the directory holding that volume's files."""
    service_account_dir: Path | None


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names replaced, `$$` -> `$`, anything else kept."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(one, text)


def map_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """`text` with each mount path (at a path boundary) replaced by its directory, in one pass (a
    mapped directory may itself start with another mount path, e.g. `/tmp`), longest first."""
    if not mounts:
        return text
    by_path = {m.rstrip("/") or "/": str(d) for m, d in mounts.items()}
    alternatives = "|".join(re.escape(m) for m in sorted(by_path, key=len, reverse=True))
    pattern = re.compile(rf"({alternatives})(?=/|$|[\s\"',:;=])")
    return pattern.sub(lambda m: by_path[m.group(1)], text)


def field_value(pod: dict[str, Any], path: str) -> str:
    """A `fieldRef.fieldPath` of the pod (the paths the downward API supports)."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    if path not in values:
        raise PodSpecError(f"fieldRef {path!r} is not supported by the node agent")
    return values[path]


class _Lookups:
    """ConfigMaps and Secrets of the pod's namespace, each read once per start."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, bytes] | None:
        key = (kind, name)
        if key not in self._cache:
            plural = "configmaps" if kind == "configMap" else "secrets"
            try:
                obj = self.kube.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._cache[key] = None
            else:
                if kind == "configMap":
                    text = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                    binary = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                    self._cache[key] = {**text, **binary}
                else:
                    self._cache[key] = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return self._cache[key]

    def key(self, kind: str, ref: dict[str, Any]) -> bytes | None:
        data = self.data(kind, ref["name"])
        value = None if data is None else data.get(ref["key"])
        if value is None and not ref.get("optional"):
            raise PodSpecError(f"{kind} {self.namespace}/{ref['name']} has no key {ref['key']!r}")
        return value


def container_env(pod: dict[str, Any], container: dict[str, Any], look: _Lookups) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom first, then env in order)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        data = look.data(kind, ref["name"])
        if data is None and not ref.get("optional"):
            raise PodSpecError(f"envFrom {kind} {look.namespace}/{ref['name']} does not exist")
        for k, v in (data or {}).items():
            env[source.get("prefix", "") + k] = v.decode(errors="replace")
    for item in container.get("env") or []:
        name, source = item["name"], item.get("valueFrom")
        if source is None:
            env[name] = expand(item.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            kind, _, what = resource.partition(".")
            env[name] = str(((container.get("resources") or {}).get(kind) or {}).get(what, "0"))
        else:
            kind = "configMap" if "configMapKeyRef" in source else "secret"
            value = look.key(kind, source.get("configMapKeyRef") or source.get("secretKeyRef"))
            if value is not None:
                env[name] = value.decode(errors="replace")
    return env


def _write(directory: Path, files: Mapping[str, bytes], mode: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode | 0o200)  # the agent's own user must be able to rewrite it
        tmp.replace(path)


def _items(data: Mapping[str, bytes], items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {i["path"]: data[i["key"]] for i in items if i["key"] in data}


def _source_files(pod: dict[str, Any], source: dict[str, Any], look: _Lookups) -> dict[str, bytes]:
    """The files of one projected source (or a whole configMap/secret/downwardAPI volume)."""
    meta = pod["metadata"]
    for kind in ("configMap", "secret"):
        if kind in source:
            ref = source[kind]
            name = ref.get("name") or ref.get("secretName")
            data = look.data(kind, name)
            if data is None:
                if ref.get("optional"):
                    return {}
                raise PodSpecError(f"{kind} {meta['namespace']}/{name} does not exist")
            return _items(data, ref.get("items"))
    if "downwardAPI" in source:
        return {i["path"]: field_value(pod, i["fieldRef"]["fieldPath"]).encode()
                for i in source["downwardAPI"].get("items") or [] if "fieldRef" in i}  # fmt: skip
    if "serviceAccountToken" in source:
        spec = source["serviceAccountToken"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": max(TOKEN_TTL_S, int(spec.get("expirationSeconds") or 0)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                **({"audiences": [spec["audience"]]} if spec.get("audience") else {}),
            },
        }
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        answer = look.kube.create(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
        return {spec.get("path", "token"): answer["status"]["token"].encode()}
    raise PodSpecError(f"volume source {sorted(source)} is not supported by the node agent")


def _volume_files(pod: dict[str, Any], volume: dict[str, Any], look: _Lookups) -> dict[str, bytes]:
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for source in volume["projected"].get("sources") or []:
            files.update(_source_files(pod, source, look))
        return files
    if "emptyDir" in volume:
        return {}
    return _source_files(pod, volume, look)


def prepare(kube: Kube, pod: dict[str, Any], pod_dir: Path, api: ApiEndpoint) -> Launch:
    """Write the pod's volumes under `pod_dir` and resolve its first container for the host."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    container = spec["containers"][0]
    look = _Lookups(kube, meta["namespace"])
    env = container_env(pod, container, look)
    env.setdefault("KUBERNETES_SERVICE_HOST", api.host)
    env.setdefault("KUBERNETES_SERVICE_PORT", str(api.port))
    env.setdefault("HOSTNAME", spec.get("hostname") or meta["name"])
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    wanted = container.get("volumeMounts") or []
    for mount in wanted:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodSpecError(f"volumeMount {mount['name']!r}: subPath is not supported by the node agent")
        if mount["name"] not in volumes:
            raise PodSpecError(f"volumeMount {mount['name']!r} names no volume of the pod")
    mounts = {m["mountPath"]: pod_dir / "volumes" / m["name"] for m in wanted}
    for mount in wanted:
        volume = volumes[mount["name"]]
        files = _volume_files(pod, volume, look)
        if "configMap" in volume:  # a config file may name mount paths: map them as the argv is
            files = {k: _map_bytes(v, mounts) for k, v in files.items()}
        source = next(
            (volume[k] for k in ("configMap", "secret", "projected", "downwardAPI") if k in volume), {}
        )
        _write(mounts[mount["mountPath"]], files, int(source.get("defaultMode", 0o644)))
    command = [*(container.get("command") or []), *(container.get("args") or [])]
    if not command:
        raise PodSpecError("the container has no command: the node agent runs no images")
    argv = [map_paths(expand(a, env), mounts) for a in command]
    env = {k: map_paths(v, mounts) for k, v in env.items()}
    return Launch(argv, env, mounts, mounts.get(SA_MOUNT))


def _map_bytes(data: bytes, mounts: Mapping[str, Path]) -> bytes:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data
    return map_paths(text, mounts).encode()


def host_env(launch: Launch) -> dict[str, str]:
    """The process environment: the host's PATH and locale, then the container's variables."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    return {**keep, **launch.env}
