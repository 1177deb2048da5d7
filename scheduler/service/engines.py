"""Engine discovery and the registry of known engines.

Discovery sources produce `EngineChange`s (add, update, remove) of `EngineRecord`s behind one
protocol, `EngineSource`. Two kinds are planned:
- `StaticSource`: the engines listed in the config file or on the command line (implemented);
- a Kubernetes source watching the leader pods of one SBSDeployment (to be written against this
  protocol; `engine_from_pod` already turns a pod into a record, so the watcher only maps watch
  events: a pod that yields a record is added or updated, one that yields None is removed).

The `Registry` keeps the runtime state of every engine (resolved shape, health) and says which are
usable; the driver (`loop`) groups usable engines of one revision into a scheduling pool.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.scheduler.service import settings as service_settings

log = logging.getLogger(__name__)

# Labels and annotations of engine leader pods (written by the operator).
LABEL_DEPLOYMENT = "sbs.dev/deployment"
LABEL_COMPONENT = "sbs.dev/component"
LABEL_LEADER = "sbs.dev/leader"
LABEL_ROLE = "sbs.dev/role"
LABEL_GROUP = "sbs.dev/group"
LABEL_REVISION = "sbs.dev/revision"
ANNOTATION_BOOTSTRAP_PORT = "sbs.dev/bootstrap-port"
ANNOTATION_DP_SIZE = "sbs.dev/dp-size"
ANNOTATION_DRAINING = "sbs.dev/draining"
COMPONENT_ENGINE = "engine"
HTTP_PORT_NAME = "http"
"""The container port the engine serves HTTP on; `engine_from_pod`'s `default_port` otherwise."""


class EngineRecordError(ValueError):
    """A discovered engine's description is malformed (the message names the object and the field)."""


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """What discovery knows about one engine (the leader of one engine group).

    None in a shape field means "ask the engine's `/server_info`"; `key` is unique and stable across
    updates (a static entry's role and position, a pod's namespace/name).
    """

    key: str
    role: Role
    url: str
    revision: str = ""
    group: str = ""
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    dp_size: int | None = None
    draining: bool = False
    chunk_tokens: int | None = None
    kv_capacity_tokens: int | None = None
    max_running_requests: int | None = None

    @property
    def host(self) -> str:
        """The host decodes bootstrap from: `bootstrap_host`, else the URL's host."""
        return self.bootstrap_host or urlsplit(self.url).hostname or ""


class ChangeKind(enum.StrEnum):
    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class EngineChange:
    kind: ChangeKind
    engine: EngineRecord


class EngineSource(Protocol):
    """A discovery source: an async stream of changes. It may end (static) or run forever (watch)."""

    def changes(self) -> AsyncIterator[EngineChange]: ...


class StaticSource:
    """The engines of `EnginesSettings.prefill`/`.decode`, added once."""

    def __init__(self, engines: service_settings.EnginesSettings) -> None:
        self.records = static_records(engines)

    async def changes(self) -> AsyncIterator[EngineChange]:
        for record in self.records:
            yield EngineChange(ChangeKind.ADD, record)


def static_records(engines: service_settings.EnginesSettings) -> list[EngineRecord]:
    """Records of the configured engines, keyed `prefill-<i>` / `decode-<i>`."""
    out = []
    for role, entries in ((Role.PREFILL, engines.prefill), (Role.DECODE, engines.decode)):
        for i, e in enumerate(entries):
            out.append(
                EngineRecord(
                    key=f"{role.value}-{i}",
                    role=role,
                    url=e.url,
                    revision=e.revision,
                    group=e.group,
                    bootstrap_host=e.bootstrap_host,
                    bootstrap_port=e.bootstrap_port,
                    dp_size=e.dp_size,
                    draining=e.draining,
                    chunk_tokens=e.chunk_tokens,
                    kv_capacity_tokens=e.kv_capacity_tokens,
                    max_running_requests=e.max_running_requests,
                )
            )
    return out


def engine_from_pod(
    pod: Mapping[str, Any], *, deployment: str, default_port: int = 30000
) -> EngineRecord | None:
    """The engine a pod (a Kubernetes Pod as a dict) stands for, or None if it is not a target.

    Targets are the Ready leader engine pods of `deployment` with an IP. The role, group and revision
    come from labels, the bootstrap port, DP size and draining flag from annotations; a pod being
    deleted is draining. Raises `EngineRecordError` for a labelled leader whose role or annotations
    are malformed.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if (
        labels.get(LABEL_DEPLOYMENT) != deployment
        or labels.get(LABEL_COMPONENT) != COMPONENT_ENGINE
        or labels.get(LABEL_LEADER) != "true"
    ):
        return None
    status = pod.get("status") or {}
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    if not ready or not ip:
        return None
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    role_label = labels.get(LABEL_ROLE)
    try:
        role = Role(role_label)
    except ValueError:
        raise EngineRecordError(
            f"pod {name}: label '{LABEL_ROLE}' must be one of prefill, decode; got {role_label!r}"
        ) from None
    notes = meta.get("annotations") or {}
    port = default_port
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == HTTP_PORT_NAME and p.get("containerPort"):
                port = int(p["containerPort"])
    host = f"[{ip}]" if ":" in ip else ip
    return EngineRecord(
        key=name,
        role=role,
        url=f"http://{host}:{port}",
        revision=labels.get(LABEL_REVISION, ""),
        group=labels.get(LABEL_GROUP, ""),
        bootstrap_host=ip,
        bootstrap_port=_int_annotation(notes, ANNOTATION_BOOTSTRAP_PORT, name, hi=65535),
        dp_size=_int_annotation(notes, ANNOTATION_DP_SIZE, name),
        draining=str(notes.get(ANNOTATION_DRAINING, "")).lower() == "true"
        or bool(meta.get("deletionTimestamp")),
    )


def _int_annotation(notes: Mapping[str, Any], key: str, name: str, *, hi: int | None = None) -> int | None:
    raw = notes.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if value < 1 or (hi is not None and value > hi):
        bound = f"1..{hi}" if hi else "a positive integer"
        raise EngineRecordError(f"pod {name}: annotation '{key}' must be {bound}, got {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Runtime state


@dataclass(slots=True)
class Engine:
    """A known engine: its record, its resolved shape (None until known) and its health."""

    record: EngineRecord
    spec: InstanceSpec | None = None
    bootstrap_port: int | None = None
    healthy: bool = True
    failures: int = 0
    last_ok_s: float = 0.0
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
        chunk = max(1, info["chunked_prefill_size"] // dp)  # under DP attention the budget is split
    kv = record.kv_capacity_tokens or _kv_of(info)
    running = record.max_running_requests
    if (
        running is None
        and isinstance(info.get("max_running_requests"), int)
        and info["max_running_requests"] > 0
    ):
        running = max(1, info["max_running_requests"] // dp) if record.role is Role.DECODE else 0
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
    for source in (info.get("scheduler_info"), *(info.get("internal_states") or ())[:1], info):
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
