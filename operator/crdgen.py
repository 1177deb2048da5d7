"""Generate the SBSDeployment CustomResourceDefinition from the pydantic models in `api.py`.

pydantic's JSON Schema becomes a Kubernetes structural schema: references are inlined, optional
fields lose their `null` branch, titles go, field defaults (including nested objects' defaults)
are kept so the API server applies them, and each model's `Rule`s become CEL
`x-kubernetes-validations`. Free-form objects keep their unknown fields.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sbs.operator import api
from sbs.operator.autoscaling import policy_api, role_scaler_api

CRD_FILE = f"{api.PLURAL}.{api.GROUP}.yaml"

PRINTER_COLUMNS = [
    {
        "name": "Prefill",
        "type": "string",
        "jsonPath": ".status.prefill.summary",
        "description": "ready/desired",
    },
    {
        "name": "Decode",
        "type": "string",
        "jsonPath": ".status.decode.summary",
        "description": "ready/desired",
    },
    {
        "name": "Scheduler",
        "type": "string",
        "jsonPath": ".status.scheduler.summary",
        "description": "ready/desired",
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


_DROP = {"title", "additionalProperties", "discriminator"}


def _field_default(info: FieldInfo) -> Any:
    """A field's default as the API server applies it: whole objects, as the server checks CEL on them."""
    if info.default_factory is None:
        return info.default
    value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    return value


def _model_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """camelCase property name -> default, for fields with a factory (pydantic's schema omits those)."""
    out = {}
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            out[info.alias or name] = _field_default(info)
    return out


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`, by the name pydantic uses in `$defs`."""
    seen: dict[str, type[BaseModel]] = {}
    stack = [root]
    while stack:
        m = stack.pop()
        if m.__name__ in seen:
            continue
        seen[m.__name__] = m
        for info in m.model_fields.values():
            for t in _types_in(info.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    stack.append(t)
    return seen


def _types_in(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types_in(a)]


INTEGER_RULE = {"rule": "type(self) == int", "message": "must be an integer (not 2.0)"}
"""On every integer field outside a list: the API server stores `2.0` as a float, which its CEL rules
then refuse or not depending on which rules happen to read the field; this rule refuses it always,
as the operator's types do (`crd_model`)."""


def structural(
    schema: dict[str, Any],
    defs: dict[str, Any],
    models: dict[str, type[BaseModel]],
    *,
    in_list: bool = False,
) -> dict[str, Any]:
    """A pydantic JSON Schema node as a structural OpenAPI v3 schema node."""
    node = copy.deepcopy(schema)
    ref = node.pop("$ref", None)
    model_name = None
    if ref is not None:
        model_name = ref.rsplit("/", 1)[-1]
        node = {**copy.deepcopy(defs[model_name]), **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {len(branches)} types structurally: {schema}")
        inner = structural(branches[0], defs, models, in_list=in_list)
        node = {**inner, **{k: v for k, v in node.items() if k not in _DROP}}
        if node.get("default", 0) is None:
            del node["default"]
        return node
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)  # JSON Schema 2020-12 -> OpenAPI v3.0 form
            node[bound] = True
    for key in _DROP:
        node.pop(key, None)
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("type") == "object" or "properties" in node:
        node["type"] = "object"
        if "properties" in node:
            factory_defaults = _model_defaults(models[model_name]) if model_name in models else {}
            props = {}
            for key, sub in node["properties"].items():
                props[key] = structural(sub, defs, models, in_list=in_list)
                if key in factory_defaults and "default" not in props[key]:
                    props[key]["default"] = factory_defaults[key]
            node["properties"] = props
        else:
            additional = schema.get("additionalProperties")
            if isinstance(additional, dict) and additional.get("type") in (
                "string",
                "integer",
                "boolean",
                "number",
            ):
                node["additionalProperties"] = {
                    k: v for k, v in additional.items() if k in ("type", "maxLength", "minLength", "pattern")
                }
            else:
                node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array":
        node["items"] = structural(node.get("items", {}), defs, models, in_list=True)
    if not node.get("type") and "enum" in node:
        node["type"] = "string"
    if not node.get("type") and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["x-kubernetes-preserve-unknown-fields"] = True
        node["type"] = "object"
    if node.get("type") == "integer" and not in_list:  # in lists its cost would scale with their length
        node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), INTEGER_RULE]
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    models = _models(model)
    raw_root = {"$ref": f"#/$defs/{model.__name__}"}
    defs[model.__name__] = raw
    return structural(raw_root, defs, models)


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short: tuple[str, ...],
    scope: str,
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    printer_columns: list[dict[str, Any]],
    subresources: dict[str, Any],
    root_rules: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    spec_schema = openapi_schema(spec)
    status_schema = openapi_schema(status)
    status_schema["description"] = "Observed state, written by the operator."
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short),
                "categories": ["sbs"] if scope == "Cluster" else ["all", "sbs"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": printer_columns,
                }
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The SBSDeployment CustomResourceDefinition."""
    out = _crd(
        kind=api.KIND, plural=api.PLURAL, singular=api.SINGULAR, short=api.SHORT_NAMES, scope="Namespaced",
        description="A P/D-disaggregated SGLang deployment of a MoE model behind the SBS scheduler.",
        spec=api.SBSDeploymentSpec, status=api.SBSDeploymentStatus, printer_columns=PRINTER_COLUMNS,
        subresources={"status": {}}, root_rules=[r.schema() for r in api.ROOT_RULES],
    )  # fmt: skip
    schema = out["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema["description"] = "Desired state: the model, both roles' engine groups and the SBS scheduler."
    return out


def scaler_crd() -> dict[str, Any]:
    """SBSRoleScaler: one per role of each SBSDeployment, with the `/scale` subresource HPA and KEDA use."""
    return _crd(
        kind=role_scaler_api.KIND, plural=role_scaler_api.PLURAL, singular=role_scaler_api.SINGULAR,
        short=role_scaler_api.SHORT_NAMES, scope="Namespaced",
        description="The engine-group count of one role of an SBSDeployment (a /scale target).",
        spec=role_scaler_api.RoleScalerSpec, status=role_scaler_api.RoleScalerStatus,
        printer_columns=[
            {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.ready"},
            {"name": "Owner", "type": "string", "jsonPath": ".status.owner"},
        ],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
    )  # fmt: skip


def policy_crd() -> dict[str, Any]:
    """SBSAutoscalingPolicy (cluster-scoped)."""
    return _crd(
        kind=policy_api.KIND, plural=policy_api.PLURAL, singular=policy_api.SINGULAR,
        short=policy_api.SHORT_NAMES, scope="Cluster",
        description="Scales the External-owned roles of the SBSDeployments it selects, within a GPU budget.",
        spec=policy_api.AutoscalingPolicySpec, status=policy_api.AutoscalingPolicyStatus,
        printer_columns=[
            {"name": "Selected", "type": "integer", "jsonPath": ".status.selected"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpusDesired"},
            {"name": "Budget", "type": "integer", "jsonPath": ".spec.gpuBudget"},
            {"name": "Last", "type": "string", "jsonPath": ".status.lastDecision.reason"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={"status": {}},
    )  # fmt: skip


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, for everything `sbs-operator crds` writes."""
    return {f"{c['metadata']['name']}.yaml": c for c in (crd(), scaler_crd(), policy_crd())}


HEADER = "# Generated by `sbs-operator crds` from operator/api.py; do not edit by hand.\n"


def render(obj: dict[str, Any] | None = None) -> str:
    """One CRD as YAML (the SBSDeployment's by default)."""
    return HEADER + yaml.safe_dump(obj if obj is not None else crd(), sort_keys=False, width=120)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in all_crds().items():
        path = directory / name
        path.write_text(render(obj))
        paths.append(path)
    return paths
