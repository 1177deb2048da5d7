"""Helpers of the `sbs.kube` tests: ServiceAccounts and their tokens, kubeconfigs, an exec credential
plugin and an HTTP CONNECT proxy, all local to a test."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sbs.kube.blocking import Kube
from sbs.kube.client import KubeClient

TOKEN_V1 = "client.authentication.k8s.io/v1"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SELF_SUBJECT_REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}


def service_account(kube: Kube, namespace: str, name: str, *, list_pods: bool = False) -> str:
    """Create ServiceAccount `name` (allowed to list pods in `namespace` when `list_pods`); its user."""
    ns = f"/api/v1/namespaces/{namespace}"
    kube.create(
        f"{ns}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
    )
    if list_pods:
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        kube.create(
            f"{rbac}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"{name}-pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        kube.create(
            f"{rbac}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{name}-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-pods"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
    return f"system:serviceaccount:{namespace}:{name}"


def secret(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """An empty Secret, to bind tokens to (deleting it revokes them)."""
    return kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}},
    )


def mint_token(kube: Kube, namespace: str, account: str, *, bound_to: dict[str, Any] | None = None) -> str:
    """A token of ServiceAccount `account` from the TokenRequest API, bound to a Secret if given."""
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if bound_to is not None:
        meta = bound_to["metadata"]
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": meta["name"],
            "uid": meta["uid"],
        }
    review = kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return review["status"]["token"]


async def whoami(client: KubeClient) -> str:
    """The user the API server authenticates `client` as (a SelfSubjectReview)."""
    review = await client.create(SELF_SUBJECT_REVIEWS, SELF_SUBJECT_REVIEW)
    return review["status"]["userInfo"]["username"]


def blocking_whoami(kube: Kube) -> str:
    review = kube.create(SELF_SUBJECT_REVIEWS, SELF_SUBJECT_REVIEW)
    return review["status"]["userInfo"]["username"]


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, user: dict[str, Any], **cluster: Any) -> Path:
    """A one-context kubeconfig: `server` with `ca_file`, extra cluster fields (e.g. `proxy-url`)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(ca_file), **cluster}}
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PLUGIN = '''\
#!{python}
"""An exec credential plugin: counts its runs and answers the next of responses.json (the last repeats)."""
import json, os, pathlib, sys

here = pathlib.Path(sys.argv[1])
runs = int((here / "runs").read_text()) if (here / "runs").exists() else 0
(here / "runs").write_text(str(runs + 1))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential", info
responses = json.loads((here / "responses.json").read_text())
status = responses[min(runs, len(responses) - 1)]
if "fail" in status:
    sys.exit(status["fail"])
print(json.dumps({{"apiVersion": "{api_version}", "kind": "ExecCredential", "status": status}}))
'''


class ExecPlugin:
    """An executable exec credential plugin in `directory`, answering what `respond` gave it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.command = directory / "credential-plugin"
        self.command.write_text(PLUGIN.format(python=sys.executable, api_version=TOKEN_V1))
        self.command.chmod(0o755)

    def respond(self, *statuses: dict[str, Any]) -> None:
        """The ExecCredential `status` of each run in turn; the last one repeats.
        `{"fail": "message"}` makes that run exit 1 with the message on stderr."""
        (self.dir / "responses.json").write_text(json.dumps(statuses))

    @property
    def runs(self) -> int:
        path = self.dir / "runs"
        return int(path.read_text()) if path.exists() else 0

    @property
    def user(self) -> dict[str, Any]:
        """The kubeconfig user that runs this plugin."""
        return {"exec": {"apiVersion": TOKEN_V1, "command": str(self.command), "args": [str(self.dir)]}}


class ConnectProxy:
    """A local HTTP CONNECT proxy on the running event loop: records each CONNECT target and pipes bytes."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                return
            self.connects.append(target)
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass  # a client gone, or the proxy stopping
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@contextlib.asynccontextmanager
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    proxy = await ConnectProxy().start()
    try:
        yield proxy
    finally:
        await proxy.stop()
