"""Engines from a watched file: membership changes of a running service outside Kubernetes.

`sbs-scheduler run --engines-file FILE` follows a YAML or JSON file of `prefill:` and `decode:` lists
of engine entries (the config's `engines.prefill`/`engines.decode` entries). The file is looked at
every `poll_s`; when it changed, the difference to the engines read before is emitted as adds, updates
and removes, keyed by role and URL. It mirrors what the SBSDeployment operator does in a cluster
(`sbs.dev/draining`, then deleting the pod, docs/operator.md): to take a group out, mark its entry
`draining: true` (no new requests; those it holds finish), then delete the entry (it leaves the
membership: its pool's core is rebuilt); to bring it back, add the entry again. Replace the file
atomically (write another file, then rename it over): a file that cannot be read or is invalid is
logged and the engines read before are kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sbs.scheduler.service.config_file import SettingsError, read_config_file
from sbs.scheduler.service.discovery import EngineChange, EngineRecord, diff, static_records
from sbs.settings.service import EnginesSettings, validation_message

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode")


def file_records(data: Mapping[str, Any], where: str) -> dict[str, EngineRecord]:
    """The engines of an engines file's mapping, keyed `<role>@<url>` (stable when other entries come
    and go). Raises `SettingsError` naming the file and field."""
    extra = sorted(set(data) - set(ROLES))
    if extra:
        raise SettingsError(f"{where}: unknown key {extra[0]!r}; an engines file holds only prefill, decode")
    try:
        engines = EnginesSettings.model_validate({k: data[k] or () for k in ROLES if k in data})
    except ValidationError as exc:
        raise SettingsError(validation_message(exc, where)) from None
    out: dict[str, EngineRecord] = {}
    for rec in static_records(engines):
        key = f"{rec.role.value}@{rec.url}"
        if key in out:
            raise SettingsError(f"{where}: {rec.role.value} engine {rec.url} is listed twice")
        out[key] = dataclasses.replace(rec, key=key)
    return out


def read_engines_file(path: str | Path) -> dict[str, EngineRecord]:
    """`file_records` of the file at `path` (raises `SettingsError`)."""
    return file_records(read_config_file(path), str(path))


class FileSource:
    """An `EngineSource` over an engines file, looked at every `poll_s` seconds; runs forever."""

    def __init__(self, path: str | Path, *, poll_s: float = 0.5) -> None:
        self.path, self.poll_s = Path(path), poll_s
        self.known: dict[str, EngineRecord] = {}
        self._unreadable: str | None = None
        """Why the file could not be looked at last time (logged once, not every poll)."""

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if exc.strerror != self._unreadable:
                log.warning("engines file %s: %s; keeping the engines read before", self.path, exc.strerror)
            self._unreadable = exc.strerror
            return None
        self._unreadable = None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def changes(self) -> AsyncIterator[EngineChange]:
        seen = None
        while True:
            sig = self._signature()
            if sig is not None and sig != seen:
                seen = sig
                try:
                    current = read_engines_file(self.path)
                except SettingsError as exc:
                    log.warning("%s; keeping the engines read before", exc)
                else:
                    changes = diff(self.known, current)
                    self.known = current
                    if changes:
                        log.info("engines file %s: %d change(s)", self.path, len(changes))
                    for change in changes:
                        yield change
            await asyncio.sleep(self.poll_s)
