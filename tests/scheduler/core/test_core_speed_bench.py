"""`python -m sbs.bench.core_speed --json OUT`: the decision round's timing summary, as a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import core_speed


@pytest.mark.slow
def test_json_summary_has_the_round_medians_and_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "core_speed.json"
    core_speed.main(["--reps", "50", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert {"median_ms", "p90_ms", "cpu_median_ms", "target_ms", "met"} <= doc.keys()
    assert doc["target_ms"] == core_speed.TARGET_MS == 1.0
    assert 0 < doc["median_ms"] <= doc["p90_ms"] and doc["cpu_median_ms"] > 0
    assert doc["met"] == (max(doc["median_ms"], doc["cpu_median_ms"]) <= doc["target_ms"])
    assert "target 1.0 ms" in capsys.readouterr().out


def test_core_ir_reads_the_collected_total_and_says_what_it_lacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`python -m sbs.bench.core_ir`: the count is callgrind's `totals:` line; without valgrind it stops
    with a message naming what to install, not a traceback."""
    from sbs.bench import core_ir

    text = "events: Ir\nsummary: 0\nfn=(1) f\n1 5\ntotals: 22647118\n"
    assert core_ir.total_instructions(text) == 22_647_118
    with pytest.raises(ValueError, match="totals"):
        core_ir.total_instructions("events: Ir\n")
    monkeypatch.setattr(core_ir.shutil, "which", lambda tool: None)
    with pytest.raises(SystemExit, match="needs valgrind and cc"):
        core_ir.main([])
