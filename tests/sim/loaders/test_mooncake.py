"""Mooncake JSONL loader and `load_trace` detection of JSONL files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import load_trace, mooncake

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
SYNTHETIC = TRACES / "mooncake_fast25_synthetic" / "synthetic_trace.jsonl"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared trace data not found at {path} (expected ../shared/traces beside the repo)")
    return path


def _row(ts: object = 0, inp: object = 600, out: object = 5, ids: object = None) -> str:
    hashes = [1, 2] if ids is None else ids
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": hashes})


def _write(tmp_path: Path, lines: list[str], name: str = "trace.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_real_synthetic_trace_matches_readme():
    trace = mooncake.load(_real(SYNTHETIC))
    assert len(trace) == 3_993
    assert trace.block_tokens == 512
    assert trace.duration_s == pytest.approx(1_022, abs=1)
    prompts = [r.prompt_tokens for r in trace.requests]
    outputs = [r.output_tokens for r in trace.requests]
    assert sum(prompts) / len(prompts) == pytest.approx(15_325, abs=1)
    assert sum(outputs) / len(outputs) == pytest.approx(149, abs=1)
    assert max(prompts) == 191_378
    assert all(len(r.hash_ids) == math.ceil(r.prompt_tokens / 512) for r in trace.requests)
    assert trace.requests[0].hash_ids[:3] == (0, 1, 2)


def test_real_synthetic_trace_autodetects():
    assert len(load_trace(_real(SYNTHETIC))) == 3_993


def test_milliseconds_become_seconds_and_rows_are_sorted(tmp_path):
    path = _write(tmp_path, [_row(ts=2500, inp=10), _row(ts=1000, inp=20), _row(ts=1000.5, inp=30)])
    trace = mooncake.load(path)
    assert [r.arrival_s for r in trace.requests] == pytest.approx([0.0, 0.0005, 1.5])
    assert [r.prompt_tokens for r in trace.requests] == [20, 30, 10]
    assert trace.requests[0].hash_ids == (1, 2)


def test_zero_output_becomes_one_and_blank_lines_are_skipped(tmp_path):
    trace = mooncake.load(_write(tmp_path, [_row(out=0), "", "  ", _row(ts=5)]))
    assert [r.output_tokens for r in trace.requests] == [1, 5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"timestamp": 0, "input_length": 5,', ":3: invalid JSON"),
        ("[1, 2]", ":3: must be a JSON object, got list"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}', ":3: field 'hash_ids' is missing"),
        (_row(inp="600"), ":3: field 'input_length' must be a positive integer, got '600'"),
        (_row(inp=0), ":3: field 'input_length' must be a positive integer, got 0"),
        (_row(inp=1.5), ":3: field 'input_length' must be a positive integer, got 1.5"),
        (_row(out=True), ":3: field 'output_length' must be a non-negative integer, got True"),
        (_row(out=-1), ":3: field 'output_length' must be a non-negative integer, got -1"),
        (_row(ts="0"), ":3: field 'timestamp' must be a non-negative number of ms, got '0'"),
        (_row(ts=-5), ":3: field 'timestamp' must be a non-negative number of ms, got -5"),
        (_row(ids="1,2"), ":3: field 'hash_ids' must be a list of integers, got '1,2'"),
        (_row(ids=[1, "x"]), ":3: field 'hash_ids' must be a list of integers, got [1, 'x']"),
    ],
    ids=[
        "truncated_json",
        "not_an_object",
        "missing_field",
        "string_length",
        "zero_length",
        "float_length",
        "bool_output",
        "negative_output",
        "string_timestamp",
        "negative_timestamp",
        "hashes_not_list",
        "hash_not_int",
    ],
)
def test_malformed_line_names_line_and_field(tmp_path, line, message):
    path = _write(tmp_path, [_row(), _row(ts=1), line])
    with pytest.raises(TraceFormatError) as info:
        mooncake.load(path)
    assert str(info.value).startswith(f"{path}{message}")
    assert info.value.line == 3


def test_empty_file(tmp_path):
    with pytest.raises(TraceFormatError, match="has no requests"):
        mooncake.load(_write(tmp_path, [""]))


def test_load_trace_detects_jsonl_by_extension_or_first_line(tmp_path):
    assert load_trace(_write(tmp_path, [_row()])).block_tokens == 512
    assert len(load_trace(_write(tmp_path, [_row()], name="trace.log"))) == 1
    assert len(load_trace(_write(tmp_path, [_row()], name="other.txt"), "mooncake")) == 1
