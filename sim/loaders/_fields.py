"""Field parsing shared by the loaders; every failure is a `TraceFormatError` naming file, line, field.

Files must be UTF-8 (a BOM is allowed); counts are bounded by `MAX_TOKENS` and quoted values are
shortened, so a hostile file still gives one short line, never a traceback or an unbounded message.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from sbs.sim.errors import TraceFormatError

MAX_TOKENS = 2**31 - 1
"""Largest token count a trace may hold (int32); far above any model's context."""
_MAX_DIGITS = len(str(MAX_TOKENS))
_BOMS = {  # UTF-32's first: its little-endian mark starts with UTF-16's
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a trace file for reading (universal newlines off, as `csv` wants)."""
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(path, None, None, "no such file")
    if p.is_dir():
        raise TraceFormatError(path, None, None, "is a directory, expected a trace file")
    try:
        return p.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise TraceFormatError(path, None, None, f"cannot be read: {exc.strerror}") from None


def text_lines(path: str | os.PathLike[str], f: Iterable[str]) -> Iterator[str]:
    """The lines of `f`, a decoding error becoming a `TraceFormatError` at the offending line."""
    try:
        yield from f
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except OSError as exc:
        raise TraceFormatError(path, None, None, f"cannot be read: {exc.strerror}") from None


def not_utf8(path: str | os.PathLike[str]) -> TraceFormatError:
    """The error for a file that is not UTF-8: the line and byte of the first invalid sequence."""
    data = Path(path).read_bytes()
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            return TraceFormatError(path, 1, None, f"is {name} text (byte-order mark); traces must be UTF-8")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); traces must be UTF-8"
        return TraceFormatError(path, line, None, message)
    return TraceFormatError(path, None, None, "is not UTF-8 text; traces must be UTF-8")


def load_json(text: str, path: str | os.PathLike[str], line: int | None) -> Any:
    """`json.loads` whose every failure (syntax, 4300-digit numbers, deep nesting) is one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(path, exc.lineno if line is None else line, None,
                               f"invalid JSON: {exc.msg} (column {exc.colno})") from None  # fmt: skip
    except ValueError as exc:  # a number beyond the interpreter's integer-digit limit
        reason = str(exc).split(":")[0]
        raise TraceFormatError(path, line, None, f"invalid JSON: a number is too long ({reason})") from None
    except RecursionError:
        raise TraceFormatError(path, line, None, "invalid JSON: nested too deeply") from None


def csv_rows(
    path: str | os.PathLike[str], columns: Sequence[str], *, more: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """(line number, values of `columns` in that order) for each non-blank row of a CSV whose header
    names `columns` (`more`: other columns may follow, as the message then says)."""
    etc = ",..." if more else ""
    with open_text(path) as f:
        reader = csv.reader(text_lines(path, f))
        try:
            header = next(reader, None)
            if header is None:
                message = f"empty file, expected header {','.join(columns)}{etc}"
                raise TraceFormatError(path, 1, None, message)
            names = [h.strip() for h in header]
            for col in columns:
                if col not in names:
                    expected, got = ",".join(columns), short(",".join(names))
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
        except csv.Error as exc:
            raise TraceFormatError(path, reader.line_num, None, f"is not valid CSV: {exc}") from None


def parse_int(text: str, path: str | os.PathLike[str], line: int, field: str, *, minimum: int) -> int:
    """Parse a decimal integer in [`minimum`, `MAX_TOKENS`] (no sign tricks, underscores or decimals)."""
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()):
        raise TraceFormatError(path, line, field, f"must be {_kind(minimum)}, got {short(text)}")
    if len(stripped.lstrip("0")) > _MAX_DIGITS:  # int() refuses over 4300 digits
        raise TraceFormatError(path, line, field, f"must be at most {MAX_TOKENS}, got {short(text)}")
    return check_int(int(stripped), path, line, field, minimum=minimum, shown=text)


def check_int(
    value: object, path: str | os.PathLike[str], line: int, field: str, *, minimum: int, shown: object = None
) -> int:
    """Check a decoded JSON value is an integer in [`minimum`, `MAX_TOKENS`] (bools are not integers)."""
    if type(value) is int and minimum <= value <= MAX_TOKENS:
        return value
    got = short(value if shown is None else shown)
    if type(value) is int and value > MAX_TOKENS:
        raise TraceFormatError(path, line, field, f"must be at most {MAX_TOKENS}, got {got}")
    raise TraceFormatError(path, line, field, f"must be {_kind(minimum)}, got {got}")


def short(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters (a hostile field can be megabytes long)."""
    if isinstance(value, str):
        value = value[: 4 * limit]
    try:
        text = repr(value)
    except ValueError:  # an integer past the interpreter's digit limit
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(minimum: int) -> str:
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"
