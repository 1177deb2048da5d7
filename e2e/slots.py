"""Cluster slots: each local control plane owns `<runtime root>/<slot>` (its certificates, etcd
data, logs, kubeconfig and `state.json`) and the pod network 127.(100+slot).0.0/16, so clusters
never collide; a slot whose processes are all gone is reclaimed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from sbs.e2e import nodes


class SlotsExhausted(Exception):
    """Every slot under the runtime root is in use."""


def pid_runs(pid: int, exe: str) -> bool:
    """Whether `pid` is alive and still runs `exe` (a recycled PID does not count)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return cmdline == exe and state != "Z"


def runtime_root() -> Path:
    """Where clusters keep their state: tmpfs when possible, one tree per user."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return Path(os.environ.get("SBS_E2E_RUNTIME", base / f"sbs-e2e-{os.getuid()}"))


def claim_slot(root: Path) -> tuple[int, Path]:
    """Create `<root>/<slot>` for the lowest free slot, reclaiming dead clusters' slots."""
    root.mkdir(parents=True, exist_ok=True)
    for slot in range(nodes.MAX_SLOTS):
        path = root / str(slot)
        try:
            path.mkdir()
        except FileExistsError:
            if not slot_is_stale(path):
                continue
            grave = root / f".stale-{slot}-{os.getpid()}"
            try:
                path.rename(grave)
            except OSError:
                continue  # someone else is reclaiming it
            shutil.rmtree(grave, ignore_errors=True)
            try:
                path.mkdir()
            except FileExistsError:
                continue
        return slot, path
    raise SlotsExhausted(f"all {nodes.MAX_SLOTS} cluster slots under {root} are in use")


def slot_is_stale(path: Path) -> bool:
    state = path / "state.json"
    if not state.exists():
        # Being set up right now, or a start that died before writing state: give it a minute.
        with contextlib.suppress(FileNotFoundError):
            return time.time() - path.stat().st_mtime > 60  # noqa: TID251 - file ages are wall-clock
        return False
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return True
    return not any(pid_runs(pid, info["argv"][name][0]) for name, pid in info["pids"].items())
