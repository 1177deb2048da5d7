"""How one operator process runs: watched namespaces, workers, resync period, leader Lease."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    """Watched namespaces; empty = the whole cluster."""
    workers: int = 8
    resync_s: float = 30.0
    lease_namespace: str = "default"
    lease_name: str = "sbs-operator"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    liveness: str | None = None
    stale_after_s: float = 120.0
    """The liveness probe fails when a background loop (resync, leader election, autoscaler) made no
    progress for this long: a stuck process or an unreachable API."""
    reconcile_timeout_s: float = 300.0
    """A reconcile still running after this is cancelled and retried."""


def namespaces_arg(values: Collection[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))
