"""`python -m sbs.bench.fixed_cost_table`: the preset review and the margins table from JSON documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import fixed_cost_table

from tests.bench.test_field_table import cap, run


def test_margins_table_per_workload_setting_and_load(tmp_path: Path) -> None:
    caps = {"eft": cap(100e3), "eft+prio": cap(120e3), "sglang+prio": cap(110e3)}
    runs = [
        run("sbs", 0.5, 1.0, 3.0), run("sbs-fcfs", 0.5, 1.5, 2.0),
        run("eft", 0.5, 2.2, 2.5), run("eft+prio", 0.5, 2.0, 4.0),
    ]  # fmt: skip
    (tmp_path / "w-profile-max-capacity.json").write_text(json.dumps({"policies": caps}))
    (tmp_path / "w-profile-max-sweep.json").write_text(json.dumps({"runs": runs}))
    m = fixed_cost_table.margins(runs, 0.5)
    assert m["sbs"] == ("eft+prio", pytest.approx(-0.5), pytest.approx(0.2))
    assert m["sbs-fcfs"] == ("eft", pytest.approx(1.5 / 2.2 - 1), pytest.approx(-0.2))
    lines = fixed_cost_table.table(["w"], ["fitted", "profile-max"], tmp_path)
    assert len(lines) == 3  # header, rule, the one setting with results
    assert (
        lines[2] == "| w | profile-max | eft+prio 120k tok/s | 0.5 | 1.00/3.00 s | "
        "-50%, +20% (eft+prio) | -32%, -20% (eft) |"
    )


def test_review_lists_every_preset_with_its_fixed_costs() -> None:
    text = "\n".join(fixed_cost_table.review())
    assert "| fitted | - | 14.6 ms |" in text
    assert "| profile-min |" in text and "| 7.0 ms |" in text
    assert "| profile-max |" in text and "| 60.0 ms |" in text and "45.0 / 43.5 ms" in text


def test_an_unknown_setting_is_refused_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        fixed_cost_table.main(["--settings", "fitted,huge", "--tables-only", "--out", str(tmp_path)])
    assert "unknown 'huge'" in capsys.readouterr().err
