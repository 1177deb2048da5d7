"""The pydantic base of every SBS custom resource type, from which `crdgen` writes the CRDs.

Fields are camelCase on the wire and snake_case in Python. Cross-field rules are declared once
(`Rule`): each becomes a CEL rule in the CRD, so the API server rejects a bad spec at apply time
naming the field, and the same predicate runs in pydantic, so the operator and tests agree with the
API server.
"""

from __future__ import annotations

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


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors (typos are caught)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for r in type(self).rules:
            if not r.check(self):
                raise ValueError(f"{r.field_path.lstrip('.')}: {r.message}")
        return self


class StatusModel(ApiModel):
    """What the operator reads back (status, whole objects): unknown fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def rules_config(rules: tuple[Rule, ...]) -> ConfigDict:
    """The model config of a type with cross-field `rules` (they go into its schema as CEL)."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": [r.schema() for r in rules]},
    )
