"""Credentials for the API server, loaded by `kubernetes_asyncio` (the maintained async client).

`load()` picks, like kubectl and client-go: an explicit kubeconfig, else the pod's ServiceAccount
when running in a cluster, else `$KUBECONFIG` (merged, `:`-separated) or `~/.kube/config`.
Everything the kubeconfig format offers comes with it: client certificates, tokens, `exec`
credential plugins (what EKS, GKE and AKS kubeconfigs use), `proxy-url`, `tls-server-name`;
`HTTPS_PROXY`/`NO_PROXY` are honoured as well.

Bearer tokens are refreshed without a restart:
- the ServiceAccount token file is read again whenever it changes on disk (the kubelet rotates
  bound tokens well before they expire);
- an exec plugin runs again shortly before the `expirationTimestamp` it reported;
- `refresh(force=True)` (what the client calls on a 401) re-reads the file or re-runs the plugin.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_REFRESH_MARGIN_S = 30.0
"""An exec plugin's token is renewed this long before the expiry it reported."""


class CredentialsError(Exception):
    """No usable credentials: the message names the kubeconfig, context or file at fault."""


class _TokenSource(Protocol):
    async def token(self, force: bool) -> str:
        """`Bearer <token>`, renewed when due or when `force`d."""
        ...

    def expiry(self) -> dt.datetime | None: ...


class _FileToken:
    """A token file (the ServiceAccount's), read again whenever it changes or on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""

    async def token(self, force: bool) -> str:
        return self.read(force)

    def read(self, force: bool = False) -> str:
        """`Bearer <token>`: the file read again when it changed on disk, or when `force`d."""
        st = self.path.stat()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if force or stamp != self._stamp:
            text = self.path.read_text().strip()
            if not text:
                raise CredentialsError(f"{self.path}: the token file is empty")
            self._value, self._stamp = f"Bearer {text}", stamp
        return self._value

    def expiry(self) -> dt.datetime | None:
        return None


class _ExecToken:
    """A kubeconfig user's `exec` plugin, run by `kubernetes_asyncio`'s loader when due.

    When the plugin fails, `CredentialsError` names the kubeconfig; a token that has not expired yet
    is kept meanwhile, and the next request runs the plugin again."""

    def __init__(self, loader: Any, source: str) -> None:
        self.loader, self.source = loader, source
        self._value: str = loader.token

    async def token(self, force: bool) -> str:
        expiry = self.expiry()
        due = expiry is not None and expiry.timestamp() - EXEC_REFRESH_MARGIN_S <= _now()
        if force or due:
            # The loader caches the credential until the expiry it saw; drop that to run it again.
            if expiry is not None:
                del self.loader.exec_plugin_expiry
            try:
                await self.loader.load_from_exec_plugin()
            except (ConfigException, OSError, KeyError, TypeError, ValueError) as exc:
                if expiry is not None:
                    self.loader.exec_plugin_expiry = expiry  # due again: the next request retries
                if force or expiry is None or expiry.timestamp() <= _now():
                    raise CredentialsError(f"{self.source}: the exec plugin failed: {exc}") from None
                return self._value  # not expired yet: still usable
            self._value = self.loader.token
        return self._value

    def expiry(self) -> dt.datetime | None:
        return getattr(self.loader, "exec_plugin_expiry", None)


@functools.cache
def _secrets_dir() -> str:
    """A private directory (mode 0700) for certificate and key data inlined in kubeconfigs: Python's
    TLS loads them from files only. Each file is 0600; all are removed when the process exits."""
    path = tempfile.mkdtemp(prefix="sbs-kube-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


@dataclass
class Credentials:
    """Where the API server is and how to authenticate to it (a `kubernetes_asyncio` Configuration)."""

    configuration: Configuration
    source: str
    """Where they came from: `in-cluster` or the kubeconfig path, for messages."""
    _tokens: _TokenSource | None = None

    def __post_init__(self) -> None:
        if self._tokens is not None:
            tokens = self._tokens

            async def hook(cfg: Configuration) -> None:
                cfg.api_key["BearerToken"] = await tokens.token(False)

            self.configuration.refresh_api_key_hook = hook

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @property
    def refreshable(self) -> bool:
        """Whether `refresh` can obtain a new token (a token file or an exec plugin)."""
        return self._tokens is not None

    async def refresh(self, *, force: bool = False) -> None:
        """Renew the bearer token when it is due (always with `force`, e.g. after a 401)."""
        if self._tokens is not None:
            self.configuration.api_key["BearerToken"] = await self._tokens.token(force)

    def login_fields(self) -> dict[str, Any]:
        """The fields of a kopf `ConnectionInfo` for these credentials (the current token)."""
        cfg = self.configuration
        bearer = cfg.api_key.get("BearerToken", "")
        token = bearer.split(" ", 1)[1] if bearer.startswith("Bearer ") else None
        return {
            "server": self.server,
            "ca_path": cfg.ssl_ca_cert,
            "insecure": not cfg.verify_ssl,
            "certificate_path": cfg.cert_file,
            "private_key_path": cfg.key_file,
            "scheme": "Bearer" if token else None,
            "token": token,
            "proxy_url": cfg.proxy,
            "trust_env": True,
            "expiration": self._tokens.expiry() if self._tokens is not None else None,
        }


async def load(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    service_account_dir: Path = SA_DIR,
    environ: Mapping[str, str] = os.environ,
) -> Credentials:
    """An explicit kubeconfig, else in-cluster when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in environ and service_account_dir.is_dir():
        return in_cluster(service_account_dir, environ)
    return await from_kubeconfig(kubeconfig, context=context, environ=environ)


async def from_kubeconfig(
    path: str | Path | None = None, *, context: str | None = None, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """A kubeconfig's current (or named) context; `path` None means $KUBECONFIG, else ~/.kube/config."""
    where = str(path) if path is not None else environ.get("KUBECONFIG") or "~/.kube/config"
    files = [Path(p).expanduser() for p in where.split(os.pathsep) if p]
    if not any(f.is_file() for f in files):
        raise CredentialsError(f"{where}: no such kubeconfig file")
    cfg = Configuration()
    try:
        loader = await load_kube_config(
            config_file=os.pathsep.join(str(f) for f in files),
            context=context,
            client_configuration=cfg,
            persist_config=False,
            temp_file_path=_secrets_dir(),
        )
    except (ConfigException, KeyError, TypeError, ValueError, AssertionError, yaml.YAMLError) as exc:
        what = f"context {context!r}" if context else "the current context"
        raise CredentialsError(f"{where}: cannot use {what}: {exc or type(exc).__name__}") from None
    user = getattr(loader, "_user", None)
    # A plugin may answer with a client certificate instead of a token: that one is not renewed
    # (the TLS context of a client holds it for the client's life).
    exec_token = user is not None and "exec" in user and hasattr(loader, "token")
    return Credentials(cfg, where, _ExecToken(loader, where) if exec_token else None)


def in_cluster(service_account_dir: Path = SA_DIR, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The pod's ServiceAccount: `KUBERNETES_SERVICE_HOST`/`_PORT`, its CA and its (rotating) token."""
    cfg = Configuration()
    token_file = service_account_dir / "token"
    try:
        InClusterConfigLoader(
            token_filename=str(token_file),
            cert_filename=str(service_account_dir / "ca.crt"),
            try_refresh_token=False,
            environ=dict(environ),
        ).load_and_set(cfg)
    except ConfigException as exc:
        raise CredentialsError(f"in-cluster config ({service_account_dir}): {exc}") from None
    tokens = _FileToken(token_file)
    cfg.api_key["BearerToken"] = tokens.read()  # the loader's copy keeps a trailing newline
    return Credentials(cfg, "in-cluster", tokens)


def from_certificates(server: str, *, ca_file: Path, cert_file: Path, key_file: Path) -> Credentials:
    """Client-certificate credentials (the e2e harness's admin)."""
    cfg = Configuration(host=server)
    cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file = str(ca_file), str(cert_file), str(key_file)
    return Credentials(cfg, f"certificate {cert_file}")
