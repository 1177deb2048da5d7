"""Field parsing shared by the loaders; every failure is a `TraceFormatError` naming file, line, field."""

from __future__ import annotations

import os
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
