"""`Trace` invariants and helpers, `build_trace`, and the simulator input errors."""

from __future__ import annotations

import pickle

import pytest
from sbs.scheduler.core.types import Request
from sbs.sim.errors import ClusterConfigError, SimInputError, TraceFormatError
from sbs.sim.trace import Trace, build_trace


def test_build_trace_sorts_rebases_and_renumbers():
    trace = build_trace("t", [10.5, 12.0, 10.0], [1, 2, 3], [4, 5, 6])
    assert [r.rid for r in trace.requests] == [0, 1, 2]
    assert [r.arrival_s for r in trace.requests] == [0.0, 0.5, 2.0]
    assert [r.prompt_tokens for r in trace.requests] == [3, 1, 2]
    assert [r.output_tokens for r in trace.requests] == [6, 4, 5]


def test_build_trace_keeps_input_order_for_ties():
    trace = build_trace("t", [5.0, 1.0, 5.0, 1.0], [10, 20, 30, 40], [1, 1, 1, 1])
    assert [r.prompt_tokens for r in trace.requests] == [20, 40, 10, 30]


def test_build_trace_carries_hashes_and_block_size():
    trace = build_trace("t", [1.0, 0.0], [600, 10], [1, 1], [(1, 2), (3,)], block_tokens=512)
    assert trace.block_tokens == 512
    assert [r.hash_ids for r in trace.requests] == [(3,), (1, 2)]


def test_build_trace_rejects_ragged_columns():
    with pytest.raises(ValueError, match="2 entries"):
        build_trace("t", [0.0, 1.0], [1], [1, 1])


def test_empty_trace_has_zero_stats():
    trace = build_trace("empty", [], [], [])
    assert len(trace) == 0
    assert trace.duration_s == 0.0
    assert trace.mean_rate_rps == 0.0
    assert trace.prompt_tokens_per_s == 0.0


def test_stats_are_over_the_arrival_span():
    trace = build_trace("t", [0.0, 1.0, 4.0], [100, 200, 300], [1, 1, 1])
    assert len(trace) == 3
    assert trace.duration_s == 4.0
    assert trace.mean_rate_rps == pytest.approx(3 / 4)
    assert trace.prompt_tokens_per_s == pytest.approx(600 / 4)


def test_single_request_trace_spans_no_time():
    trace = build_trace("one", [7.0], [5], [5])
    assert trace.requests[0].arrival_s == 0.0
    assert trace.duration_s == 0.0
    assert trace.mean_rate_rps == 0.0


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ((Request(0, 1.0, 1, 1),), "first arrival must be 0.0"),
        ((Request(0, 0.0, 1, 1), Request(2, 1.0, 1, 1)), "must have rid 1, got 2"),
        ((Request(0, 0.0, 1, 1), Request(1, 2.0, 1, 1), Request(2, 1.0, 1, 1)), "must be sorted"),
    ],
    ids=["not_rebased", "rid_gap", "unsorted"],
)
def test_trace_checks_its_invariants(requests, match):
    with pytest.raises(ValueError, match=match):
        Trace("bad", requests, None)


def test_trace_rejects_nonpositive_block_size():
    with pytest.raises(ValueError, match="block_tokens"):
        Trace("bad", (), 0)


def test_trace_format_error_reads_file_line_field():
    err = TraceFormatError(
        "AzureLLMInferenceTrace_conv.csv", 812, "ContextTokens", "must be a positive integer, got 'abc'"
    )
    assert (
        str(err)
        == "AzureLLMInferenceTrace_conv.csv:812: field 'ContextTokens' must be a positive integer, got 'abc'"
    )
    assert (err.path, err.line, err.field) == ("AzureLLMInferenceTrace_conv.csv", 812, "ContextTokens")


def test_trace_format_error_without_line_or_field():
    assert str(TraceFormatError("dir/t.jsonl", None, None, "no such file")) == "dir/t.jsonl: no such file"
    assert str(TraceFormatError("t.jsonl", 3, None, "invalid JSON")) == "t.jsonl:3: invalid JSON"
    assert (
        str(TraceFormatError("t.json", None, "0.input_tokens", "is empty"))
        == "t.json: field '0.input_tokens' is empty"
    )


def test_trace_format_error_survives_a_process_pool():
    """Errors raised in `--jobs` workers are pickled back: the file, line and field must arrive."""
    err = pickle.loads(pickle.dumps(TraceFormatError("t.csv", 7, "ContextTokens", "is empty")))
    assert isinstance(err, TraceFormatError)
    assert (str(err), err.line, err.field) == ("t.csv:7: field 'ContextTokens' is empty", 7, "ContextTokens")


def test_input_errors_share_a_base():
    assert issubclass(TraceFormatError, SimInputError)
    assert issubclass(ClusterConfigError, SimInputError)
    assert issubclass(SimInputError, Exception)
