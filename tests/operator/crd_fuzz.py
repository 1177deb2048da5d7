"""Hypothesis strategies for SBSDeployment specs, biased toward the edges: a small valid spec, then up
to three mutations read off the generated CRD schema (a field removed or nulled, an unknown field, a
wrong type, a number at or just past a bound, a string at or past its length or off its pattern, an
enum near-miss) or aimed at one cross-field rule."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st
from sbs.operator import crdgen

Path = tuple[str | int, ...]

SPEC_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
NAMES = st.sampled_from(["a", "b", "t-1", "x9"])
WRONG = st.sampled_from(["7", "", "true", 7, -1, 2.5, 3.0, True, False, [], ["x"], {}, {"a": 1}, None])


def _nodes(schema: dict[str, Any], path: Path = ()) -> list[tuple[Path, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _nodes(sub, (*path, key))
    if isinstance(schema.get("items"), dict):
        out += _nodes(schema["items"], (*path, 0))
    if isinstance(schema.get("additionalProperties"), dict):
        out += _nodes(schema["additionalProperties"], (*path, "app"))
    return out


SCHEMA_NODES = [(p, n) for p, n in _nodes(SPEC_SCHEMA) if p]


@st.composite
def role(draw: st.DrawFn, prefill: bool) -> dict[str, Any]:
    nodes, gpus = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4, 8]))
    total = nodes * gpus
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    spec: dict[str, Any] = {"groups": draw(st.integers(0, 2)), "nodesPerGroup": nodes, "gpusPerNode": gpus}
    attn = total
    if draw(st.booleans()):
        par = {
            "tp": draw(st.sampled_from([0, total])),
            "attnDp": draw(st.sampled_from([0, *divisors])),
            "ep": draw(st.sampled_from([0, *divisors])),
        }
        spec["parallelism"] = par
        attn = par["attnDp"] or total
    if prefill or draw(st.booleans()):
        spec["chunkedPrefillSize"] = attn * draw(st.integers(1, 4096))
    optional = {
        "groupsOwner": st.sampled_from(["Static", "External"]),
        "moeA2ABackend": st.sampled_from(["none", "deepep", "mooncake", "nixl", "mori", "flashinfer"]),
        "deepepMode": st.sampled_from(["auto", "normal", "low_latency"]),
        "maxRunningRequests": st.integers(1, 100_000),
        "memFractionStatic": st.floats(0.05, 0.95),
        "resources": st.fixed_dictionaries(
            {
                "cpu": st.sampled_from(["8", "1.5", "500m"]),
                "rdma": st.fixed_dictionaries({"count": st.integers(0, 8)}),
            }
        ),
        "nodeSelector": st.dictionaries(st.sampled_from(["zone", "rack"]), st.sampled_from(["a", "b"])),
        "tolerations": st.lists(
            st.just({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}), max_size=1
        ),
        "topologyKey": st.sampled_from(["", "network.topology.kubernetes.io/block"]),
        "extraArgs": st.lists(st.sampled_from(["--enable-dp-lm-head", "--cuda-graph-bs", "64"]), max_size=2),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        spec[key] = draw(optional[key])
    return spec


SECRET_REF = st.fixed_dictionaries({"name": NAMES, "key": st.sampled_from(["token", "a.b", "K_1"])})
ENV = st.one_of(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["HF_TOKEN", "NCCL_DEBUG", "_X"])},
        optional={"value": st.sampled_from(["", "INFO", "1"])},
    ),
    st.fixed_dictionaries(
        {
            "name": st.just("HF_TOKEN"),
            "valueFrom": st.one_of(
                st.fixed_dictionaries({"secretKeyRef": SECRET_REF}),
                st.fixed_dictionaries({"configMapKeyRef": SECRET_REF}, optional={}),
            ),
        }
    ),
)
SELECTOR = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(
            st.sampled_from(["app", "sbs.dev/role", "kubernetes.io/metadata.name"]),
            st.sampled_from(["", "a", "gateway", "x.y_z"]),
            max_size=2,
        ),
        "matchExpressions": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "key": st.just("tier"),
                        "operator": st.sampled_from(["In", "NotIn"]),
                        "values": st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2),
                    }
                ),
                st.fixed_dictionaries(
                    {"key": st.just("tier"), "operator": st.sampled_from(["Exists", "DoesNotExist"])}
                ),
            ),
            max_size=2,
        ),
    },
)
PEER = st.one_of(
    st.fixed_dictionaries(
        {"ipBlock": st.fixed_dictionaries({"cidr": st.sampled_from(["10.0.0.0/8", "fd00::/8"])})}
    ),
    st.fixed_dictionaries({"podSelector": SELECTOR}, optional={"namespaceSelector": SELECTOR}),
    st.fixed_dictionaries({"namespaceSelector": SELECTOR}),
)


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    """A small spec meant to be valid (few nodes, every rule kept)."""
    ports = draw(st.lists(st.integers(1024, 65535), min_size=3, max_size=3, unique=True))
    engine: dict[str, Any] = {"port": ports[0], "bootstrapPort": ports[1], "distInitPort": ports[2]}
    optional = {
        "transferBackend": st.sampled_from(["mooncake", "nixl", "mori", "mooncake_tcp"]),
        "env": st.lists(ENV, max_size=3),
        "apiKeySecretRef": SECRET_REF,
        "ipcLock": st.booleans(),
        "hostNetwork": st.booleans(),
        "shmSize": st.sampled_from(["1Gi", "512Mi", "64Gi", "1024"]),
        "ibDevices": st.just("mlx5_0,mlx5_1"),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        engine[key] = draw(optional[key])
    scheduler = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "replicas": st.integers(0, 2),
                "port": st.integers(1, 65535),
                "policy": st.sampled_from(["sbs", "round_robin", "least_load"]),
                "auth": st.fixed_dictionaries({"secretRef": SECRET_REF}),
                "allowedClients": st.lists(PEER, min_size=1, max_size=3),
                "settings": st.sampled_from([{}, {"sync": {"transit_s": 0.01}}, {"bogus": 1}]),
            },
        )
    )
    spec = {
        "model": draw(
            st.fixed_dictionaries(
                {"path": st.sampled_from(["deepseek-ai/DeepSeek-V3", "/m"])},
                optional={"servedName": NAMES, "trustRemoteCode": st.booleans(), "revision": st.just("main")},
            )
        ),
        "engine": engine,
        "prefill": draw(role(True)),
        "decode": draw(role(False)),
        "scheduler": scheduler,
        "updateStrategy": {"maxSurge": draw(st.integers(1, 2)), "maxUnavailable": draw(st.integers(0, 1))},
        "restartPolicy": {
            "backoffSeconds": draw(st.integers(0, 5)),
            "maxBackoffSeconds": draw(st.integers(5, 60)),
        },
        "gangScheduling": {"mode": draw(st.sampled_from(["Auto", "Disabled"]))},
    }
    return spec


def _edge_values(draw: st.DrawFn, node: dict[str, Any]) -> Any:
    """A value at or just past one of the node's bounds, or of the wrong type."""
    kind = node.get("type")
    if "enum" in node:
        return draw(st.sampled_from([*node["enum"], "bogus", node["enum"][0].upper(), ""]))
    if kind == "integer":
        lo, hi = node.get("minimum", -(2**31)), node.get("maximum", 2**31)
        return draw(st.sampled_from([lo - 1, lo, hi, hi + 1, float(lo), lo + 0.5, str(lo), 10**20]))
    if kind == "number":
        lo, hi = node.get("minimum", -1.0), node.get("maximum", 2.0)
        return draw(st.sampled_from([lo, hi, lo - 0.01, hi + 0.01, (lo + hi) / 2, 1, "0.5"]))
    if kind == "string":
        n = node.get("maxLength", 16)
        return draw(
            st.sampled_from(
                [
                    "",
                    "a" * n,
                    "a" * (n + 1),
                    "1",
                    "x\n",
                    " ",
                    "Ä",
                    "64Gi",
                    "-a",
                    "a.b/c",
                    "100m",
                    "1.5",
                    "1e3",
                    5,
                ]
            )
        )
    if kind == "boolean":
        return draw(st.sampled_from(["true", 1, 0, True, False]))
    if kind == "array":
        return draw(st.sampled_from([[], "x", [None], {}]))
    return draw(WRONG)


def _set(tree: Any, path: Path, value: Any, *, delete: bool = False) -> None:
    """Set (or delete) `path` in `tree`, creating objects and one-item lists on the way."""
    for i, key in enumerate(path[:-1]):
        nxt: Any = [] if isinstance(path[i + 1], int) else {}
        if isinstance(tree, dict):
            if not isinstance(tree.get(key), type(nxt)):
                tree[key] = nxt
            tree = tree[key]
        elif isinstance(tree, list):
            if not tree:
                tree.append(nxt)
            tree = tree[0]
    last = path[-1]
    if isinstance(tree, dict):
        if delete:
            tree.pop(last, None)
        else:
            tree[last] = value
    elif isinstance(tree, list):
        if delete:
            tree.clear()
        elif tree:
            tree[0] = value
        else:
            tree.append(value)


RULE_BREAKERS: list[dict[str, Any]] = [
    {"prefill": {"parallelism": {"tp": 3}}},
    {"decode": {"nodesPerGroup": 1, "gpusPerNode": 8, "parallelism": {"attnDp": 3}}},
    {"decode": {"nodesPerGroup": 2, "gpusPerNode": 4, "parallelism": {"ep": 5}}},
    {
        "prefill": {
            "nodesPerGroup": 1,
            "gpusPerNode": 8,
            "parallelism": {"attnDp": 4},
            "chunkedPrefillSize": 6,
        }
    },
    {"prefill": {"chunkedPrefillSize": 0}},
    {"engine": {"port": 9000, "bootstrapPort": 9000}},
    {"engine": {"port": 9000, "distInitPort": 9000, "bootstrapPort": 9001}},
    {"engine": {"transferBackend": "fake"}, "prefill": {"groups": 1}, "decode": {"groups": 1}},
    {"engine": {"transferBackend": "fake"}, "prefill": {"groups": 0}},
    {"updateStrategy": {"maxSurge": 0, "maxUnavailable": 0}},
    {"restartPolicy": {"backoffSeconds": 60, "maxBackoffSeconds": 59}},
    {
        "engine": {
            "env": [{"name": "A", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
        }
    },
    {"engine": {"env": [{"name": "A", "valueFrom": {}}]}},
    {"engine": {"env": [{"name": "SBS_ENGINE_API_KEY", "value": "v"}]}},
    {"scheduler": {"allowedClients": []}},
    {"scheduler": {"allowedClients": [{}]}},
    {"scheduler": {"allowedClients": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}},
    {"scheduler": {"allowedClients": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}},
    {"scheduler": {"allowedClients": [{"podSelector": {"matchLabels": {"a/b/c": "x"}}}]}},
    {"scheduler": {"allowedClients": [{"podSelector": {"matchLabels": {"k": "x" * 64}}}]}},
    {"scheduler": {"allowedClients": [{"podSelector": {"matchLabels": {("p" * 254) + "/n": "x"}}}]}},
    {
        "scheduler": {
            "allowedClients": [{"podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}]
        }
    },
    {
        "scheduler": {
            "allowedClients": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]
                    }
                }
            ]
        }
    },
]


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    return {**base, **{k: _merge(base.get(k), v) for k, v in patch.items()}}


@st.composite
def mutated(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["delete", "null", "unknown", "edge", "edge", "wrong", "rule"]))
        path, node = draw(st.sampled_from(SCHEMA_NODES))
        if what == "delete":
            _set(spec, path, None, delete=True)
        elif what == "null":
            _set(spec, path, None)
        elif what == "unknown":
            _set(spec, (*path[:-1], "unknownField"), 1)
        elif what == "edge":
            _set(spec, path, _edge_values(draw, node))
        elif what == "wrong":
            _set(spec, path, draw(WRONG))
        else:
            spec = _merge(spec, draw(st.sampled_from(RULE_BREAKERS)))
    return spec


NAME = st.one_of(
    st.just("fuzz"),
    st.sampled_from(["a" * 40, "a" * 41, "deepseek.v3", "Fuzz", "9fuzz", "fuzz-", "f-9"]),
)


@st.composite
def deployments(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(metadata.name, spec)."""
    return draw(NAME), draw(mutated(draw(valid_spec())))
