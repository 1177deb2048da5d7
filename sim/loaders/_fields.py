"""Field parsing shared by the loaders; every failure is a `TraceFormatError` naming file, line, field."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from sbs.sim.errors import TraceFormatError


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a trace file for reading (universal newlines off, as `csv` wants)."""
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(path, None, None, "no such file")
    if p.is_dir():
        raise TraceFormatError(path, None, None, "is a directory, expected a trace file")
    return p.open(encoding="utf-8-sig", newline="")


def csv_rows(
    path: str | os.PathLike[str], columns: Sequence[str], *, more: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """(line number, values of `columns` in that order) for each non-blank row of a CSV whose header
    names `columns` (`more`: other columns may follow, as the message then says)."""
    etc = ",..." if more else ""
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, None, f"empty file, expected header {','.join(columns)}{etc}")
        names = [h.strip() for h in header]
        for col in columns:
            if col not in names:
                expected, got = ",".join(columns), ",".join(names)
                raise TraceFormatError(
                    path, 1, col, f"is missing from the header: expected {expected}{etc}, got {got}"
                )
        index = [names.index(c) for c in columns]
        width = len(names)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise TraceFormatError(path, line, None, f"expected {width} columns, got {len(row)}")
            yield line, [row[i] for i in index]


def parse_int(text: str, path: str | os.PathLike[str], line: int, field: str, *, minimum: int) -> int:
    """Parse a decimal integer >= `minimum` (no sign tricks, underscores or decimals)."""
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit():
        value = int(stripped)
        if value >= minimum:
            return value
    raise TraceFormatError(path, line, field, f"must be {_kind(minimum)}, got {text!r}")


def check_int(value: object, path: str | os.PathLike[str], line: int, field: str, *, minimum: int) -> int:
    """Check a decoded JSON value is an integer >= `minimum` (bools are not integers)."""
    if type(value) is int and value >= minimum:
        return value
    raise TraceFormatError(path, line, field, f"must be {_kind(minimum)}, got {value!r}")


def _kind(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"
