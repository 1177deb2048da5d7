"""A small asyncio Kubernetes API client (aiohttp): kubeconfig or in-cluster credentials, JSON, SSA.

Just what the operator and the scheduler's discovery need: get, list, create, server-side apply,
merge patches (also of `/status`), delete and watch. Every write is counted by verb, so tests can
prove a converged reconcile writes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> (apiVersion, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Pod": ("v1", "pods", True),
    "Service": ("v1", "services", True),
    "ConfigMap": ("v1", "configmaps", True),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "Event": ("v1", "events", True),
    "Deployment": ("apps/v1", "deployments", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Lease": ("coordination.k8s.io/v1", "leases", True),
    "SBSDeployment": ("sbs.dev/v1alpha1", "sbsdeployments", True),
    "SBSRoleScaler": ("sbs.dev/v1alpha1", "sbsrolescalers", True),
    "SBSAutoscalingPolicy": ("sbs.dev/v1alpha1", "sbsautoscalingpolicies", False),
}


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


def collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def object_path(obj: dict[str, Any], plural: str | None = None) -> str:
    """The URL path of an object, from its apiVersion, kind, namespace and name."""
    kind = obj["kind"]
    if plural is None:
        if kind not in RESOURCES:
            raise KeyError(f"unknown kind {kind}; pass plural=")
        _, plural, _ = RESOURCES[kind]
    meta = obj["metadata"]
    return f"{collection_path(obj['apiVersion'], plural, meta.get('namespace'))}/{meta['name']}"


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None


def _material(section: dict[str, Any], key: str, tmp: Path) -> str | None:
    """A kubeconfig file reference or inline `-data` as a file path."""
    if section.get(f"{key}-data"):
        path = tmp / key
        path.write_bytes(base64.b64decode(section[f"{key}-data"]))
        return str(path)
    return section.get(key)


def load_kubeconfig(path: str | Path | None = None, context: str | None = None) -> Credentials:
    path = Path(path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube/config")
    cfg = yaml.safe_load(path.read_text())
    ctx_name = context or cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next((u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {})
    with tempfile.TemporaryDirectory() as tmp:
        ca = _material(cluster, "certificate-authority", Path(tmp))
        context_ssl: ssl.SSLContext | bool
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl = False
        else:
            context_ssl = ssl.create_default_context(cafile=ca)
            cert = _material(user, "client-certificate", Path(tmp))
            key = _material(user, "client-key", Path(tmp))
            if cert and key:
                context_ssl.load_cert_chain(cert, key)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return Credentials(server=cluster["server"].rstrip("/"), ssl=context_ssl, token=token)


def in_cluster() -> Credentials:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    host = f"[{host}]" if ":" in host else host
    ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    return Credentials(server=f"https://{host}:{port}", ssl=ctx, token=(SA_DIR / "token").read_text().strip())


def auto_credentials(kubeconfig: str | Path | None = None) -> Credentials:
    """An explicit kubeconfig, else in-cluster when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ and SA_DIR.is_dir():
        return in_cluster()
    return load_kubeconfig(kubeconfig)


class KubeClient:
    """One aiohttp session to one API server."""

    def __init__(
        self, creds: Credentials, *, timeout_s: float = 30.0, field_manager: str = "sbs-operator"
    ) -> None:
        self.creds = creds
        self.field_manager = field_manager
        self.writes: Counter[str] = Counter()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = True

    def fork(self) -> KubeClient:
        """A client sharing this one's connections but counting its own writes (one per reconcile)."""
        twin = KubeClient(self.creds, field_manager=self.field_manager)
        twin._timeout, twin._session, twin._owns_session = self._timeout, self._http(), False
        return twin

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "sbs-operator"}
            if self.creds.token:
                headers["Authorization"] = f"Bearer {self.creds.token}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(ssl=self.creds.ssl, limit=32)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
    ) -> Any:
        if method != "GET":
            self.writes[method] += 1
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()}
        async with self._http().request(
            method, self.creds.server + path, data=data, headers=headers, params=query, timeout=self._timeout
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    status = json.loads(text)
                    reason, message = status.get("reason", resp.reason), status.get("message", text)
                except ValueError:
                    reason, message = resp.reason or "", text
                raise ApiError(method, path, resp.status, reason, message)
            return json.loads(text) if text else None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Any:
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return (await self.get(path, **params)).get("items", [])

    async def create(self, path: str, obj: dict[str, Any]) -> Any:
        return await self.request("POST", path, body=obj)

    async def apply(self, obj: dict[str, Any], *, plural: str | None = None, force: bool = True) -> Any:
        """Server-side apply under this client's field manager."""
        return await self.request(
            "PATCH",
            object_path(obj, plural),
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": self.field_manager, "force": force},
        )

    async def patch(self, path: str, patch: Any, *, kind: str = "merge") -> Any:
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[kind]
        return await self.request("PATCH", path, body=patch, content_type=ctype)

    async def delete(self, path: str, *, missing_ok: bool = True, propagation: str = "Background") -> Any:
        try:
            return await self.request("DELETE", path, body={"propagationPolicy": propagation})
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def watch(
        self, path: str, *, resource_version: str | None = None, timeout_s: int = 290, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`) until the server ends the stream after `timeout_s`."""
        query = {"watch": "true", "timeoutSeconds": str(timeout_s), "allowWatchBookmarks": "true", **params}
        if resource_version:
            query["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s + 30)
        async with self._http().get(self.creds.server + path, params=query, timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError("WATCH", path, resp.status, resp.reason or "", await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
