"""The handshake table runs every model and system on a slice, and a handshake costs TTFT."""

from __future__ import annotations

from pathlib import Path

from sbs.bench import admission_table


def test_the_table_runs_every_handshake_model_and_system(tiny_trace: Path) -> None:
    doc = admission_table.table(str(tiny_trace), 0.5, 4.0)
    assert set(doc["rows"]) == set(admission_table.MODELS)
    for row in doc["rows"].values():
        assert set(row) == set(admission_table.SYSTEMS)
    none, slow = doc["rows"]["none"], doc["rows"]["bootstrap 60 ms"]
    for system in admission_table.SYSTEMS:
        assert slow[system]["ttft_mean_s"] > none[system]["ttft_mean_s"]
    assert none["sbs"] == none["sbs, lead not measured"]  # nothing to measure without a handshake
    text = admission_table.render(doc)
    assert text.count("\n| ") == len(admission_table.MODELS) + 1
