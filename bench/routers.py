"""SGLang's routers from PyPI, in a cached virtual environment, and their PD command lines.

``ensure_routers()`` builds (once per machine, under a file lock) a virtual environment in
``$SBS_ROUTERS_CACHE``, else ``$XDG_CACHE_HOME/sbs-routers``, else ``~/.cache/sbs-routers``, at
``sglang-router-0.3.2_smg-1.13.0-py<major.minor>/venv``. Both wheels go into one environment: their
dependencies resolve together (aiohttp, fastapi, uvicorn, orjson, setproctitle for sglang-router;
grpcio and PyYAML for smg) and their Python packages differ (``sglang_router``, ``smg``). The one clash
is the ``smg`` console script, which both wheels declare; we never use it and start each router
with ``python -m``. A ``complete`` stamp is written only after both launchers answer ``--help``, so a
half-built environment is rebuilt.

The command lines are the ones verified on loopback in
``../shared/design/sglang-api-and-routers.md`` §2.4: PD mode, one ``--prefill URL BOOTSTRAP_PORT`` per
prefill engine and one ``--decode URL`` per decode engine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sbs.e2e import toolcache

SGLANG_ROUTER_VERSION = "0.3.2"
SMG_VERSION = "1.13.0"
BUILD_TIMEOUT_S = 1800
"""A cold build downloads ~70 MB of wheels and installs ~30 packages: a minute or two on 2 cores."""


class RouterEnvError(RuntimeError):
    """The router environment could not be built (the message carries pip's output)."""


@dataclasses.dataclass(frozen=True)
class RouterEnv:
    """The built environment: its python, and the launch commands of each router."""

    root: Path
    python: Path

    def sglang_router_cmd(self) -> list[str]:
        """``python -m sglang_router.launch_router`` (sglang-router 0.3.2)."""
        return [str(self.python), "-m", "sglang_router.launch_router"]

    def smg_cmd(self) -> list[str]:
        """``python -m smg launch`` (smg 1.13.0; ``smg launch`` without the script name clash)."""
        return [str(self.python), "-m", "smg", "launch"]

    def versions(self) -> dict[str, str]:
        return json.loads((self.root / toolcache.STAMP).read_text())["versions"]


def cache_root() -> Path:
    """`$SBS_ROUTERS_CACHE`, else `$XDG_CACHE_HOME/sbs-routers`, else `~/.cache/sbs-routers`."""
    return toolcache.cache_root("routers")


def env_key() -> str:
    v = sys.version_info
    return f"sglang-router-{SGLANG_ROUTER_VERSION}_smg-{SMG_VERSION}-py{v.major}.{v.minor}"


def _run(cmd: Sequence[str | Path], what: str, cwd: Path) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return toolcache.run(cmd, what, timeout_s=BUILD_TIMEOUT_S, error=RouterEnvError, cwd=cwd, env=env)


def _build(root: Path) -> str:
    print(f"building the router environment in {root} (once; ~70 MB of wheels)", file=sys.stderr)
    # -I and cwd: the repository's operator/ folder must not shadow the standard library's module.
    _run([sys.executable, "-I", "-m", "venv", root / "venv"], "python -m venv", root)
    python = root / "venv" / "bin" / "python"
    pins = [f"sglang-router=={SGLANG_ROUTER_VERSION}", f"smg=={SMG_VERSION}"]
    _run(
        [python, "-I", "-m", "pip", "install", "--quiet", "--only-binary=:all:", *pins],
        f"pip install {' '.join(pins)}",
        root,
    )
    env = RouterEnv(root, python)
    for cmd in (env.sglang_router_cmd(), env.smg_cmd()):
        _run([*cmd, "--help"], " ".join(cmd[1:]) + " --help", root)
    out = _run(
        [
            python,
            "-I",
            "-c",
            "import importlib.metadata as m; print(m.version('sglang-router'), m.version('smg'))",
        ],
        "version check",
        root,
    )
    router_v, smg_v = out.split()
    if (router_v, smg_v) != (SGLANG_ROUTER_VERSION, SMG_VERSION):
        raise RouterEnvError(
            f"expected sglang-router {SGLANG_ROUTER_VERSION} and smg {SMG_VERSION}, got {out}"
        )
    stamp = {"versions": {"sglang-router": router_v, "smg": smg_v}, "python": sys.version.split()[0]}
    return json.dumps(stamp, indent=2) + "\n"


@functools.cache
def ensure_routers() -> RouterEnv:
    """The router environment, built first if it is missing or half-built. Raises RouterEnvError."""
    root = toolcache.stamped_build(cache_root() / env_key(), _build)
    return RouterEnv(root, root / "venv" / "bin" / "python")


# --- command lines ---------------------------------------------------------------------------------


def pd_args(
    *,
    prefill: Sequence[tuple[str, int]],
    decode: Sequence[str],
    host: str,
    port: int,
    prometheus_port: int,
) -> list[str]:
    """The PD flags both routers share: ``--pd-disaggregation --prefill URL PORT ... --decode URL``,
    listen address, Prometheus on loopback, and a 1 s worker start-up check (the default 30 s only
    delays the start)."""
    args = ["--pd-disaggregation"]
    for url, boot in prefill:
        args += ["--prefill", url, str(boot)]
    for url in decode:
        args += ["--decode", url]
    args += [
        "--host",
        host,
        "--port",
        str(port),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(prometheus_port),
        "--worker-startup-check-interval",
        "1",
        "--log-level",
        "warn",
    ]
    return args
