"""Trace loaders, one module per format.

`load_trace` reads a request trace (Azure CSV or Mooncake JSONL). Length tables without timestamps
(`lengths.load`) and ServeGen's per-client fits (`servegen.generate`) are not traces: pair them with an
arrival process from `sbs.sim.workload`, or sample them, explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import azure, mooncake
from sbs.sim.loaders._fields import open_text, short, text_lines
from sbs.sim.trace import Trace

FORMATS = ("azure", "mooncake")


def load_trace(path: str | os.PathLike[str], fmt: str | None = None) -> Trace:
    """Load a trace file as `fmt` (one of `FORMATS`), or detect the format from the file."""
    if fmt is not None and fmt not in FORMATS:
        raise TraceFormatError(
            path, None, None, f"unknown trace format {fmt!r}, expected one of: {', '.join(FORMATS)}"
        )
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(path, None, None, "no such file")
    if p.is_dir():
        hint = (
            " (ServeGen data is sampled with sbs.sim.loaders.servegen.generate())" if _is_servegen(p) else ""
        )
        raise TraceFormatError(path, None, None, f"is a directory, expected a trace file{hint}")
    fmt = fmt or detect_format(path)
    return azure.load(path) if fmt == "azure" else mooncake.load(path)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a trace file's format from its extension and first non-blank line."""
    with open_text(path) as f:
        first = next((line.strip() for line in text_lines(path, f) if line.strip()), "")
    suffix = Path(path).suffix.lower()
    header = {h.strip() for h in first.split(",")}
    if suffix == ".jsonl" or (suffix != ".csv" and first.startswith("{")):
        return "mooncake"
    if "TIMESTAMP" in header:
        return "azure"
    if "num_prefill_tokens" in header:
        message = "is a length table without timestamps: use lengths.load() with workload.synthetic()"
        raise TraceFormatError(path, None, None, message)
    message = (
        f"cannot tell the trace format (first line {short(first)}): pass fmt, one of: {', '.join(FORMATS)}"
    )
    raise TraceFormatError(path, None, None, message)


def _is_servegen(folder: Path) -> bool:
    return any(folder.glob("chunk-*-trace.csv")) or any(folder.glob("data/chunk-*-trace.csv"))
