"""Discovery: static records, the pod → engine record function, shape resolution, the registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import engines as eng
from sbs.scheduler.service.settings import EnginesSettings, InstanceDefaults


def make_pod(
    *,
    role: str = "prefill",
    ready: bool = True,
    leader: str = "true",
    deployment: str = "ds3",
    ip: str | None = "10.0.0.7",
    annotations: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """A leader engine pod of SBSDeployment `ds3`, as the API server returns it."""
    meta: dict[str, Any] = {
        "name": f"ds3-{role}-1-0",
        "namespace": "llm",
        "labels": {
            "sbs.dev/deployment": deployment,
            "sbs.dev/component": "engine",
            "sbs.dev/leader": leader,
            "sbs.dev/role": role,
            "sbs.dev/group": "1",
            "sbs.dev/revision": "abc123",
        },
        "annotations": {"sbs.dev/bootstrap-port": "8998", "sbs.dev/dp-size": "32", **(annotations or {})},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": meta,
        "spec": {
            "containers": [{"name": "engine", "ports": ports or [{"name": "http", "containerPort": 30000}]}]
        },
        "status": status,
    }


def test_ready_leader_pod_becomes_an_engine_record() -> None:
    rec = eng.engine_from_pod(make_pod(), deployment="ds3")
    assert rec == eng.EngineRecord(
        key="llm/ds3-prefill-1-0",
        role=Role.PREFILL,
        url="http://10.0.0.7:30000",
        revision="abc123",
        group="1",
        bootstrap_host="10.0.0.7",
        bootstrap_port=8998,
        dp_size=32,
        draining=False,
    )


@pytest.mark.parametrize(
    "pod",
    [
        make_pod(ready=False),
        make_pod(leader="false"),
        make_pod(deployment="other"),
        make_pod(ip=None),
    ],
    ids=["not_ready", "worker_pod", "other_deployment", "no_ip_yet"],
)
def test_pods_that_are_not_targets_give_none(pod: dict[str, Any]) -> None:
    assert eng.engine_from_pod(pod, deployment="ds3") is None


def test_draining_annotation_and_deletion_mark_the_engine_draining() -> None:
    assert eng.engine_from_pod(make_pod(annotations={"sbs.dev/draining": "true"}), deployment="ds3").draining
    assert eng.engine_from_pod(make_pod(deleting=True), deployment="ds3").draining
    assert not eng.engine_from_pod(
        make_pod(annotations={"sbs.dev/draining": "false"}), deployment="ds3"
    ).draining


def test_missing_annotations_leave_the_shape_to_server_info() -> None:
    pod = make_pod(role="decode")
    pod["metadata"]["annotations"] = {}
    rec = eng.engine_from_pod(pod, deployment="ds3")
    assert rec is not None and rec.role is Role.DECODE
    assert rec.dp_size is None and rec.bootstrap_port is None


def test_http_port_comes_from_the_named_container_port_and_ipv6_is_bracketed() -> None:
    rec = eng.engine_from_pod(
        make_pod(ip="fd00::7", ports=[{"name": "http", "containerPort": 8080}]), deployment="ds3"
    )
    assert rec.url == "http://[fd00::7]:8080"
    assert rec.bootstrap_host == "fd00::7"
    unnamed = eng.engine_from_pod(
        make_pod(ports=[{"containerPort": 1}]), deployment="ds3", default_port=31000
    )
    assert unnamed.url.endswith(":31000")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "router"}, "label 'sbs.dev/role' must be one of prefill, decode; got 'router'"),
        (
            {"annotations": {"sbs.dev/dp-size": "eight"}},
            "annotation 'sbs.dev/dp-size' must be a positive integer",
        ),
        (
            {"annotations": {"sbs.dev/bootstrap-port": "70000"}},
            "annotation 'sbs.dev/bootstrap-port' must be 1..65535",
        ),
    ],
    ids=["bad_role", "bad_dp_size", "bad_port"],
)
def test_malformed_leader_pods_are_errors_naming_pod_and_field(change: dict[str, Any], message: str) -> None:
    pod = make_pod(**change)
    with pytest.raises(eng.EngineRecordError, match="pod llm/ds3-") as err:
        eng.engine_from_pod(pod, deployment="ds3")
    assert message in str(err.value)


def test_static_source_keys_engines_by_role_and_position() -> None:
    engines = EnginesSettings.model_validate(
        {
            "prefill": [{"url": "http://p0:1", "bootstrap_port": 9}, {"url": "http://p1:1"}],
            "decode": [{"url": "http://d0:1", "dp_size": 8}],
        }
    )
    recs = eng.static_records(engines)
    assert [(r.key, r.role, r.revision) for r in recs] == [
        ("prefill-0", Role.PREFILL, "static"),
        ("prefill-1", Role.PREFILL, "static"),
        ("decode-0", Role.DECODE, "static"),
    ]
    assert recs[0].host == "p0" and recs[0].bootstrap_port == 9


SERVER_INFO = {
    "dp_size": 1,
    "attn_dp_size": 4,
    "chunked_prefill_size": 8192,
    "max_running_requests": 512,
    "disaggregation_bootstrap_port": 8999,
    "scheduler_info": {"max_total_num_tokens": 50000},
    "internal_states": [{}, {}, {}, {}],
}


def test_shape_resolves_from_server_info_per_rank() -> None:
    rec = eng.EngineRecord("decode-0", Role.DECODE, "http://d:1")
    spec, port = eng.resolve_spec(rec, SERVER_INFO, InstanceDefaults())
    assert (spec.dp_size, spec.chunk_tokens, spec.kv_capacity_tokens, spec.max_running_requests) == (
        4,
        2048,
        50000,
        128,
    )
    assert port is None  # a decode has no bootstrap server
    spec, port = eng.resolve_spec(
        eng.EngineRecord("prefill-0", Role.PREFILL, "http://p:1"), SERVER_INFO, InstanceDefaults()
    )
    assert (spec.max_running_requests, port) == (0, 8999)


def test_dp_size_reads_attn_dp_size_when_ranks_are_not_listed() -> None:
    info = {k: v for k, v in SERVER_INFO.items() if k != "internal_states"}
    assert eng.dp_size_of(info) == 4
    assert eng.dp_size_of({"dp_size": 1}) == 1
    assert eng.dp_size_of({}) is None


def test_record_fields_win_over_server_info_and_defaults_fill_the_rest() -> None:
    rec = eng.EngineRecord(
        "prefill-0", Role.PREFILL, "http://p:1", dp_size=2, bootstrap_port=7, chunk_tokens=100
    )
    spec, port = eng.resolve_spec(rec, None, InstanceDefaults(kv_capacity_tokens=1000))
    assert (spec.dp_size, spec.chunk_tokens, spec.kv_capacity_tokens, port) == (2, 100, 1000, 7)
    with pytest.raises(eng.EngineRecordError, match="DP size unknown"):
        eng.resolve_spec(eng.EngineRecord("p", Role.PREFILL, "http://p:1"), {}, InstanceDefaults())


def test_registry_update_keeps_the_shape_unless_it_changed() -> None:
    reg = eng.Registry()
    rec = eng.EngineRecord("p", Role.PREFILL, "http://p:1", revision="r1", dp_size=2)
    engine = reg.apply(eng.EngineChange(eng.ChangeKind.ADD, rec))
    engine.spec, _ = eng.resolve_spec(rec, None, InstanceDefaults())
    assert [e.key for e in reg.members("r1", Role.PREFILL)] == ["p"]
    reg.apply(eng.EngineChange(eng.ChangeKind.UPDATE, replace(rec, draining=True)))
    assert engine.spec is not None and not engine.usable
    reg.apply(eng.EngineChange(eng.ChangeKind.UPDATE, replace(rec, revision="r2")))
    assert engine.spec is None and reg.members("r1", Role.PREFILL) == []
    assert reg.apply(eng.EngineChange(eng.ChangeKind.REMOVE, rec)) is engine
    assert reg.engines == {}
