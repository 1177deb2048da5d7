"""The Argo CD health check and kstatus on SBSDeployment objects the operator really wrote.

The fixtures are objects read back from the e2e control plane while the operator walked the
sample through each state (tests/packaging/make_fixtures.py regenerates them);
test_install_e2e.py runs the same checks on objects produced live in that run.
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from tests.packaging import health, live

EXPECTED = {
    # fixture: (Argo CD health, reason shown in the message, kstatus)
    "created-no-status": ("Progressing", "Waiting for the operator", "Current"),
    "progressing-create": ("Progressing", "Reconciling", "InProgress"),
    "ready": ("Healthy", "AllGroupsReady", "Current"),
    "progressing-rolling-update": ("Progressing", "RollingUpdate", "InProgress"),
    "stale-generation": ("Progressing", "generation 3", "InProgress"),
    "degraded-insufficient-gpus": ("Degraded", "InsufficientGPUs", "Failed"),
}


def fixture(name: str) -> dict:
    return json.loads((live.FIXTURES / f"{name}.json").read_text())


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in live.FIXTURES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argo_health_of_real_objects(name: str) -> None:
    status, message = health.argo_health(fixture(name))
    want_status, want_text, _ = EXPECTED[name]
    assert (status, want_text in message) == (want_status, True), message


def test_degraded_message_names_the_missing_resource() -> None:
    _, message = health.argo_health(fixture("degraded-insufficient-gpus"))
    assert message.startswith("InsufficientGPUs: ") and "nvidia.com/gpu" in message


def test_a_condition_from_an_older_generation_is_not_trusted() -> None:
    obj = fixture("ready")
    obj["metadata"]["generation"] = 2
    obj["status"]["observedGeneration"] = 2  # status bumped, one condition left behind
    assert health.argo_health(obj) == ("Progressing", "Condition Ready is for generation 1")


def test_ready_without_a_progressing_condition_is_healthy_and_unknown_reasons_pass_through() -> None:
    obj = fixture("ready")
    obj["status"]["conditions"] = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert health.argo_health(obj)[0] == "Healthy"
    degraded = copy.deepcopy(fixture("ready"))
    for c in degraded["status"]["conditions"]:
        if c["type"] == "Degraded":
            c.update(status="True", reason="GroupFailed", message="")
    assert health.argo_health(degraded) == ("Degraded", "GroupFailed")


def test_argocd_cm_snippet_carries_the_lua_file_verbatim() -> None:
    cm = yaml.safe_load((live.MANIFESTS / "argocd" / "argocd-cm.yaml").read_text())
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert cm["data"] == {"resource.customizations.health.sbs.dev_SBSDeployment": health.LUA.read_text()}


def test_the_check_runs_on_lua_5_1_like_argo_cd() -> None:
    assert health._runtime().eval("_VERSION") == "Lua 5.1"


# -- Flux / kstatus -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n != "created-no-status"))
def test_objects_follow_kstatus_conventions(name: str) -> None:
    """observedGeneration at the top of status; a Ready condition; metav1.Condition fields."""
    obj = fixture(name)
    st = obj["status"]
    assert (
        isinstance(st["observedGeneration"], int)
        and st["observedGeneration"] <= obj["metadata"]["generation"]
    )
    types = [c["type"] for c in st["conditions"]]
    assert "Ready" in types and len(types) == len(set(types))
    for c in st["conditions"]:
        assert set(c) >= {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
        assert c["status"] in ("True", "False", "Unknown")
        assert c["reason"][:1].isupper() and c["reason"].isalnum(), c["reason"]  # CamelCase
        assert c["lastTransitionTime"].endswith("Z")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kstatus_result(name: str) -> None:
    assert health.kstatus(fixture(name))[0] == EXPECTED[name][2]


@pytest.mark.parametrize(
    ("name", "want"),
    [("progressing-create", "InProgress"), ("degraded-insufficient-gpus", "Failed")],
)
def test_kstatus_sees_progress_and_failure(name: str, want: str) -> None:
    assert health.kstatus(fixture(name))[0] == want
