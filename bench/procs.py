"""Child processes of a benchmark (engines, schedulers, routers): start, wait until they answer, stop.

Every process is our own child, started in its own session with its output in a log file; `stop()`
ends it by its pid (SIGTERM, then SIGKILL after a grace period). `ProcGroup` stops all of its
processes when the `with` block exits, whatever happened inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp


class BenchError(Exception):
    """Bad input or a failed run: the CLI prints the message on one line and exits with status 2."""


def console_script(name: str, module: str) -> list[str]:
    """The console script `name` installed beside this Python, else `python -c` on `module:main`."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {name!r}; main()"]


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One child process with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=log_path.parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        self._log.close()

    async def wait_http(
        self, url: str, *, timeout_s: float = 60.0, ok: Sequence[int] = (200,), check=None
    ) -> None:
        """Poll `url` until it answers one of `ok` (and `check(json)` holds, if given); raise
        BenchError with the log's tail if the process dies or the time runs out."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise BenchError(
                        f"{self.name} exited with status {self.popen.returncode} while starting; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    async with http.get(url) as resp:
                        last = f"HTTP {resp.status}"
                        if resp.status in ok:
                            if check is None:
                                return
                            body = await resp.json(content_type=None)
                            if check(body):
                                return
                            last = f"HTTP {resp.status} {str(body)[:200]}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.2)
        raise BenchError(
            f"{self.name} did not become ready at {url} within {timeout_s:.0f} s (last: {last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )


class ProcGroup:
    """Processes stopped together (in reverse start order) when the block exits."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, argv, log_path, env)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def group() -> Iterator[ProcGroup]:
    g = ProcGroup()
    try:
        yield g
    finally:
        g.stop()
