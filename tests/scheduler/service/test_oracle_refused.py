"""The live service refuses the simulator's clairvoyant `oracle` policy, by flag and by config file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sbs.scheduler.service import cli
from sbs.scheduler.service.config_file import SettingsError, build_settings
from sbs.settings.service import ServiceSettings


def test_the_policy_override_is_refused_with_the_reason() -> None:
    with pytest.raises(SettingsError, match=r"simulator's clairvoyant reference.*cannot run it"):
        build_settings({}, overrides={"policy": "oracle"})


def test_a_config_naming_it_is_refused() -> None:
    with pytest.raises(ValidationError, match="live service cannot run it: use one of sbs, sbs-fcfs"):
        ServiceSettings.model_validate({"scheduler": {"policy": {"type": "oracle", "horizon_s": 1.0}}})
    with pytest.raises(SettingsError, match="oracle"):
        build_settings({"scheduler": {"policy": {"type": "oracle"}}}, where="sbs.yaml")


def test_the_flag_does_not_offer_it() -> None:
    result = CliRunner().invoke(cli.main, ["config", "--policy", "oracle"])
    assert result.exit_code == 2
    assert "'oracle' is not one of" in result.output
