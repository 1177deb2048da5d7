"""Loader for the Azure LLM inference trace 2023 (`AzureLLMInferenceTrace_{conv,code}.csv`).

Columns `TIMESTAMP,ContextTokens,GeneratedTokens`; timestamps are wall-clock like
`2023-11-16 18:15:46.6805900` (7 fractional digits; parsed to microseconds, naive times read as UTC).
A row with 0 generated tokens becomes a request with 1 output token: a request always yields at least
one token. Negative counts and non-positive context lengths are errors.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import csv_rows, parse_int, short
from sbs.sim.trace import Trace, build_trace

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def load(path: str | os.PathLike[str]) -> Trace:
    """Read an Azure LLM 2023 CSV into a `Trace` (no prefix hashes)."""
    micros: list[int] = []
    prompts: list[int] = []
    outputs: list[int] = []
    for line, (stamp, ctx, gen) in csv_rows(path, COLUMNS):
        micros.append(_parse_timestamp(stamp, path, line))
        prompts.append(parse_int(ctx, path, line, "ContextTokens", minimum=1))
        outputs.append(max(1, parse_int(gen, path, line, "GeneratedTokens", minimum=0)))
    if not micros:
        raise TraceFormatError(path, None, None, "has a header but no requests")
    first = min(micros)
    arrivals = [(m - first) / 1e6 for m in micros]
    return build_trace(Path(path).name, arrivals, prompts, outputs)


def _parse_timestamp(text: str, path: str | os.PathLike[str], line: int) -> int:
    """Microseconds since the epoch; naive timestamps are taken as UTC (only differences matter)."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TraceFormatError(
            path,
            line,
            "TIMESTAMP",
            f"must be a timestamp like '2023-11-16 18:15:46.6805900', got {short(text)}",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MICROSECOND
