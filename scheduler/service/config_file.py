"""Reading the service's settings: a YAML or JSON config file with command-line flags on top.

Any error is a `SettingsError` whose one-line message names the file, line, flag or field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sbs.settings import scheduling
from sbs.settings.service import EngineConfig, ServiceSettings, validation_message


class SettingsError(Exception):
    """The service's configuration is invalid (a file, a flag or a field); the message says which."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (`.json` is parsed as JSON, anything else as YAML)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SettingsError(f"{p}: cannot read the config file: {exc.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{p}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{p}: the config must be a mapping, got {type(data).__name__}")
    return data


def parse_engine_flag(value: str, flag: str) -> dict[str, Any]:
    """``URL[,key=value...]`` (keys are `EngineConfig` fields) → a dict for `EngineConfig`."""
    url, *pairs = [part.strip() for part in value.split(",")]
    out: dict[str, Any] = {"url": url}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or key not in EngineConfig.model_fields or key == "url":
            valid = ", ".join(k for k in EngineConfig.model_fields if k != "url")
            raise SettingsError(
                f"{flag} {value!r}: expected URL[,key=value...] with keys {valid}; got {pair!r}"
            )
        out[key] = val.lower() == "true" if key == "draining" else val
    return out


def build_settings(
    data: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    where: str = "config",
) -> ServiceSettings:
    """Validate a config mapping with flag overrides applied on top (top-level keys, `policy`).

    `overrides` may hold `host`, `port`, `prefill`/`decode` (lists of engine dicts, replacing the
    file's) and `policy` (a name, engine options after `+`: replaces the file's policy unless it is
    already of that type, whose settings it then keeps).
    """
    merged: dict[str, Any] = {k: v for k, v in (data or {}).items()}
    o = dict(overrides or {})
    policy = o.pop("policy", None)
    engines = dict(merged.get("engines") or {})
    for role in ("prefill", "decode"):
        if o.get(role):
            engines[role] = o.pop(role)
        o.pop(role, None)
    if engines:
        merged["engines"] = engines
    if policy is not None:
        try:
            named = scheduling.policy_settings(policy)  # `least_load+prio`: options after the name
        except ValueError as exc:
            raise SettingsError(f"--policy: {exc}") from None
        sched = dict(merged.get("scheduler") or {})
        current = sched.get("policy")
        options = named.model_dump(exclude_defaults=True)
        if isinstance(current, dict) and current.get("type", "sbs") == named.type:
            sched["policy"] = {**current, **options}  # the file's settings of that policy, kept
        else:
            sched["policy"] = {"type": named.type, **options}
        merged["scheduler"] = sched
    merged.update({k: v for k, v in o.items() if v is not None})
    try:
        settings = ServiceSettings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(validation_message(exc, where)) from None
    pol = settings.scheduler.policy
    if isinstance(pol, scheduling.ImmediatePolicy) and pol.engine_delayer:
        raise SettingsError(
            f"{where}: scheduler.policy.engine_delayer: the prefill delayer is the engines' own flag "
            "(--enable-prefill-delayer on the SGLang prefill servers), not the scheduler's; the field is "
            "for the simulator"
        )
    return settings
