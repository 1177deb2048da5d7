"""`sbs-sim`'s printed tables, byte for byte (golden files in tests/sim/fixtures/)."""

from __future__ import annotations

import math
from pathlib import Path

from sbs.sim import report

FIXTURES = Path(__file__).parent / "fixtures"


def summary(scale: float, *, no_itl: bool = False) -> dict[str, float]:
    return {
        "ttft_mean_s": 0.1234 * scale,
        "ttft_p50_s": 0.1 * scale,
        "ttft_p90_s": 0.3 * scale,
        "ttft_p99_s": 1.23456 * scale,
        "tpot_mean_s": 0.04567,
        "tpot_p90_s": 0.05,
        "itl_p99_s": math.nan if no_itl else 0.0789,
        "throughput_tok_s": 123456.7 / scale,
        "output_throughput_tok_s": 9876.5 / scale,
        "request_throughput": 45.678 / scale,
        "goodput_rps": 40.12 / scale,
        "prefill_chunk_utilization": 0.8765,
        "dp_imbalance": 1.2345,
        "prefill_time_balance": 0.4567,
        "completed": 1000,
        "dropped": 2,
    }


def test_compare_table_is_unchanged() -> None:
    results = [
        {"policy": "sbs", "summary": summary(1.0)},
        {"policy": "round_robin", "summary": summary(2.5, no_itl=True)},
        {"policy": "least_load", "summary": summary(1.7)},
    ]
    got = report.table(results, slo_ttft_s=2.0, slo_tpot_s=0.1)
    assert got + "\n" == (FIXTURES / "compare_table.txt").read_text()


def test_sweep_table_is_unchanged() -> None:
    results = [
        {"policy": p, "load": load, "summary": {"ttft_p90_s": v * f}}
        for p, f in (("sbs", 1.0), ("round_robin", 2.0))
        for load, v in ((0.3, 0.2), (0.5, 0.9), (0.7, 3.0))
    ]
    best = report.max_load_meeting(results, 1.0)
    got = report.sweep_table(results, [0.3, 0.5, 0.7, 0.9], 1.0, best)
    assert got + "\n" == (FIXTURES / "sweep_table.txt").read_text()


def test_sbs_fcfs_is_compared_with_the_best_baseline_in_arrival_order() -> None:
    results = [
        {"policy": "sbs", "summary": summary(1.0)},
        {"policy": "sbs-fcfs", "summary": summary(1.2)},
        {"policy": "eft", "summary": summary(2.0)},
        {"policy": "eft+prio", "summary": summary(1.5)},
    ]
    assert report.ratios_vs_best_baseline(results, "sbs")["base"] == "eft+prio"
    assert report.ratios_vs_best_baseline(results, "sbs-fcfs")["base"] == "eft"
    table = report.table(results, slo_ttft_s=2, slo_tpot_s=0.1)
    assert "sbs-fcfs vs best FCFS immediate baseline (eft)" in table
