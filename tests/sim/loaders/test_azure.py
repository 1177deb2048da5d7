"""Azure LLM 2023 CSV loader and `load_trace` format detection for CSV files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import FORMATS, azure, load_trace

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
AZURE_CONV = TRACES / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared trace data not found at {path} (expected ../shared/traces beside the repo)")
    return path


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_real_conv_trace_matches_readme():
    trace = azure.load(_real(AZURE_CONV))
    assert len(trace) == 19_366
    assert trace.name == "AzureLLMInferenceTrace_conv.csv"
    assert trace.block_tokens is None
    assert trace.duration_s == pytest.approx(3_502, abs=1)
    assert trace.mean_rate_rps == pytest.approx(5.53, abs=0.01)
    prompts = [r.prompt_tokens for r in trace.requests]
    outputs = [r.output_tokens for r in trace.requests]
    assert sum(prompts) / len(prompts) == pytest.approx(1_155, abs=1)
    assert sum(outputs) / len(outputs) == pytest.approx(211, abs=1)
    assert max(prompts) == 14_050
    assert max(outputs) == 1_000
    # 18:15:46.6805900 -> 18:15:50.9951690
    assert trace.requests[1].arrival_s == pytest.approx(4.314579, abs=1e-6)


def test_real_conv_trace_autodetects():
    trace = load_trace(_real(AZURE_CONV))
    assert len(trace) == 19_366


def test_seven_digit_fractions_and_crlf(tmp_path):
    path = _write(
        tmp_path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 18:15:46.6805900,374,44\r\n"
        "2023-11-16 18:15:46.9305900,396,109\r\n"
        "2023-11-16 18:16:00.0000000,5,5\r\n",
    )
    trace = azure.load(path)
    assert [r.arrival_s for r in trace.requests] == pytest.approx([0.0, 0.25, 13.31941])
    assert [(r.prompt_tokens, r.output_tokens) for r in trace.requests] == [(374, 44), (396, 109), (5, 5)]


def test_unsorted_rows_are_sorted_with_stable_ties(tmp_path):
    path = _write(
        tmp_path,
        HEADER + "2023-11-16 18:00:05.0,1,1\n2023-11-16 18:00:00.0,2,1\n2023-11-16 18:00:05.0,3,1\n",
    )
    trace = azure.load(path)
    assert [r.prompt_tokens for r in trace.requests] == [2, 1, 3]
    assert [r.rid for r in trace.requests] == [0, 1, 2]
    assert trace.duration_s == 5.0


def test_zero_generated_tokens_become_one(tmp_path):
    trace = azure.load(_write(tmp_path, HEADER + "2023-11-16 18:00:00.0,10,0\n"))
    assert trace.requests[0].output_tokens == 1


def test_columns_found_by_name_and_blank_lines_skipped(tmp_path):
    text = (
        "GeneratedTokens,TIMESTAMP,ContextTokens\n7,2023-11-16 18:00:00.0,10\n\n7,2023-11-16 18:00:01.0,11\n"
    )
    trace = azure.load(_write(tmp_path, text))
    assert [(r.arrival_s, r.prompt_tokens) for r in trace.requests] == [(0.0, 10), (1.0, 11)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "2023-11-16 18:00:01.0,abc,5",
            "trace.csv:3: field 'ContextTokens' must be a positive integer, got 'abc'",
        ),
        (
            "2023-11-16 18:00:01.0,0,5",
            "trace.csv:3: field 'ContextTokens' must be a positive integer, got '0'",
        ),
        (
            "2023-11-16 18:00:01.0,1.5,5",
            "trace.csv:3: field 'ContextTokens' must be a positive integer, got '1.5'",
        ),
        (
            "2023-11-16 18:00:01.0,10,-3",
            "trace.csv:3: field 'GeneratedTokens' must be a non-negative integer, got '-3'",
        ),
        (
            "n/a,10,5",
            "trace.csv:3: field 'TIMESTAMP' must be a timestamp like "
            "'2023-11-16 18:15:46.6805900', got 'n/a'",
        ),
        ("2023-11-16 18:00:01.0,10", "trace.csv:3: expected 3 columns, got 2"),
    ],
    ids=["non_integer", "zero_prompt", "decimal", "negative_output", "bad_timestamp", "short_row"],
)
def test_malformed_row_names_line_and_field(tmp_path, row, message):
    path = _write(tmp_path, HEADER + "2023-11-16 18:00:00.0,10,5\n" + row + "\n")
    with pytest.raises(TraceFormatError) as info:
        azure.load(path)
    assert str(info.value) == f"{path}:{message.removeprefix('trace.csv:')}"
    assert info.value.line == 3


def test_missing_header_column(tmp_path):
    path = _write(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:00:00.0,10\n")
    with pytest.raises(TraceFormatError, match=r":1: field 'GeneratedTokens' is missing from the header"):
        azure.load(path)


@pytest.mark.parametrize(
    ("text", "match"), [("", "empty file"), (HEADER, "no requests")], ids=["empty", "header_only"]
)
def test_file_without_requests(tmp_path, text, match):
    with pytest.raises(TraceFormatError, match=match):
        azure.load(_write(tmp_path, text))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(TraceFormatError, match=re.escape(f"{path}: no such file")):
        azure.load(path)
    with pytest.raises(TraceFormatError, match=re.escape(f"{path}: no such file")):
        load_trace(path)


def test_load_trace_detects_azure_by_header(tmp_path):
    path = _write(tmp_path, HEADER + "2023-11-16 18:00:00.0,10,5\n", name="trace.txt")
    assert len(load_trace(path)) == 1
    assert len(load_trace(path, "azure")) == 1


def test_load_trace_unknown_format_lists_valid_names(tmp_path):
    path = _write(tmp_path, HEADER + "2023-11-16 18:00:00.0,10,5\n")
    assert FORMATS == ("azure", "mooncake")
    with pytest.raises(
        TraceFormatError, match="unknown trace format 'splitwise', expected one of: azure, mooncake"
    ):
        load_trace(path, "splitwise")


def test_load_trace_points_length_tables_elsewhere(tmp_path):
    path = _write(tmp_path, "num_prefill_tokens,num_decode_tokens\n10,5\n")
    with pytest.raises(TraceFormatError, match="length table without timestamps"):
        load_trace(path)


def test_load_trace_refuses_undetectable_csv(tmp_path):
    path = _write(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(TraceFormatError, match=r"cannot tell the trace format .* one of: azure, mooncake"):
        load_trace(path)


def test_load_trace_refuses_directories_and_hints_servegen(tmp_path):
    (tmp_path / "chunk-0-trace.csv").write_text("0,0,0,,0,0\n")
    with pytest.raises(TraceFormatError, match=r"is a directory.*servegen\.generate\(\)"):
        load_trace(tmp_path)
