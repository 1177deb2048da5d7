"""Loader for the Azure LLM inference trace 2023 (`AzureLLMInferenceTrace_{conv,code}.csv`).

Columns `TIMESTAMP,ContextTokens,GeneratedTokens`; timestamps are wall-clock like
`2023-11-16 18:15:46.6805900` (7 fractional digits; parsed to microseconds, naive times read as UTC).
A row with 0 generated tokens becomes a request with 1 output token: a request always yields at least
one token. Negative counts and non-positive context lengths are errors.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import open_text, parse_int
from sbs.sim.trace import Trace, build_trace

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def load(path: str | os.PathLike[str]) -> Trace:
    """Read an Azure LLM 2023 CSV into a `Trace` (no prefix hashes)."""
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, None, f"empty file, expected header {','.join(COLUMNS)}")
        names = [h.strip() for h in header]
        for col in COLUMNS:
            if col not in names:
                expected, got = ",".join(COLUMNS), ",".join(names)
                raise TraceFormatError(
                    path, 1, col, f"is missing from the header: expected {expected}, got {got}"
                )
        i_ts, i_in, i_out = (names.index(c) for c in COLUMNS)
        width = len(names)
        micros: list[int] = []
        prompts: list[int] = []
        outputs: list[int] = []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise TraceFormatError(path, line, None, f"expected {width} columns, got {len(row)}")
            micros.append(_parse_timestamp(row[i_ts], path, line))
            prompts.append(parse_int(row[i_in], path, line, "ContextTokens", minimum=1))
            outputs.append(max(1, parse_int(row[i_out], path, line, "GeneratedTokens", minimum=0)))
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
            path, line, "TIMESTAMP", f"must be a timestamp like '2023-11-16 18:15:46.6805900', got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MICROSECOND
