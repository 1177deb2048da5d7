"""The async Kubernetes REST client of the operator and the scheduler's discovery.

A thin layer over `kubernetes_asyncio`'s `ApiClient` (TLS, proxies, authentication and token
refresh are its and `sbs.kube.credentials`' business) that speaks the API's own paths
(`/api/v1/namespaces/ns/pods`) and JSON dicts, so callers read like the REST calls they make.
What is ours: server-side apply under a field manager, watches as async iterators, one retry with
renewed credentials after a 401, and a count of writes per verb, so tests can prove that a converged
reconcile writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from sbs.kube.credentials import Credentials

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
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "SBSDeployment": ("sbs.dev/v1alpha1", "sbsdeployments", True),
    "SBSRoleScaler": ("sbs.dev/v1alpha1", "sbsrolescalers", True),
    "SBSAutoscalingPolicy": ("sbs.dev/v1alpha1", "sbsautoscalingpolicies", False),
}

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class ApiError(Exception):
    """The API server answered with an error status (`status`, its `reason` and `message`)."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.method, self.path = method, path
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


def _query(params: dict[str, Any] | None) -> list[tuple[str, str]]:
    return [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (params or {}).items()]


def _error(method: str, path: str, status: int, reason: str, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return ApiError(method, path, status, body.get("reason", reason), body.get("message", text))
    return ApiError(method, path, status, reason, text)


class _Connection:
    """One `ApiClient` (connection pool), created on first use inside the running event loop."""

    def __init__(self, credentials: Credentials, user_agent: str) -> None:
        self.credentials, self.user_agent = credentials, user_agent
        self.api: ApiClient | None = None

    def get(self) -> ApiClient:
        if self.api is None:
            self.api = ApiClient(self.credentials.configuration)
            self.api.user_agent = self.user_agent
        return self.api

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None


class KubeClient:
    """A client of one API server; `fork()` shares its connections but counts its own writes."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_s: float = 30.0,
        field_manager: str = "sbs-operator",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.credentials = credentials
        self.field_manager = field_manager
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.writes: Counter[str] = Counter()
        self._conn = _Connection(credentials, field_manager)
        self._owns_conn = True

    def fork(self, *, headers: dict[str, str] | None = None) -> KubeClient:
        """A client on the same connections with its own write count (one per reconcile) and,
        optionally, extra headers (e.g. impersonation)."""
        twin = KubeClient(
            self.credentials,
            timeout_s=self.timeout_s,
            field_manager=self.field_manager,
            headers={**self.headers, **(headers or {})},
        )
        twin._conn, twin._owns_conn = self._conn, False
        return twin

    @property
    def server(self) -> str:
        return self.credentials.server

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_conn:
            await self._conn.close()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any,
        content_type: str,
        params: dict[str, Any] | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """The response (unread); a 401 is retried once with renewed credentials."""
        for attempt in (0, 1):
            headers = {"Accept": "application/json", "Content-Type": content_type, **self.headers}
            resp: aiohttp.ClientResponse = await self._conn.get().call_api(
                path,
                method,
                query_params=_query(params),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            if resp.status != 401 or attempt or not self.credentials.refreshable:
                return resp
            resp.release()
            await self.credentials.refresh(force=True)
        raise AssertionError("unreachable")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One API call: the decoded JSON answer (the text when it is not JSON; None when empty)."""
        if method != "GET":
            self.writes[method] += 1
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        resp = await self._send(
            method, path, body=body, content_type=content_type, params=params, timeout=timeout
        )
        try:
            text = await resp.text()
        finally:
            resp.release()
        if resp.status >= 400:
            raise _error(method, path, resp.status, resp.reason or "", text)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

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

    async def create(self, path: str, obj: dict[str, Any], **params: Any) -> Any:
        return await self.request("POST", path, body=obj, params=params)

    async def apply(self, obj: dict[str, Any], *, plural: str | None = None, force: bool = True) -> Any:
        """Server-side apply under this client's field manager."""
        return await self.request(
            "PATCH",
            object_path(obj, plural),
            body=obj,
            content_type=PATCH_TYPES["apply"],
            params={"fieldManager": self.field_manager, "force": force},
        )

    async def patch(self, path: str, patch: Any, *, kind: str = "merge", **params: Any) -> Any:
        """PATCH with `kind` one of merge, strategic, json (RFC 6902) or apply (server-side)."""
        return await self.request("PATCH", path, body=patch, content_type=PATCH_TYPES[kind], params=params)

    async def delete(
        self, path: str, *, missing_ok: bool = True, propagation: str | None = "Background", **params: Any
    ) -> Any:
        body = {"propagationPolicy": propagation} if propagation else None
        try:
            return await self.request("DELETE", path, body=body, params=params)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        timeout_s: float = 290,
        bookmarks: bool = True,
        **params: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`) until the server ends the stream after `timeout_s`."""
        query = {"watch": "true", "timeoutSeconds": str(int(timeout_s)), **params}
        if bookmarks:
            query["allowWatchBookmarks"] = "true"
        if resource_version:
            query["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=timeout_s + 30)
        resp = await self._send(
            "GET", path, body=None, content_type="application/json", params=query, timeout=timeout
        )
        try:
            if resp.status >= 400:
                raise _error("WATCH", path, resp.status, resp.reason or "", await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.close()
