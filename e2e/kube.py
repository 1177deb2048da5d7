"""A small Kubernetes API client on the standard library, for the harness, tests and node agent.

Paths are the API's own (`/api/v1/namespaces/ns/pods`), so a test reads like the REST calls it
makes. Every call opens its own connection, so one `Kube` is safe to share between threads.
It only ever connects to the server in its kubeconfig, which for this harness is 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

FIELD_MANAGER = "sbs-e2e"


class ApiError(Exception):
    """The API server answered a request with an error status."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.method, self.path, self.status, self.reason, self.message = method, path, status, reason, message


class WaitTimeout(Exception):
    """A condition did not become true in time."""


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    *,
    check: Callable[[], None] | None = None,
    interval_s: float = 0.1,
) -> Any:
    """Poll `predicate` until it returns something truthy, which is returned.

    `check` runs before every poll and may raise (the harness passes one that fails at once
    when a control plane process has died). On timeout, `WaitTimeout` says what was awaited
    and the last value or error seen.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        if check is not None:
            check()
        try:
            last = predicate()
        except (ApiError, OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r:.500})")
        time.sleep(interval_s)


class Kube:
    """A client authenticated with a client certificate, as in the harness's admin kubeconfig."""

    def __init__(
        self, server: str, *, ca_file: Path, cert_file: Path, key_file: Path, timeout_s: float = 30.0
    ) -> None:
        url = urllib.parse.urlsplit(server)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"server must be an https:// URL, got {server!r}")
        self.server = server
        self.host, self.port = url.hostname, url.port or 443
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._headers: list[tuple[str, str]] = []

    def impersonate(self, user: str, groups: tuple[str, ...] = ()) -> Kube:
        """A copy of this client that acts as `user` (RBAC then applies to that user).

        E.g. `kube.impersonate("system:serviceaccount:sbs-system:sbs-operator")` tests the
        operator's Role as the apiserver enforces it.
        """
        other = copy.copy(self)
        other._headers = [("Impersonate-User", user)] + [("Impersonate-Group", g) for g in groups]
        return other

    @classmethod
    def from_kubeconfig(cls, path: Path | str, **kwargs: Any) -> Kube:
        """A client for the current context of a kubeconfig using certificate authentication."""
        config = yaml.safe_load(Path(path).read_text())
        ctx_name = config["current-context"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        secrets = Path(tempfile.mkdtemp(prefix="sbs-kube-"))
        os.chmod(secrets, 0o700)

        def material(section: dict, key: str) -> Path:
            if f"{key}-data" in section:
                out = secrets / key
                out.write_bytes(base64.b64decode(section[f"{key}-data"]))
                return out
            return Path(section[key])

        try:
            return cls(
                cluster["server"],
                ca_file=material(cluster, "certificate-authority"),
                cert_file=material(user, "client-certificate"),
                key_file=material(user, "client-key"),
                **kwargs,
            )
        finally:  # the SSL context has read them
            shutil.rmtree(secrets, ignore_errors=True)

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self, timeout_s: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=timeout_s)

    def _header_list(self, content_type: str | None) -> list[tuple[str, str]]:
        headers = [("Accept", "application/json"), *self._headers]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        return headers

    @staticmethod
    def _url(path: str, params: dict[str, Any] | None) -> str:
        if not params:
            return path
        query = {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items()}
        return f"{path}?{urllib.parse.urlencode(query)}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON body (or the text for non-JSON answers)."""
        url = self._url(path, params)
        data = None if body is None else body if isinstance(body, bytes | str) else json.dumps(body)
        conn = self._connect(timeout_s or self.timeout_s)
        try:
            payload = data.encode() if isinstance(data, str) else data
            conn.putrequest(method, url)
            for key, value in self._header_list(content_type if payload is not None else None):
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(payload or b"")))
            conn.endheaders(payload)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        text = raw.decode(errors="replace")
        try:
            decoded = json.loads(text) if text else None
        except json.JSONDecodeError:
            decoded = text
        if resp.status >= 400:
            message = decoded.get("message", text) if isinstance(decoded, dict) else text
            raise ApiError(method, url, resp.status, resp.reason, message)
        return decoded

    # -- verbs ------------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, path: str, obj: dict, **params: Any) -> dict:
        return self.request("POST", path, obj, params=params)

    def patch(self, path: str, patch: Any, *, kind: str = "merge", **params: Any) -> dict:
        """PATCH with `kind` one of merge, strategic, json (RFC 6902) or apply (server-side)."""
        types = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
            "apply": "application/apply-patch+yaml",
        }
        return self.request("PATCH", path, patch, params=params, content_type=types[kind])

    def apply(self, collection: str, obj: dict, *, field_manager: str = FIELD_MANAGER) -> dict:
        """Server-side apply of `obj` (with apiVersion and kind) under `collection`."""
        path = f"{collection}/{obj['metadata']['name']}"
        return self.patch(path, obj, kind="apply", fieldManager=field_manager, force=True)

    def delete(self, path: str, *, missing_ok: bool = False, **params: Any) -> Any:
        try:
            return self.request("DELETE", path, params=params)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def watch(self, path: str, *, timeout_s: float = 60.0, **params: Any) -> Watch:
        """A watch on a collection; iterate it for events, `close()` it from any thread."""
        return Watch(self, path, timeout_s=timeout_s, params=params)


class Watch:
    """One watch request: yields `{"type": ..., "object": ...}` until the server ends it."""

    def __init__(self, kube: Kube, path: str, *, timeout_s: float, params: dict[str, Any]) -> None:
        self._kube = kube
        self._url = Kube._url(path, {**params, "watch": True, "timeoutSeconds": int(timeout_s)})
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None
        self._closed = False

    def __iter__(self) -> Iterator[dict]:
        conn = self._kube._connect(self._timeout_s + 10)
        with self._lock:
            if self._closed:
                return
            self._conn = conn
        try:
            conn.putrequest("GET", self._url)
            for key, value in self._kube._header_list(None):
                conn.putheader(key, value)
            conn.endheaders()
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ApiError("GET", self._url, resp.status, resp.reason, resp.read().decode()[:500])
            while not self._closed:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError):
            if not self._closed:
                raise
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
