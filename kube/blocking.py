"""`sbs.kube.client.KubeClient` for synchronous callers: the e2e harness, its node agent and tests.

Calls run on one background event loop per process (a daemon thread), so a `Kube` may be shared
between threads and called from inside another event loop (a test's). Clients built from the same
kubeconfig or certificates share one connection pool, closed when the process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from sbs.kube import credentials as creds
from sbs.kube.client import ApiError, KubeClient, collection_path

__all__ = ["ApiError", "Kube", "Watch", "collection_path"]

FIELD_MANAGER = "sbs-e2e"
T = TypeVar("T")

_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_roots: dict[tuple[str, ...], KubeClient] = {}


def _background_loop() -> asyncio.AbstractEventLoop:
    """The process's loop thread (a fresh one after a fork)."""
    global _loop
    with _lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sbs-kube-loop", daemon=True).start()
            _loop = (os.getpid(), loop)
            _roots.clear()
        return _loop[1]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()


@atexit.register
def _close_all() -> None:
    if _loop is None or _loop[0] != os.getpid():
        return
    roots = list(_roots.values())
    _roots.clear()
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(_close(roots), _loop[1]).result(timeout=5)


async def _close(clients: list[KubeClient]) -> None:
    for c in clients:
        await c.close()


def _root(key: tuple[str, ...], load: Coroutine[Any, Any, creds.Credentials]) -> KubeClient:
    """The shared client for `key`, created from `load`'s credentials on first use."""
    with _lock:
        root = _roots.get(key)
    if root is None:
        root = KubeClient(_run(load), field_manager=FIELD_MANAGER)
        with _lock:
            root = _roots.setdefault(key, root)
    else:
        load.close()  # never awaited: closed, so it warns nobody
    return root


def _file_key(*paths: Path | str) -> tuple[str, ...]:
    out = []
    for p in paths:
        path = Path(p).resolve()
        out += [str(path), hashlib.sha256(path.read_bytes()).hexdigest()]
    return tuple(out)


class Kube:
    """Blocking API calls on the API's own paths; answers are decoded JSON (text when not JSON)."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client

    @classmethod
    def from_kubeconfig(cls, path: Path | str, *, context: str | None = None) -> Kube:
        """A client for a kubeconfig's current (or named) context: certificates, tokens, exec plugins."""

        async def load() -> creds.Credentials:
            return await creds.from_kubeconfig(path, context=context)

        key = ("kubeconfig", context or "", *_file_key(path))
        return cls(_root(key, load()).fork())

    @classmethod
    def from_certificates(cls, server: str, *, ca_file: Path, cert_file: Path, key_file: Path) -> Kube:
        """A client authenticated with a client certificate (the harness's admin)."""

        async def load() -> creds.Credentials:
            return creds.from_certificates(server, ca_file=ca_file, cert_file=cert_file, key_file=key_file)

        key = ("certificates", server, *_file_key(ca_file, cert_file, key_file))
        return cls(_root(key, load()).fork())

    @property
    def server(self) -> str:
        return self._client.server

    def impersonate(self, user: str) -> Kube:
        """A copy of this client that acts as `user` (RBAC then applies to that user).

        E.g. `kube.impersonate("system:serviceaccount:sbs-system:sbs-operator")` tests the
        operator's Role as the apiserver enforces it.
        """
        return Kube(self._client.fork(headers={"Impersonate-User": user}))

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
        return _run(
            self._client.request(
                method, path, body=body, params=params, content_type=content_type, timeout_s=timeout_s
            )
        )

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
        return _run(self._client.patch(path, patch, kind=kind, **params))

    def apply(self, collection: str, obj: dict, *, field_manager: str = FIELD_MANAGER) -> dict:
        """Server-side apply of `obj` (with apiVersion and kind) under `collection`."""
        path = f"{collection}/{obj['metadata']['name']}"
        return self.patch(path, obj, kind="apply", fieldManager=field_manager, force=True)

    def delete(self, path: str, *, missing_ok: bool = False, **params: Any) -> Any:
        return _run(self._client.delete(path, missing_ok=missing_ok, propagation=None, **params))

    def watch(self, path: str, *, timeout_s: float = 60.0, **params: Any) -> Watch:
        """A watch on a collection; iterate it for events, `close()` it from any thread."""
        return Watch(self._client, path, timeout_s=timeout_s, params=params)


class Watch:
    """One watch request: yields `{"type": ..., "object": ...}` until the server ends it."""

    _END = object()

    def __init__(self, client: KubeClient, path: str, *, timeout_s: float, params: dict[str, Any]) -> None:
        self._client, self._path, self._timeout_s, self._params = client, path, timeout_s, params
        self._lock = threading.Lock()
        self._future: Future[None] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[dict]:
        events: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                stream = self._client.watch(
                    self._path, timeout_s=self._timeout_s, bookmarks=False, **self._params
                )
                async for event in stream:
                    events.put(event)
            except Exception as exc:  # handed to the iterating thread
                events.put(exc)
            finally:
                events.put(self._END)

        with self._lock:
            if self._closed:
                return
            self._future = asyncio.run_coroutine_threadsafe(pump(), _background_loop())
        while True:
            item = events.get()
            if item is self._END or self._closed:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            future = self._future
        if future is not None:
            future.cancel()
