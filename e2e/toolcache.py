"""Tools built once per machine into a cache outside the repository (standard library only).

``cache_root(name)`` is ``$SBS_<NAME>_CACHE``, else ``$XDG_CACHE_HOME/sbs-<name>``, else
``~/.cache/sbs-<name>``. ``stamped_build(root, build)`` builds a tool into ``root`` under a file lock
and writes a ``complete`` stamp last, so a half-built ``root`` is rebuilt. ``run`` runs one build step
and raises the caller's error type, with the tail of the output, when it fails or hangs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

STAMP = "complete"
"""The file in a built tool's directory that marks it complete (written last)."""

OUTPUT_TAIL = 6000
"""How many characters of a failed step's output its error carries."""


def cache_root(name: str) -> Path:
    """``$SBS_<NAME>_CACHE``, else ``$XDG_CACHE_HOME/sbs-<name>``, else ``~/.cache/sbs-<name>``."""
    if env := os.environ.get(f"SBS_{name.upper()}_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / f"sbs-{name}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stamped_build(root: Path, build: Callable[[Path], str]) -> Path:
    """``root``, built first unless its stamp exists.

    Under the lock ``<root>.lock`` (so concurrent callers build once), ``root`` is emptied and
    ``build(root)`` fills it and returns the stamp's text; the stamp is written only after that
    returns, so a failed or interrupted build is redone by the next call.
    """
    stamp = root / STAMP
    if stamp.exists():
        return root
    with locked(root.with_name(f"{root.name}.lock")):
        if not stamp.exists():
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            text = build(root)
            stamp.write_text(text)
    return root


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run(
    cmd: Sequence[str | Path], what: str, *, timeout_s: float, error: type[Exception], **kwargs: Any
) -> str:
    """The stdout of ``cmd`` (output captured as text; ``kwargs`` go to ``subprocess.run``).

    Raises ``error`` naming ``what``, with the tail of stdout and stderr, when ``cmd`` exits non-zero
    or has not finished after ``timeout_s``.
    """
    try:
        done = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        tail = (_text(exc.stdout) + _text(exc.stderr))[-OUTPUT_TAIL:]
        raise error(f"{what}: no result after {timeout_s:.0f} s" + (f":\n{tail}" if tail else "")) from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-OUTPUT_TAIL:]
        raise error(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout
