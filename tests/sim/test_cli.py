"""`sbs-sim compare|sweep` end to end on tiny traces; bad input exits 2 with one line and no traceback."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sbs.sim.cli import main

REQUIRED = (
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "itl_p99_s",
    "throughput_tok_s",
    "request_throughput",
    "goodput_rps",
    "prefill_chunk_utilization",
    "dp_imbalance",
    "completed",
    "dropped",
)
T0 = datetime(2023, 11, 16, 18, 15, 46, 680590)


def azure_csv(path: Path, rows: list[tuple[float, int, int]] | None = None) -> Path:
    """An Azure LLM 2023 CSV: (seconds after T0, context tokens, generated tokens) per row."""
    rows = rows if rows is not None else [(0.25 * i, 500 + 97 * (i % 11), 20 + i % 7) for i in range(40)]
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for s, ctx, gen in rows:
        stamp = (T0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        lines.append(f"{stamp},{ctx},{gen}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return azure_csv(tmp_path / "trace.csv")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def compare(trace: Path, *extra: str) -> Result:
    return invoke("compare", "--trace", str(trace), "--cluster", "small", "--jobs", "1", *extra)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("sbs-sim: error: ")
    for fragment in fragments:
        assert fragment in line
    return line


def test_compare_prints_table_and_writes_json_and_plot(trace: Path, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "out" / "out.json", tmp_path / "out" / "out.png"
    result = compare(trace, "--policies", "sbs,least_load", "--json", str(out_json), "--plot", str(out_png))
    assert result.exit_code == 0, result.output
    assert "TTFT mean" in result.stdout
    table_rows = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert "sbs" in table_rows and "least_load" in table_rows
    doc = json.loads(out_json.read_text())
    assert doc["requests"] == 40
    assert set(doc["policies"]) == {"sbs", "least_load"}
    for policy, summary in doc["policies"].items():
        missing = [k for k in REQUIRED if k not in summary]
        assert not missing, f"{policy}: {missing}"
        assert summary["completed"] == 40
        assert summary["dropped"] == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_policy_lists_valid_names(trace: Path) -> None:
    result = compare(trace, "--policies", "sbs,fastest")
    assert_one_line_error(result, "'fastest'", "round_robin", "least_load", "power_of_two", "sglang")


def test_unknown_cluster_preset_is_named(trace: Path) -> None:
    result = invoke("compare", "--trace", str(trace), "--cluster", "huge-h100", "--jobs", "1")
    assert_one_line_error(result, "'huge-h100'", "small", "ds3-h800")


def test_malformed_trace_row_names_file_line_and_field(tmp_path: Path) -> None:
    path = azure_csv(tmp_path / "bad.csv", [(0.0, 500, 10), (1.0, 600, 10)])
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",600,", ",abc,")
    path.write_text("\n".join(lines) + "\n")
    assert_one_line_error(compare(path), "bad.csv:3", "'ContextTokens'", "'abc'")


def test_rate_scale_and_load_are_exclusive(trace: Path) -> None:
    assert_one_line_error(compare(trace, "--rate-scale", "2", "--load", "0.5"), "--rate-scale", "--load")


def test_cluster_file_with_bad_field_is_named(trace: Path, tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.json"
    cluster.write_text(
        json.dumps(
            {
                "prefill": {"instances": 0, "nodes_per_instance": 1},
                "decode": {"instances": 1, "nodes_per_instance": 2},
            }
        )
    )
    result = invoke("compare", "--trace", str(trace), "--cluster", str(cluster), "--jobs", "1")
    assert_one_line_error(result, "cluster.json", "'prefill.instances'")


def test_request_longer_than_decode_kv_is_refused(tmp_path: Path) -> None:
    path = azure_csv(tmp_path / "long.csv", [(0.0, 500, 10), (1.0, 2_000_000, 10)])
    assert_one_line_error(compare(path, "--policies", "sbs"), "decode rank holds", "2000010")


def test_sweep_writes_max_load_per_policy(trace: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "sweep.json"
    result = invoke(
        "sweep", "--trace", str(trace), "--cluster", "small", "--jobs", "1",
        "--policies", "sbs,least_load", "--loads", "0.2,0.4", "--slo-ttft-p90", "5",
        "--json", str(out_json),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out_json.read_text())
    assert set(doc["max_load"]) == {"sbs", "least_load"}
    assert all(0.0 <= v <= 0.4 for v in doc["max_load"].values())
    assert sorted((r["policy"], r["load"]) for r in doc["runs"]) == [
        ("least_load", 0.2), ("least_load", 0.4), ("sbs", 0.2), ("sbs", 0.4),
    ]  # fmt: skip
    assert "max@5s" in result.stdout


def test_compare_accepts_synthetic_arrivals(trace: Path) -> None:
    result = compare(trace, "--policies", "sbs", "--arrivals", "gamma:2", "--seed", "3")
    assert result.exit_code == 0, result.output


def test_bad_arrivals_spec_is_one_line_error(trace: Path) -> None:
    assert_one_line_error(compare(trace, "--policies", "sbs", "--arrivals", "gamma"), "--arrivals gamma")


def test_servegen_format_needs_the_data_folder(trace: Path) -> None:
    assert_one_line_error(compare(trace, "--format", "servegen"), "ServeGen's data folder")


def test_seed_also_draws_the_clusters_jitter_and_zero_is_its_own(trace: Path, tmp_path: Path) -> None:
    """A replayed trace has no synthetic part: `--seed` moves the engines' step-time jitter instead,
    so seeds give a run's spread; seed 0 is the cluster's own seed, as before the option drew it."""

    def ttfts(*extra: str) -> dict[str, float]:
        out = tmp_path / f"seed{'-'.join(extra) or 'none'}.json"
        result = compare(trace, "--policies", "least_load", "--json", str(out), *extra)
        assert result.exit_code == 0, result.output
        summary = json.loads(out.read_text())["policies"]["least_load"]
        return {k: v for k, v in summary.items() if k != "sim_cpu_s"}  # the host's time, not the run's

    unset, zero, one = ttfts(), ttfts("--seed", "0"), ttfts("--seed", "1")
    assert zero == unset
    assert one["ttft_mean_s"] != zero["ttft_mean_s"]
    assert one["completed"] == zero["completed"] == 40
