"""The static source, engine shapes from records and `/server_info`, and the registry."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sbs.scheduler.core.types import Role
from sbs.scheduler.service.discovery import (
    ChangeKind,
    EngineChange,
    EngineRecord,
    EngineRecordError,
    static_records,
)
from sbs.scheduler.service.engine_registry import Registry, dp_size_of, resolve_spec
from sbs.settings.service import EnginesSettings, InstanceDefaults


def test_static_source_keys_engines_by_role_and_position() -> None:
    engines = EnginesSettings.model_validate(
        {
            "prefill": [{"url": "http://p0:1", "bootstrap_port": 9}, {"url": "http://p1:1"}],
            "decode": [{"url": "http://d0:1", "dp_size": 8}],
        }
    )
    recs = static_records(engines)
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
    rec = EngineRecord("decode-0", Role.DECODE, "http://d:1")
    spec, port = resolve_spec(rec, SERVER_INFO, InstanceDefaults())
    assert (spec.dp_size, spec.chunk_tokens, spec.kv_capacity_tokens, spec.max_running_requests) == (
        4,
        2048,
        50000,
        128,
    )
    assert port is None  # a decode has no bootstrap server
    spec, port = resolve_spec(
        EngineRecord("prefill-0", Role.PREFILL, "http://p:1"), SERVER_INFO, InstanceDefaults()
    )
    assert (spec.max_running_requests, port) == (0, 8999)


def test_dp_size_reads_attn_dp_size_when_ranks_are_not_listed() -> None:
    info = {k: v for k, v in SERVER_INFO.items() if k != "internal_states"}
    assert dp_size_of(info) == 4
    assert dp_size_of({"dp_size": 1}) == 1
    assert dp_size_of({}) is None


def test_record_fields_win_over_server_info_and_defaults_fill_the_rest() -> None:
    rec = EngineRecord("prefill-0", Role.PREFILL, "http://p:1", dp_size=2, bootstrap_port=7, chunk_tokens=100)
    spec, port = resolve_spec(rec, None, InstanceDefaults(kv_capacity_tokens=1000))
    assert (spec.dp_size, spec.chunk_tokens, spec.kv_capacity_tokens, port) == (2, 100, 1000, 7)
    with pytest.raises(EngineRecordError, match="DP size unknown"):
        resolve_spec(EngineRecord("p", Role.PREFILL, "http://p:1"), {}, InstanceDefaults())


def test_registry_update_keeps_the_shape_unless_it_changed() -> None:
    reg = Registry()
    rec = EngineRecord("p", Role.PREFILL, "http://p:1", revision="r1", dp_size=2)
    engine = reg.apply(EngineChange(ChangeKind.ADD, rec))
    engine.spec, _ = resolve_spec(rec, None, InstanceDefaults())
    assert [e.key for e in reg.members("r1", Role.PREFILL)] == ["p"]
    reg.apply(EngineChange(ChangeKind.UPDATE, replace(rec, draining=True)))
    assert engine.spec is not None and not engine.usable
    reg.apply(EngineChange(ChangeKind.UPDATE, replace(rec, revision="r2")))
    assert engine.spec is None and reg.members("r1", Role.PREFILL) == []
    assert reg.apply(EngineChange(ChangeKind.REMOVE, rec)) is engine
    assert reg.engines == {}
