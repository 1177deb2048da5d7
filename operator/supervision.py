"""Long-running operator loops that never die, and the liveness they report.

Every background loop of the operator (the leader elector, the resync, the autoscaler) runs through
`forever`: any exception a round raises (an `aiohttp.ClientPayloadError`, a bug) is logged and the
loop goes on after a backoff, so one bad answer never silently stops reconciling. Each loop keeps a
`Health`, which the liveness probe reads: a loop whose task ended, or that made no progress for
`stale_after_s`, fails the probe and Kubernetes restarts the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from sbs.kube.client import ApiError
from sbs.kube.credentials import CredentialsError

log = logging.getLogger("sbs.operator")

EXPECTED = (ApiError, CredentialsError, OSError, TimeoutError, aiohttp.ClientError)
"""Errors of an unreachable, refusing or broken API connection (`aiohttp.ClientPayloadError` is no
`OSError`): logged in one line. Anything else gets a traceback."""


@dataclass
class Health:
    """Progress of one loop. `needs_success`: only a successful round counts as progress (the API
    was reached); otherwise any completed round does (the loop is not stuck)."""

    name: str
    stale_after_s: float
    needs_success: bool = True
    clock: Callable[[], float] = time.monotonic
    last_progress: float = field(default=0.0)
    failures: int = 0
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def round_done(self, ok: bool) -> None:
        self.failures = 0 if ok else self.failures + 1
        if ok or not self.needs_success:
            self.last_progress = self.clock()

    @property
    def age_s(self) -> float:
        return self.clock() - self.last_progress

    def problem(self) -> str | None:
        """Why this loop counts as dead, or None while it is alive."""
        if self.task is not None and self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            return f"{self.name} stopped" + (f": {exc!r}" if exc else "")
        if self.age_s > self.stale_after_s:
            what = "successful round" if self.needs_success else "round"
            return f"{self.name}: no {what} for {self.age_s:.0f} s"
        return None


def backoff(period_s: float, failures: int, max_s: float) -> float:
    """The pause after a round: the period, doubled per consecutive failure, capped at `max_s`."""
    return period_s if failures == 0 else min(period_s * 2**failures, max(max_s, period_s))


async def forever(
    health: Health,
    round_: Callable[[], Awaitable[object]],
    period_s: float,
    *,
    max_backoff_s: float = 30.0,
    round_timeout_s: float | None = None,
) -> None:
    """Run `round_` every `period_s` until cancelled; a round that raises (or outlives
    `round_timeout_s`) is logged and retried with a doubling backoff."""
    while True:
        try:
            async with asyncio.timeout(round_timeout_s):
                await round_()
        except asyncio.CancelledError:
            raise
        except EXPECTED as exc:
            health.round_done(False)
            log.warning("%s: %s (failure %d)", health.name, exc or type(exc).__name__, health.failures)
        except Exception:
            health.round_done(False)
            log.exception("%s failed (failure %d); retrying", health.name, health.failures)
        else:
            health.round_done(True)
        await asyncio.sleep(backoff(period_s, health.failures, max_backoff_s))


def start(health: Health, coro: Awaitable[None]) -> asyncio.Task[None]:
    """A task for `coro` whose end (which only cancellation should cause) the probe reports."""
    health.task = asyncio.ensure_future(coro)
    return health.task
