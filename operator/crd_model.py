"""The pydantic base of every SBS custom resource type, from which `crdgen` writes the CRDs.

Fields are camelCase on the wire and snake_case in Python. Cross-field rules are declared once
(`Rule`): each becomes a CEL rule in the CRD, so the API server rejects a bad spec at apply time
naming the field, and the same predicate runs in pydantic, so the operator and tests agree with the
API server.

Specs are read as the API server reads them (the CRD fuzz test holds the two equal): types are
strict (no `"4"` for 4, no `"true"` for true, no `4.0` for 4: the generated CRD refuses it too), and a
`null` field is absent (the server prunes nulls of non-nullable fields, then defaults them).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the API server and the same predicate in Python."""

    cel: str
    message: str
    field_path: str
    check: Callable[[Any], bool]

    def schema(self) -> dict[str, str]:
        if self.field_path.startswith(".metadata"):  # the API server takes field paths below spec only
            return {"rule": self.cel, "message": f"{self.field_path.lstrip('.')}: {self.message}"}
        return {"rule": self.cel, "message": self.message, "fieldPath": self.field_path}


def _is_typed_map(annotation: Any) -> bool:
    """`dict[str, str]` and the like, whose null values the API server prunes (not `dict[str, Any]`)."""
    return typing.get_origin(annotation) is dict and typing.get_args(annotation)[1:] != (Any,)


def _read(value: Any, *, typed_map: bool) -> Any:
    if typed_map and isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors (typos are caught)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _as_the_api_server_reads(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = {k: info.annotation for name, info in cls.model_fields.items() for k in (name, info.alias)}
        return {k: _read(v, typed_map=_is_typed_map(fields.get(k))) for k, v in data.items() if v is not None}

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for r in type(self).rules:
            if not r.check(self):
                raise ValueError(f"{r.field_path.lstrip('.')}: {r.message}")
        return self


class StatusModel(ApiModel):
    """What the operator reads back (status, whole objects): unknown fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", strict=False)


def rules_config(rules: tuple[Rule, ...]) -> ConfigDict:
    """The model config of a type with cross-field `rules` (they go into its schema as CEL)."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        json_schema_extra={"x-kubernetes-validations": [r.schema() for r in rules]},
    )
