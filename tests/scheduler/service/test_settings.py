"""Service settings: files, flags, and errors that name the field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sbs.scheduler.service import cli
from sbs.scheduler.service.config_file import (
    SettingsError,
    build_settings,
    parse_engine_flag,
    read_config_file,
)
from sbs.settings import scheduling
from sbs.settings.service import ServiceSettings


def test_defaults_are_valid_and_run_sbs() -> None:
    s = ServiceSettings()
    assert s.scheduler.policy.type == "sbs"
    assert s.engines.prefill == () and s.admission.max_buffered_requests > 0


def test_yaml_file_embeds_the_core_settings(tmp_path: Path) -> None:
    path = tmp_path / "sbs.yaml"
    path.write_text(
        "port: 9000\n"
        "scheduler:\n  policy: {type: sbs, batching: {max_hold_s: 2.5}}\n"
        "engines:\n  prefill: [{url: 'http://p0:30000', bootstrap_port: 8998, dp_size: 8}]\n"
        "  decode: [{url: 'http://d0:30000/'}]\n"
    )
    s = build_settings(read_config_file(path))
    assert s.port == 9000
    assert isinstance(s.scheduler.policy, scheduling.SbsPolicy)
    assert s.scheduler.policy.batching.max_hold_s == 2.5
    assert s.engines.decode[0].url == "http://d0:30000"


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "sbs.json"
    path.write_text(json.dumps({"scheduler": {"policy": {"type": "least_load"}}}))
    assert build_settings(read_config_file(path)).scheduler.policy.type == "least_load"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"admission": {"max_buffered_requests": -1}}, "admission.max_buffered_requests"),
        (
            {"scheduler": {"policy": {"type": "sbs", "batching": {"max_hold_s": 0}}}},
            "scheduler.policy.batching.max_hold_s",
        ),
        ({"engines": {"prefill": [{"url": "p0:30000"}]}}, "engines.prefill.0.url"),
        ({"portt": 1}, "portt"),
        ({"scheduler": {"policy": {"type": "fifo"}}}, "scheduler.policy"),
    ],
    ids=["negative_buffer", "core_field", "url_scheme", "unknown_key", "unknown_policy"],
)
def test_invalid_config_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(SettingsError, match=f"sbs.yaml: field '{field}"):
        build_settings(data, where="sbs.yaml")


def test_flags_override_the_file_and_policy_keeps_its_tuning() -> None:
    data = {
        "port": 1,
        "scheduler": {"policy": {"type": "sbs", "batching": {"max_hold_s": 3}}},
        "engines": {"prefill": [{"url": "http://a:1"}], "decode": [{"url": "http://b:1"}]},
    }
    s = build_settings(
        data, overrides={"port": 2, "policy": "sbs", "prefill": [{"url": "http://c:1"}], "decode": []}
    )
    assert s.port == 2
    assert s.scheduler.policy.batching.max_hold_s == 3  # type: ignore[union-attr]
    assert [e.url for e in s.engines.prefill] == ["http://c:1"]
    assert [e.url for e in s.engines.decode] == ["http://b:1"]
    assert build_settings(data, overrides={"policy": "random"}).scheduler.policy.type == "random"


def test_unknown_policy_flag_lists_the_valid_ones() -> None:
    with pytest.raises(SettingsError, match="valid: sbs, sbs-fcfs, eft, round_robin"):
        build_settings({}, overrides={"policy": "fifo"})


def test_policy_names_carry_engine_options_after_a_plus() -> None:
    p = scheduling.policy_settings("sglang+delayer+prio")
    assert isinstance(p, scheduling.SglangPolicy) and p.engine_delayer and p.engine_priority
    assert p.name == "sglang+delayer+prio" and scheduling.policy_settings("sbs").name == "sbs"
    with pytest.raises(ValueError, match="unknown option 'fast' after"):
        scheduling.policy_settings("eft+fast")
    with pytest.raises(ValueError, match="are for the immediate policies; sbs-fcfs decides"):
        scheduling.policy_settings("sbs-fcfs+prio")


def test_the_live_service_refuses_the_engines_own_options_by_field() -> None:
    data = {"scheduler": {"policy": {"type": "least_load", "engine_delayer": True}}}
    with pytest.raises(SettingsError, match=r"scheduler\.policy\.engine_delayer: the prefill delayer is"):
        build_settings(data, where="f.yaml")


def test_the_policy_flag_takes_engine_options_and_keeps_the_files_settings_of_that_policy() -> None:
    data = {"scheduler": {"policy": {"type": "eft", "decode_rule": "random"}}}
    p = build_settings(data, overrides={"policy": "eft+prio"}).scheduler.policy
    assert isinstance(p, scheduling.EftPolicy) and p.engine_priority and p.decode_rule == "random"
    p = build_settings(data, overrides={"policy": "least_load+prio"}).scheduler.policy
    assert isinstance(p, scheduling.LeastLoadPolicy) and p.engine_priority
    with pytest.raises(SettingsError, match=r"--policy: policy 'eft\+fast': unknown option 'fast'"):
        build_settings({}, overrides={"policy": "eft+fast"})


def test_engine_flag_parses_key_values() -> None:
    assert parse_engine_flag("http://p:30000,bootstrap_port=8998,dp_size=4", "--prefill") == {
        "url": "http://p:30000",
        "bootstrap_port": "8998",
        "dp_size": "4",
    }
    with pytest.raises(SettingsError, match=r"--prefill 'http://p,bootsrap_port=1'.*got 'bootsrap_port=1'"):
        parse_engine_flag("http://p,bootsrap_port=1", "--prefill")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("port: 1\nscheduler: [\n")
    with pytest.raises(SettingsError, match=r"bad.yaml:\d+: invalid YAML"):
        read_config_file(path)


def test_cli_config_prints_effective_settings_and_exits_2_on_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["config", "--decode", "http://d:1,dp_size=8", "--policy", "power_of_two"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["scheduler"]["policy"]["type"] == "power_of_two"
    assert doc["engines"]["decode"][0]["dp_size"] == 8
    bad = runner.invoke(cli.main, ["config", "--prefill", "http://p:1,dp_size=zero"])
    assert bad.exit_code == 2
    assert "field 'engines.prefill.0.dp_size'" in bad.output
    schema = runner.invoke(cli.main, ["config", "--schema"])
    assert schema.exit_code == 0 and "ServiceSettings" in schema.output


def test_the_configuration_reference_in_the_docs_is_a_valid_config() -> None:
    import yaml

    text = (Path(__file__).parents[3] / "docs" / "service.md").read_text()
    section = text[text.index("## Configuration reference") :]
    start = section.index("```yaml") + len("```yaml")
    settings = ServiceSettings.model_validate(yaml.safe_load(section[start : section.index("```", start)]))
    assert settings.replicas is not None and settings.engines.kubernetes is not None


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        ({"backend": "directory"}, "needs 'directory'"),
        ({"backend": "kubernetes"}, "needs engines.kubernetes"),
        ({"backend": "directory", "directory": "/x", "renew_interval_s": 2}, "at most half"),
    ],
)
def test_replica_settings_that_cannot_work_are_refused(replicas: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceSettings.model_validate({"replicas": replicas})


def test_the_event_loop_setting_picks_the_loop_and_a_missing_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed
    assert cli.loop_factory("auto") is None
    with pytest.raises(SystemExit) as exit_info:
        cli.loop_factory("uvloop")
    assert exit_info.value.code == 2 and "event_loop: uvloop is not installed" in capsys.readouterr().err
