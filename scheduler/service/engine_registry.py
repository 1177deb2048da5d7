"""The registry of known engines: each one's record, resolved shape and health.

An engine's `InstanceSpec` comes from its discovery record, else its `/server_info`, else the
configured defaults (`resolve_spec`). The registry applies discovery changes and says which engines
of a revision are members of its scheduling pool and which are usable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.scheduler.service.discovery import ChangeKind, EngineChange, EngineRecord, EngineRecordError
from sbs.settings import service as service_settings
from sbs.settings.engine_shape import per_rank


@dataclass(slots=True)
class Engine:
    """A known engine: its record, its resolved shape (None until known) and its health."""

    record: EngineRecord
    spec: InstanceSpec | None = None
    bootstrap_port: int | None = None
    healthy: bool = True
    failures: int = 0
    last_ok_s: float = 0.0
    hung: bool = False
    """No successful poll for `engines.hung_after_s`: the requests in flight on it were ended."""
    max_input_tokens: int | None = None
    """The longest prompt it accepts (from `/server_info`), None when unknown."""
    context_length: int | None = None
    """Its model's context (prompt + output; `/server_info`), None when unknown."""
    truncates: bool = False
    """It truncates long prompts instead of refusing them (`--allow-auto-truncate`)."""
    poller: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def role(self) -> Role:
        return self.record.role

    @property
    def usable(self) -> bool:
        """Gets new requests: shape known, healthy and not draining."""
        return self.spec is not None and self.healthy and not self.record.draining


def resolve_spec(
    record: EngineRecord, info: Mapping[str, Any] | None, defaults: service_settings.InstanceDefaults
) -> tuple[InstanceSpec, int | None]:
    """The engine's `InstanceSpec` and bootstrap port from its record, else its `/server_info`, else
    the defaults. Raises `EngineRecordError` when the DP size is known from neither."""
    info = info or {}
    dp = record.dp_size or dp_size_of(info)
    if dp is None:
        raise EngineRecordError(
            f"engine {record.key} ({record.url}): DP size unknown (no dp_size, no /server_info)"
        )
    chunk = record.chunk_tokens
    if (
        chunk is None
        and isinstance(info.get("chunked_prefill_size"), int)
        and info["chunked_prefill_size"] > 0
    ):
        chunk = per_rank(info["chunked_prefill_size"], dp)
    kv = record.kv_capacity_tokens or _kv_of(info)
    running = record.max_running_requests
    if (
        running is None
        and isinstance(info.get("max_running_requests"), int)
        and info["max_running_requests"] > 0
    ):
        running = per_rank(info["max_running_requests"], dp) if record.role is Role.DECODE else 0
    port = record.bootstrap_port
    if (
        port is None
        and record.role is Role.PREFILL
        and isinstance(info.get("disaggregation_bootstrap_port"), int)
    ):
        port = info["disaggregation_bootstrap_port"]
    spec = InstanceSpec(
        name=record.key,
        role=record.role,
        dp_size=dp,
        chunk_tokens=chunk or defaults.chunk_tokens,
        kv_capacity_tokens=kv or defaults.kv_capacity_tokens,
        max_running_requests=defaults.max_running_requests if running is None else running,
    )
    return spec, port


def context_length(info: Mapping[str, Any]) -> int | None:
    v = info.get("context_length")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 1 else None


def input_limit(info: Mapping[str, Any]) -> int | None:
    """The longest prompt an SGLang engine accepts: its scheduler refuses `len >= max_req_input_len`
    (min(context, KV) - 6, published by 0.5.23), its tokenizer `len >= context_length`."""
    for key in ("max_req_input_len", "context_length"):
        v = info.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            return v - 1
    return None


def dp_size_of(info: Mapping[str, Any]) -> int | None:
    """DP ranks from `/server_info`: `internal_states` has one entry per rank; 0.5.23 rewrites the old
    `--dp-size N --enable-dp-attention` to `attn_dp_size=N, dp_size=1`, so that is read next."""
    states = info.get("internal_states")
    if isinstance(states, list) and states:
        return len(states)
    for key in ("attn_dp_size", "dp_size"):
        v = info.get(key)
        if isinstance(v, int) and v >= 1 and (v > 1 or key == "dp_size"):
            return v
    return None


def _kv_of(info: Mapping[str, Any]) -> int | None:
    states = info.get("internal_states")
    first = states[:1] if isinstance(states, list) else []
    for source in (info.get("scheduler_info"), *first, info):
        if isinstance(source, Mapping):
            v = source.get("max_total_num_tokens")
            if isinstance(v, int) and v > 1:
                return v
    return None


class Registry:
    """All known engines by key; applies discovery changes and reports membership changes."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}

    def apply(self, change: EngineChange) -> Engine | None:
        """Apply a change; returns the engine affected (None for the removal of an unknown key)."""
        rec = change.engine
        if change.kind is ChangeKind.REMOVE:
            return self.engines.pop(rec.key, None)
        current = self.engines.get(rec.key)
        if current is None:
            engine = Engine(rec)
            self.engines[rec.key] = engine
            return engine
        shape_changed = replace(current.record, draining=rec.draining) != rec
        current.record = rec
        if shape_changed:
            current.spec = None  # re-resolve: URL, role, revision or shape changed
        return current

    def members(self, revision: str, role: Role) -> list[Engine]:
        """Resolved engines of one revision and role, in key order (draining and unhealthy included:
        their in-flight requests are still accounted)."""
        return sorted(
            (
                e
                for e in self.engines.values()
                if e.spec is not None and e.role is role and e.record.revision == revision
            ),
            key=lambda e: e.key,
        )

    def revisions(self) -> list[str]:
        return sorted({e.record.revision for e in self.engines.values() if e.spec is not None})

    def usable(self, role: Role, engines: Sequence[Engine] | None = None) -> list[Engine]:
        pool = self.engines.values() if engines is None else engines
        return [e for e in pool if e.role is role and e.usable]
