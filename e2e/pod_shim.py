"""Run one of this project's programs as if inside its pod (the node agent's launcher).

    python -m sbs.e2e.pod_shim --pod-ip IP [--service-account-dir DIR] -- PROGRAM [ARGS...]

A pod has its own network namespace and its own files; the agent's processes share the host's. For
this project's console scripts (`sbs-operator`, `sbs-scheduler`, `sbs-engine`, ...) the shim maps
the two things that matter, in process and before the program starts:

- a listener on the wildcard address (`0.0.0.0`, `""`) binds the pod IP instead, so two pods may
  both listen on :8080 as they would in a cluster, and nothing listens off loopback;
- `sbs.kube.credentials` looks for the in-cluster ServiceAccount in DIR instead of
  `/var/run/secrets/kubernetes.io/serviceaccount`.

With `--stats-file`, a thread appends `{"t": monotonic time, "tasks": live asyncio tasks, "threads": n}`
to that file every `--stats-every` seconds, for the soak (no endpoint is added to the program).

Then it runs PROGRAM's entry point with ARGS. Any other PROGRAM is exec'd unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


def _bind_to(ip: str) -> None:
    wildcard = ("", "0.0.0.0")
    original = socket.socket.bind

    def bind(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_INET and isinstance(address, tuple) and address[0] in wildcard:
            address = (ip, *address[1:])
        original(self, address)

    socket.socket.bind = bind  # type: ignore[method-assign]


def _live_tasks() -> int:
    for _ in range(100):  # the set may change under us (another thread owns the loop)
        try:
            return sum(1 for t in list(asyncio.tasks._all_tasks) if not t.done())
        except RuntimeError:
            continue
    return -1


def _stats(path: Path, every_s: float) -> None:
    def loop() -> None:
        while True:
            line = {
                "t": round(time.monotonic(), 1),
                "tasks": _live_tasks(),
                "threads": threading.active_count(),
            }
            with contextlib.suppress(OSError), path.open("a") as f:  # a gap in the curve, not the end
                f.write(json.dumps(line) + "\n")
            time.sleep(every_s)

    threading.Thread(target=loop, name="pod-shim-stats", daemon=True).start()


def _service_account_dir(directory: Path) -> None:
    from sbs.kube import credentials

    credentials.SA_DIR = directory
    if credentials.load.__kwdefaults__ is not None:
        credentials.load.__kwdefaults__["service_account_dir"] = directory
    defaults = credentials.in_cluster.__defaults__ or ()
    credentials.in_cluster.__defaults__ = (directory, *defaults[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sbs.e2e.pod_shim")
    parser.add_argument("--pod-ip", required=True)
    parser.add_argument("--service-account-dir", type=Path, default=None)
    parser.add_argument("--stats-file", type=Path, default=None)
    parser.add_argument("--stats-every", type=float, default=5.0)
    parser.add_argument("program", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    program = opts.program[1:] if opts.program[:1] == ["--"] else opts.program
    if not program:
        parser.error("give the program to run after --")
    name = Path(program[0]).name
    found = entry_points(group="console_scripts", name=name)
    if not found:
        os.execvp(program[0], program)
    _bind_to(opts.pod_ip)
    if opts.service_account_dir is not None:
        _service_account_dir(opts.service_account_dir)
    if opts.stats_file is not None:
        _stats(opts.stats_file, opts.stats_every)
    sys.argv = [name, *program[1:]]
    entry = next(iter(found)).load()
    sys.exit(entry())


if __name__ == "__main__":
    main()
