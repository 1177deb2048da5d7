"""Run the shipped Argo CD health check, and kstatus's generic rules, on SBSDeployment objects.

`argo_health(obj)` executes manifests/argocd/sbsdeployment-health.lua the way Argo CD does: Lua
5.1 (Argo CD embeds gopher-lua, a 5.1 implementation) with the object as the global `obj`, JSON
arrays as 1-based tables, the chunk's return value as the result.

`kstatus(obj)` is the part of sigs.k8s.io/cli-utils `pkg/kstatus/status` that applies to a
custom resource (`checkGenericProperties`, then Current): what Flux's health checks and
`kpt live status` report for it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51

LUA = Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "sbsdeployment-health.lua"
ARGO_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")


@functools.cache
def _runtime() -> Any:
    return lua51.LuaRuntime(unpack_returned_tuples=True)


def _to_lua(rt: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return rt.table_from({k: _to_lua(rt, v) for k, v in value.items()})
    if isinstance(value, list):
        return rt.table_from([_to_lua(rt, v) for v in value])
    return value


def argo_health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    """(status, message) as Argo CD would show them."""
    rt = _runtime()
    rt.globals().obj = _to_lua(rt, obj)
    result = rt.execute(script if script is not None else LUA.read_text())
    status, message = result["status"], result["message"]
    assert status in ARGO_STATUSES, status
    return status, message or ""


def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """(InProgress | Failed | Current | Terminating, message) for a custom resource."""
    meta, status = obj["metadata"], obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    observed = status.get("observedGeneration")
    if "generation" in meta and observed is not None and observed != meta["generation"]:
        return "InProgress", (
            f"{obj['kind']} generation is {meta['generation']}, but latest observed generation is {observed}"
        )
    for c in status.get("conditions") or []:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress", c.get("message", "")
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed", c.get("message", "")
    return "Current", "Resource is current"
