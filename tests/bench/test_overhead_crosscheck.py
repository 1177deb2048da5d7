"""Tiny overhead and cross-check runs through the CLI (instant or compressed engines, few requests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import cli


def _run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0


def test_overhead_measures_direct_and_our_scheduler(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    _run(
        [
            "overhead",
            *("--requests", "20", "--concurrency", "4", "--duration", "1"),
            *("--systems", "direct,sbs", "--prefill", "1x2", "--decode", "1x2"),
            *("--log-dir", str(tmp_path / "logs"), "--json", str(out)),
        ]
    )
    doc = json.loads(out.read_text())
    assert set(doc["systems"]) == {"direct", "sbs"}
    for r in doc["systems"].values():
        assert r["latency_errors"] == 0 and r["throughput_errors"] == 0
        assert r["latency_p50_ms"] > 0 and r["throughput_rps"] > 0
    assert doc["systems"]["direct"]["overhead_p50_ms"] == 0
    assert "overhead_p99_ms" in doc["systems"]["sbs"]
    sbs = doc["systems"]["sbs"]
    assert sbs["rps_per_cpu_core"] > 0
    assert sbs["cpu_us_per_request"] == pytest.approx(1e6 / sbs["rps_per_cpu_core"])


def test_crosscheck_reports_raw_and_corrected_differences(tiny_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cc.json"
    _run(
        [
            "crosscheck",
            *("--trace", str(tiny_trace), "--duration", "4", "--load", "0.5", "--policies", "sbs"),
            *("--seeds", "2"),
            *("--prefill", "1x2", "--decode", "1x2", "--time-factor", "0.05", "--stream-interval", "2"),
            *("--log-dir", str(tmp_path / "logs"), "--json", str(out)),
        ]
    )
    (check,) = json.loads(out.read_text())["checks"]
    assert check["policy"] == "sbs"
    assert check["emulated"]["errors"] == 0
    for stat, diff in (("ttft_mean_s", "relative_difference"), ("ttft_p90_s", "relative_difference_p90")):
        t = check[stat]
        step = check["emulated_decode_step_mean_s"]
        assert t["emulated_corrected"] == pytest.approx(t["emulated_raw"] + step)
        assert check[diff]["raw"] == pytest.approx(t["emulated_raw"] / t["simulated"] - 1)
        assert t["simulated"] == check["simulated"][stat]
    assert check["emulated_decode_step_mean_s"] > 0
    assert check["simulated_bootstrap_s"] > 0  # the emulated prefills' own handshake wait
    for stat in ("ttft_mean_s", "ttft_p90_s"):  # the first seed is the one compared; the mean over both
        seeds = check["simulated_seeds"][stat]
        assert seeds["values"][0] == check[stat]["simulated"] and len(seeds["values"]) == 2
        assert seeds["mean"] == pytest.approx(sum(seeds["values"]) / 2)


def test_the_simulated_twin_takes_the_scheduler_config_as_the_live_run_does() -> None:
    from sbs.bench.crosscheck import simulated_policy
    from sbs.settings import scheduling

    assert simulated_policy("sbs", {}) == scheduling.policy_settings("sbs")
    over = {"scheduler": {"policy": {"chunk_sync": False, "batching": {"lead_s": 0.01}}}}
    got = simulated_policy("sbs", over)
    assert isinstance(got, scheduling.SbsPolicy) and not got.chunk_sync and got.batching.lead_s == 0.01
    assert got.batching.max_hold_s == scheduling.policy_settings("sbs").batching.max_hold_s  # merged
    assert isinstance(
        simulated_policy("sbs", {"scheduler": {"policy": {"type": "eft"}}}), scheduling.EftPolicy
    )
