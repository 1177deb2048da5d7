"""Length-table loader (ShareGPT / arXiv token counts without timestamps) and `LengthTable`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import lengths
from sbs.sim.loaders.lengths import LengthTable

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
SHAREGPT = TRACES / "sharegpt_lengths_sarathi" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
ARXIV = (
    TRACES
    / "arxiv_summarization_lengths_vidur"
    / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
)
HEADER = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared trace data not found at {path} (expected ../shared/traces beside the repo)")
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lengths.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("path", "rows", "mean_in", "mean_out"),
    [(SHAREGPT, 30_731, 2_340, 439), (ARXIV, 28_257, 2_588, 291)],
    ids=["sharegpt", "arxiv"],
)
def test_real_tables_match_readme(path, rows, mean_in, mean_out):
    table = lengths.load(_real(path))
    assert len(table) == rows
    assert table.name == path.name
    assert table.mean_prompt_tokens == pytest.approx(mean_in, abs=1)
    assert table.mean_output_tokens == pytest.approx(mean_out, abs=1)


def test_reads_pairs_and_ignores_extra_columns(tmp_path):
    table = lengths.load(_write(tmp_path, HEADER + "74,918,992,0.08\n290,0,290,inf\n"))
    assert table.prompt_tokens == (74, 290)
    assert table.output_tokens == (918, 1)  # 0 decode tokens -> 1


def test_only_the_two_length_columns_are_required(tmp_path):
    table = lengths.load(_write(tmp_path, "num_decode_tokens,num_prefill_tokens\n5,7\n"))
    assert (table.prompt_tokens, table.output_tokens) == ((7,), (5,))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("x,5,5,1.0", ":3: field 'num_prefill_tokens' must be a positive integer, got 'x'"),
        ("0,5,5,0.0", ":3: field 'num_prefill_tokens' must be a positive integer, got '0'"),
        ("5,-2,3,1.0", ":3: field 'num_decode_tokens' must be a non-negative integer, got '-2'"),
        ("5,5", ":3: expected 4 columns, got 2"),
    ],
    ids=["non_integer", "zero_prompt", "negative_output", "short_row"],
)
def test_malformed_row_names_line_and_field(tmp_path, row, message):
    path = _write(tmp_path, HEADER + "1,1,2,1.0\n" + row + "\n")
    with pytest.raises(TraceFormatError) as info:
        lengths.load(path)
    assert str(info.value) == f"{path}{message}"


def test_missing_column(tmp_path):
    with pytest.raises(TraceFormatError, match=":1: field 'num_decode_tokens' is missing from the header"):
        lengths.load(_write(tmp_path, "num_prefill_tokens,num_total_tokens\n1,2\n"))


def test_header_only(tmp_path):
    with pytest.raises(TraceFormatError, match="no rows"):
        lengths.load(_write(tmp_path, HEADER))


def test_sample_keeps_pairs_and_is_deterministic():
    table = LengthTable("t", (10, 20, 30), (1, 2, 3))
    prompts, outputs = table.sample(np.random.default_rng(7), 1_000)
    assert set(zip(prompts.tolist(), outputs.tolist(), strict=True)) == {(10, 1), (20, 2), (30, 3)}
    again, _ = table.sample(np.random.default_rng(7), 1_000)
    assert np.array_equal(prompts, again)


@pytest.mark.parametrize(
    ("prompts", "outputs", "match"),
    [((), (), "at least one"), ((1, 2), (1,), "2 prompt lengths but 1 output")],
    ids=["empty", "ragged"],
)
def test_length_table_validates(prompts, outputs, match):
    with pytest.raises(ValueError, match=match):
        LengthTable("t", prompts, outputs)
