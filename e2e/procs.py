"""Stopping a child process together with everything it started (standard library only)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_group(proc: subprocess.Popen[Any], grace_s: float) -> int:
    """Stop ``proc`` and its process group; returns its exit status.

    ``proc`` must lead its own group (started with ``start_new_session=True``). If it still runs, the
    group gets SIGTERM, then SIGKILL when ``proc`` has not exited after ``grace_s`` seconds.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
