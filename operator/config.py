"""How one operator process runs: watched namespaces, workers, resync period, leader Lease."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
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
    pod: str | None = field(default_factory=lambda: own_pod(os.environ))
    """`namespace/name` of the operator's pod (downward API), named on the leader Lease."""
    liveness: str | None = None
    stale_after_s: float = 120.0
    """The liveness probe fails when a background loop (resync, leader election, autoscaler) made no
    progress for this long: a stuck process or an unreachable API."""
    reconcile_timeout_s: float = 300.0
    """A reconcile still running after this is cancelled and retried."""


def namespaces_arg(values: Collection[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))


def own_pod(env: Mapping[str, str]) -> str | None:
    """`namespace/name` from `POD_NAMESPACE` and `POD_NAME`; None outside a pod (either unset)."""
    namespace, name = env.get("POD_NAMESPACE", ""), env.get("POD_NAME", "")
    return f"{namespace}/{name}" if namespace and name else None
