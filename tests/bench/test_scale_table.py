"""`sbs-bench scale-table`: the instance and replica tables, on a tiny trace and small clusters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sbs.bench import cli, scale_table

from tests.bench.conftest import write_azure


def test_scaled_cluster_keeps_the_shapes_and_scales_decode() -> None:
    c = scale_table.scaled_cluster(16, 0.25, replicas=2, spread="random")
    assert (c.prefill.instances, c.decode.instances) == (16, 4)
    assert (c.prefill.dp_size, c.decode.dp_size) == (32, 144)
    assert (c.scheduler_replicas, c.replica_spread) == (2, "random")
    assert scale_table.scaled_cluster(2, 0.25).decode.instances == 1  # at least one


def test_gain_is_the_relative_change() -> None:
    assert scale_table.gain(1.0, 4.0) == pytest.approx(-0.75)
    assert math.isnan(scale_table.gain(1.0, 0.0))


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rows = [(i * 0.05, 200 + (i * 397) % 3000, 2 + (i * 7) % 30) for i in range(120)]
    trace = write_azure(tmp_path_factory.mktemp("scale") / "t.csv", rows)
    return scale_table.run_tables(
        trace_path=str(trace),
        instances=(2, 4),
        replicas=(1, 2),
        replica_instances=4,
        load=0.5,
        duration_s=3.0,
        echo=lambda _line: None,
    )


def test_each_row_is_compared_with_its_best_baseline(doc: dict[str, Any]) -> None:
    assert [row["prefill"] for row in doc["instances"]] == [2, 4]
    for row in doc["instances"]:
        ttft = {p: r["summary"]["ttft_mean_s"] for p, r in row["policies"].items()}
        assert set(ttft) == {"sbs", *scale_table.BASELINES}
        best = min(scale_table.BASELINES, key=ttft.__getitem__)
        assert row["best_baseline"] == best
        assert row["ttft_mean_gain"] == pytest.approx(ttft["sbs"] / ttft[best] - 1)
        assert row["policies"]["sbs"]["summary"]["completed"] == row["requests"]


def test_replica_rows_partition_the_instances_and_share_one_baseline(doc: dict[str, Any]) -> None:
    one, two = doc["replicas"]
    assert (one["instances_per_replica"], two["instances_per_replica"]) == ([4], [2, 2])
    four = doc["instances"][1]
    assert one["ttft_mean_s"] == four["policies"]["sbs"]["summary"]["ttft_mean_s"]
    assert one["gain_kept"] == pytest.approx(1.0)
    assert two["best_baseline"] == four["best_baseline"]
    assert two["summary"]["completed"] == four["requests"]


def test_tables_print_both_tables(doc: dict[str, Any]) -> None:
    text = scale_table.format_tables(doc)
    assert "scheduler replicas at 4 prefill instances" in text
    assert "2/2" in text


def test_cli_refuses_more_replicas_than_instances(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["scale-table", "--replicas", "1,8", "--replica-instances", "4"])
    assert exc.value.code == 2
    assert "--replicas" in capsys.readouterr().err


def test_cli_prints_the_tables_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_azure(tmp_path / "t.csv", [(i * 0.05, 300 + (i * 211) % 2000, 5) for i in range(60)])
    out = tmp_path / "t.json"
    argv = ["scale-table", "--trace", str(trace), "--instances", "2", "--replicas", "1,2"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--replica-instances", "2", "--duration", "2", "--json", str(out)])
    assert exc.value.code == 0
    assert "scheduler replicas at 2 prefill instances" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [r["instances_per_replica"] for r in doc["replicas"]] == [[2], [1, 1]]
