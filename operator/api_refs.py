"""Parts of the `SBSDeployment` API that point outside it: Secret and ConfigMap keys (so no credential
sits in the custom resource) and NetworkPolicy peers (who may call the scheduler).

The shapes are Kubernetes' own (`EnvVar`, `EnvVarSource`, `SecretKeySelector`, `NetworkPolicyPeer`,
`LabelSelector`, `IPBlock`), restricted to what the operator passes on, and validated here as the API
server validates the objects the operator builds from them: a spec the CRD accepts never yields a
child the API server refuses. Each label and CIDR check is written twice, as CEL for the CRD and in
Python for pydantic, and the CRD fuzz test (tests/operator/test_crd_fuzz.py) holds them equal.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field
from sbs.operator.crd_model import ApiModel, Rule, rules_config

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
"""A Secret's or ConfigMap's data key."""
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{LABEL_NAME}$"
LABEL_VALUE = rf"^({LABEL_NAME})?$"
MAX_LABELS = 8
LabelValue = Annotated[str, Field(max_length=63)]


def label_key_ok(key: str) -> bool:
    """Kubernetes' `IsQualifiedName`: `[prefix/]name`, prefix a DNS subdomain of ≤ 253, name ≤ 63."""
    return re.fullmatch(LABEL_KEY, key) is not None and ("/" not in key or len(key.split("/")[0]) <= 253)


def label_value_ok(value: str) -> bool:
    return re.fullmatch(LABEL_VALUE, value) is not None


def cel_string(text: str) -> str:
    """A CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_label_key(expr: str) -> str:
    """CEL for `label_key_ok(expr)`."""
    prefix_ok = f"(!{expr}.contains('/') || {expr}.split('/')[0].size() <= 253)"
    return f"{expr}.matches({cel_string(LABEL_KEY)}) && {prefix_ok}"


def cel_label_value(expr: str) -> str:
    return f"{expr}.matches({cel_string(LABEL_VALUE)})"


class SecretKeyRef(ApiModel):
    """One key of a Secret in the deployment's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Its name.")
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY, description="Its data key.")


class KeySelector(SecretKeyRef):
    """`secretKeyRef` / `configMapKeyRef` of an environment variable (Kubernetes' shape)."""

    optional: bool = Field(default=False, description="Start the pod even when the key is missing.")


ENV_SOURCE_RULES = (
    Rule(
        "has(self.secretKeyRef) != has(self.configMapKeyRef)",
        "set exactly one of secretKeyRef and configMapKeyRef",
        ".secretKeyRef",
        lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
    ),
)


class EnvVarSource(ApiModel):
    """Where an engine environment variable's value comes from."""

    model_config = rules_config(ENV_SOURCE_RULES)
    rules: ClassVar[tuple[Rule, ...]] = ENV_SOURCE_RULES

    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None


POD_IP_ENV = "POD_IP"
API_KEY_ENV = "SBS_ENGINE_API_KEY"
"""The engines' `--api-key`, from `spec.engine.apiKeySecretRef` (the kubelet expands it in the args)."""
RESERVED_ENV = (POD_IP_ENV, API_KEY_ENV)
"""Set by the operator on every engine container."""

ENV_VAR_RULES = (
    Rule(
        "!has(self.valueFrom) || self.value == ''",
        "value and valueFrom are exclusive",
        ".valueFrom",
        lambda v: v.value_from is None or v.value == "",
    ),
    Rule(
        " && ".join(f"self.name != '{n}'" for n in RESERVED_ENV),
        f"{' and '.join(RESERVED_ENV)} are set by the operator",
        ".name",
        lambda v: v.name not in RESERVED_ENV,
    ),
)


class EnvVar(ApiModel):
    """An engine environment variable: a literal `value`, or `valueFrom` a Secret or ConfigMap key
    (a hub token belongs in a Secret, never in the custom resource)."""

    model_config = rules_config(ENV_VAR_RULES)
    rules: ClassVar[tuple[Rule, ...]] = ENV_VAR_RULES

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = Field(default="", max_length=4096)
    value_from: EnvVarSource | None = None


class SchedulerAuth(ApiModel):
    """Bearer-token / API-key checking on the scheduler's API (probes and `/metrics` stay open)."""

    secret_ref: SecretKeyRef = Field(
        description="A Secret key holding the accepted tokens, one per line (mounted into the scheduler)."
    )


SELECTOR_REQUIREMENT_RULES = (
    Rule(
        "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
        "In and NotIn need values; Exists and DoesNotExist take none",
        ".values",
        lambda r: (r.operator in ("In", "NotIn")) == bool(r.values),
    ),
    Rule(
        cel_label_key("self.key"),
        "must be a label key: [prefix/]name, name at most 63 characters",
        ".key",
        lambda r: label_key_ok(r.key),
    ),
    Rule(
        f"!has(self.values) || self.values.all(v, {cel_label_value('v')})",
        "each must be a label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends",
        ".values",
        lambda r: all(label_value_ok(v) for v in r.values),
    ),
)


class LabelSelectorRequirement(ApiModel):
    model_config = rules_config(SELECTOR_REQUIREMENT_RULES)
    rules: ClassVar[tuple[Rule, ...]] = SELECTOR_REQUIREMENT_RULES

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list, max_length=MAX_LABELS)


LABEL_SELECTOR_RULES = (
    Rule(
        f"!has(self.matchLabels) || self.matchLabels.all(k, {cel_label_key('k')} "
        f"&& {cel_label_value('self.matchLabels[k]')})",
        "keys must be label keys and values label values (at most 63 characters each part)",
        ".matchLabels",
        lambda s: all(label_key_ok(k) and label_value_ok(v) for k, v in s.match_labels.items()),
    ),
)


class LabelSelector(ApiModel):
    """Kubernetes' `LabelSelector`; empty selects everything."""

    model_config = rules_config(LABEL_SELECTOR_RULES)
    rules: ClassVar[tuple[Rule, ...]] = LABEL_SELECTOR_RULES

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=MAX_LABELS)


def canonical_cidr(text: str) -> bool:
    """A CIDR in canonical form (host bits zero, as `ip/len` prints it): what NetworkPolicy takes."""
    try:
        return str(ipaddress.ip_network(text, strict=True)) == text
    except ValueError:
        return False


IP_BLOCK_RULES = (
    Rule(
        "isCIDR(self.cidr) && string(cidr(self.cidr).masked()) == self.cidr",
        "must be a CIDR in canonical form, e.g. 10.0.0.0/8 (host bits zero)",
        ".cidr",
        lambda b: canonical_cidr(b.cidr),
    ),
)


class IPBlock(ApiModel):
    model_config = rules_config(IP_BLOCK_RULES)
    rules: ClassVar[tuple[Rule, ...]] = IP_BLOCK_RULES

    cidr: str = Field(min_length=1, max_length=64)


PEER_RULES = (
    Rule(
        "has(self.ipBlock) ? !has(self.podSelector) && !has(self.namespaceSelector) "
        ": has(self.podSelector) || has(self.namespaceSelector)",
        "set ipBlock alone, or podSelector and/or namespaceSelector",
        ".ipBlock",
        lambda p: (
            p.pod_selector is None and p.namespace_selector is None
            if p.ip_block is not None
            else p.pod_selector is not None or p.namespace_selector is not None
        ),
    ),
)


class NetworkPolicyPeer(ApiModel):
    """Kubernetes' `NetworkPolicyPeer`: pods (in this namespace, or in the namespaces selected), or an
    IP block. `namespaceSelector: {}` means every namespace."""

    model_config = rules_config(PEER_RULES)
    rules: ClassVar[tuple[Rule, ...]] = PEER_RULES

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
