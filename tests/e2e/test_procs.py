"""Stopping a child's process group: SIGTERM to the whole group, SIGKILL after the grace period."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sbs.e2e.procs import stop_group


def _start(script: str) -> tuple[subprocess.Popen[str], str]:
    """``python -c script`` leading its own group, and the first line it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the child died before it was ready"
    return proc, line


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited


def _cleanup(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period():
    proc, _ = _start(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(10)"
    )
    try:
        t0 = time.monotonic()
        status = stop_group(proc, grace_s=0.5)
        took = time.monotonic() - t0
    finally:
        _cleanup(proc)
    assert status == -signal.SIGKILL
    assert 0.5 <= took < 5


def test_sigterm_reaches_the_whole_group_and_a_quick_exit_needs_no_kill():
    proc, line = _start(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(10)']); "
        "print(child.pid, flush=True); time.sleep(10)"
    )
    grandchild = int(line)
    try:
        assert os.getpgid(grandchild) == proc.pid, "the grandchild runs in the child's group"
        t0 = time.monotonic()
        status = stop_group(proc, grace_s=5)
        took = time.monotonic() - t0
    finally:
        _cleanup(proc)
    assert status == -signal.SIGTERM and took < 4
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild), "the grandchild got SIGTERM too"


def test_a_child_that_already_exited_gives_its_status():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    proc.wait()
    assert stop_group(proc, grace_s=0.1) == 3
