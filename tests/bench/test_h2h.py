"""A tiny head-to-head run end to end: real `sbs-engine` and `sbs-scheduler` processes, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import cli
from sbs.sim.recorder import SUMMARY_KEYS


def test_tiny_h2h_completes_every_request_with_the_sim_keys(tiny_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "h2h.json"
    argv = [
        "h2h",
        "--trace",
        str(tiny_trace),
        "--duration",
        "4",
        "--load",
        "0.5",
        "--systems",
        "sbs,least_load",
        "--prefill",
        "1x2",
        "--decode",
        "1x2",
        "--time-factor",
        "0.05",
        "--stream-interval",
        "2",
        "--drain-timeout",
        "60",
        "--log-dir",
        str(tmp_path / "logs"),
        "--json",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    doc = json.loads(out.read_text())
    assert set(doc["systems"]) == {"sbs", "least_load"}
    for name, summary in doc["systems"].items():
        assert set(SUMMARY_KEYS) <= set(summary), name
        assert summary["errors"] == 0, doc["runs"][name]["errors_by_kind"]
        assert summary["completed"] == doc["requests"]
        assert summary["dropped"] == 0
        assert summary["ttft_mean_s"] > 0
        assert summary["tpot_mean_s"] > 0
        run = doc["runs"][name]
        assert run["command"].split()[0].endswith("sbs-scheduler")
        assert " run --config " in run["command"]
        assert f"--policy {name}" in run["command"]
        assert len(run["engines"]) == 2
        assert all("--attn-dp-size 2" in e for e in run["engines"])
