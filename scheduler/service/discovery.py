"""Engine discovery: what sources report about engines, and the static source.

Discovery sources produce `EngineChange`s (add, update, remove) of `EngineRecord`s behind one
protocol, `EngineSource`: `StaticSource` (the engines of the config file or the command line),
`file_discovery.FileSource` (a watched engines file) and `kube_discovery.KubernetesSource` (the Ready
leader pods of one SBSDeployment); `diff` turns two snapshots into changes. What the service knows at
run time about each engine (resolved shape, health) is `engine_registry`'s.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from sbs.scheduler.core.types import Role
from sbs.settings import service as service_settings


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


def diff(known: Mapping[str, EngineRecord], current: Mapping[str, EngineRecord]) -> list[EngineChange]:
    """Changes that turn `known` into `current` (removes first)."""
    out = [EngineChange(ChangeKind.REMOVE, rec) for key, rec in known.items() if key not in current]
    for key, rec in current.items():
        if key not in known:
            out.append(EngineChange(ChangeKind.ADD, rec))
        elif known[key] != rec:
            out.append(EngineChange(ChangeKind.UPDATE, rec))
    return out
