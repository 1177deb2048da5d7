"""Waiting for a condition with a timeout, the harness's one way to wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from sbs.kube.client import ApiError


class WaitTimeout(Exception):
    """A condition did not become true in time."""


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    *,
    check: Callable[[], None] | None = None,
    interval_s: float = 0.1,
) -> Any:
    """Poll `predicate` until it returns something truthy, which is returned.

    `check` runs before every poll and may raise (the harness passes one that fails at once
    when a control plane process has died). API and connection errors count as "not yet". On
    timeout, `WaitTimeout` says what was awaited and the last value or error seen.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        if check is not None:
            check()
        try:
            last = predicate()
        except (ApiError, OSError, aiohttp.ClientError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r:.500})")
        time.sleep(interval_s)
