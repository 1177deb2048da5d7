"""A corpus of invalid SBSDeployments: each is rejected at apply time by the real API server, naming the
offending field, and by the pydantic models the operator reads objects with (one rule, two enforcers)."""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sbs.kube.blocking import ApiError
from sbs.operator import api, engine_pods

REPO = Path(__file__).resolve().parents[2]
BASELINE = yaml.safe_load((REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml").read_text())
DELETE = object()
"""In a patch: remove this key from the baseline."""


@dataclass(frozen=True)
class Case:
    id: str
    patch: dict[str, Any]
    """Deep-merged into the baseline object (`apiVersion`, `kind`, `metadata`, `spec`)."""
    field: str
    """The field the API server's message must name (as it prints it, e.g. `spec.engine.env[0].name`)."""
    status: int = 422
    marks: tuple[Any, ...] = ()


def spec(**patch: Any) -> dict[str, Any]:
    return {"spec": patch}


CASES = [
    Case("model-path-missing", spec(model={"path": DELETE}), "spec.model.path"),
    Case("model-path-empty", spec(model={"path": ""}), "spec.model.path"),
    Case("prefill-groups-negative", spec(prefill={"groups": -1}), "spec.prefill.groups"),
    Case("decode-nodes-per-group-zero", spec(decode={"nodesPerGroup": 0}), "spec.decode.nodesPerGroup"),
    Case("gpus-per-node-17", spec(prefill={"gpusPerNode": 17}), "spec.prefill.gpusPerNode"),
    Case("tp-not-all-gpus", spec(prefill={"parallelism": {"tp": 16}}), "spec.prefill.parallelism.tp"),
    Case(
        "attn-dp-not-dividing", spec(decode={"parallelism": {"attnDp": 48}}), "spec.decode.parallelism.attnDp"
    ),
    Case("ep-not-dividing", spec(prefill={"parallelism": {"ep": 24}}), "spec.prefill.parallelism.ep"),
    Case(
        "chunk-not-multiple-of-group",
        spec(prefill={"chunkedPrefillSize": 524_289}),
        "spec.prefill.chunkedPrefillSize",
    ),
    Case(
        "chunk-not-multiple-of-attn-dp",
        spec(decode={"parallelism": {"attnDp": 8}, "chunkedPrefillSize": 8_196}),
        "spec.decode.chunkedPrefillSize",
    ),
    Case("prefill-chunk-zero", spec(prefill={"chunkedPrefillSize": 0}), "spec.prefill.chunkedPrefillSize"),
    Case("port-is-bootstrap-port", spec(engine={"port": 8998}), "spec.engine.bootstrapPort"),
    Case("port-is-dist-init-port", spec(engine={"port": 5757}), "spec.engine.distInitPort"),
    Case("bootstrap-port-privileged", spec(engine={"bootstrapPort": 80}), "spec.engine.bootstrapPort"),
    Case("transfer-backend-tcp", spec(engine={"transferBackend": "tcp"}), "spec.engine.transferBackend"),
    Case(
        "transfer-backend-fake-both-roles",
        spec(engine={"transferBackend": "fake"}),
        "spec.engine.transferBackend",
    ),
    Case("moe-a2a-backend-bogus", spec(decode={"moeA2ABackend": "bogus"}), "spec.decode.moeA2ABackend"),
    Case("deepep-mode-bogus", spec(prefill={"deepepMode": "bogus"}), "spec.prefill.deepepMode"),
    Case("shm-size-lots", spec(engine={"shmSize": "lots"}), "spec.engine.shmSize"),
    Case("cpu-many", spec(decode={"resources": {"cpu": "many"}}), "spec.decode.resources.cpu"),
    Case("mem-fraction-above-one", spec(decode={"memFractionStatic": 1.5}), "spec.decode.memFractionStatic"),
    Case("mem-fraction-zero", spec(prefill={"memFractionStatic": 0}), "spec.prefill.memFractionStatic"),
    Case("scheduler-policy-fifo", spec(scheduler={"policy": "fifo"}), "spec.scheduler.policy"),
    Case("scheduler-replicas-17", spec(scheduler={"replicas": 17}), "spec.scheduler.replicas"),
    Case(
        "no-surge-no-unavailable",
        spec(updateStrategy={"maxSurge": 0, "maxUnavailable": 0}),
        "spec.updateStrategy.maxSurge",
    ),
    Case("max-skew-101", spec(updateStrategy={"maxSkewPercent": 101}), "spec.updateStrategy.maxSkewPercent"),
    Case(
        "backoff-cap-below-backoff",
        spec(restartPolicy={"backoffSeconds": 60, "maxBackoffSeconds": 30}),
        "spec.restartPolicy.maxBackoffSeconds",
    ),
    Case(
        "restart-policy-sometimes", spec(restartPolicy={"policy": "Sometimes"}), "spec.restartPolicy.policy"
    ),
    Case("gang-mode-maybe", spec(gangScheduling={"mode": "Maybe"}), "spec.gangScheduling.mode"),
    Case("extra-args-not-a-list", spec(engine={"extraArgs": "--enable-dp-lm-head"}), "spec.engine.extraArgs"),
    Case("env-name-starts-with-digit", spec(engine={"env": [{"name": "1BAD"}]}), "spec.engine.env[0].name"),
    Case(
        "node-selector-value-not-string",
        spec(decode={"nodeSelector": {"rack": 7}}),
        "spec.decode.nodeSelector",
    ),
    Case("unknown-field", spec(prefill={"nodesPergroup": 4}), "spec.prefill.nodesPergroup", status=400),
    Case("name-too-long", {"metadata": {"name": "n" * (api.MAX_NAME_LENGTH + 1)}}, "metadata.name"),
]


def merged(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


def manifest(case: Case) -> dict[str, Any]:
    obj = merged(BASELINE, {"metadata": {"name": case.id}})
    return merged(obj, case.patch)


def pydantic_paths(exc: ValidationError) -> list[str]:
    """Each error's location with the field a `Rule` names in its message (`prefill` + `parallelism.tp`)."""
    paths = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        named = re.match(r"Value error, ([A-Za-z0-9_.]+):", err["msg"])
        if named:
            loc = f"{loc}.{named[1]}" if loc else named[1]
        paths.append(loc)
    return paths


def as_pydantic_path(api_path: str) -> str:
    """`spec.engine.env[0].name` as pydantic's location below the spec: `engine.env.0.name`."""
    return re.sub(r"\[(\d+)\]", r".\1", api_path.removeprefix("spec."))


@pytest.fixture(scope="module")
def ns(kube) -> Iterator[str]:
    """One namespace for the whole corpus (rejected objects are never stored)."""
    name = f"invalid-specs-{secrets.token_hex(3)}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete(f"/api/v1/namespaces/{name}", missing_ok=True)


def collection(ns: str) -> str:
    return f"/apis/{api.API_VERSION}/namespaces/{ns}/{api.PLURAL}"


def test_corpus_is_large_and_every_case_changes_the_baseline():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    for c in CASES:
        assert merged(BASELINE, c.patch) != BASELINE, c.id


def test_baseline_is_accepted_by_the_api_server_and_pydantic(kube, ns):
    obj = manifest(Case("baseline", {}, ""))
    api.SBSDeployment.model_validate(obj)
    created = kube.create(collection(ns), obj, fieldValidation="Strict")
    assert created["spec"]["prefill"]["groups"] == 4
    kube.delete(f"{collection(ns)}/baseline")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_api_server_rejects_naming_the_field(kube, ns, case):
    obj = manifest(case)
    with pytest.raises(ApiError) as info:
        kube.create(collection(ns), obj, fieldValidation="Strict")  # as `kubectl apply` sends it
    message = info.value.message
    assert info.value.status == case.status, message
    assert case.field in message, message


PYDANTIC_MARKS: dict[str, pytest.MarkDecorator] = {}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c, id=c.id, marks=[*c.marks, *([PYDANTIC_MARKS[c.id]] if c.id in PYDANTIC_MARKS else [])]
        )
        for c in CASES
    ],
)
def test_pydantic_rejects_naming_the_field(case):
    obj = manifest(case)
    with pytest.raises(ValidationError) as info:
        if case.field.startswith("metadata."):
            api.SBSDeployment.model_validate(obj)
        else:
            api.SBSDeploymentSpec.model_validate(obj["spec"])
    paths = pydantic_paths(info.value)
    assert any(p.startswith(as_pydantic_path(case.field)) for p in paths), paths


# ---- a name the API server accepts must give children valid names ---------------------------------


@pytest.mark.parametrize("name", ["deepseek.v3"])
def test_a_name_the_api_server_accepts_yields_a_creatable_engine_service(kube, ns, name):
    obj = merged(BASELINE, {"metadata": {"name": name}})
    try:
        kube.create(collection(ns), obj, fieldValidation="Strict", dryRun="All")
    except ApiError as exc:
        assert exc.status == 422 and "metadata.name" in exc.message, exc.message
        return
    dep = api.SBSDeployment.model_validate({**obj, "metadata": {"name": name, "namespace": ns, "uid": "u"}})
    service = engine_pods.headless_service(dep)
    kube.create(f"/api/v1/namespaces/{ns}/services", service, dryRun="All")
