"""Aligned text tables of run summaries, shared by `sbs-sim` and `sbs-bench`.

`COLUMNS` is the one column vocabulary, keyed by the summary keys (`sbs.sim.recorder.SUMMARY_KEYS`
plus the live benchmark's `errors`); each table picks its columns with `pick`. `align` renders any
table of cells: right-aligned columns two spaces apart, a dashed rule under the header row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    """The summary key it shows."""
    header: str
    fmt: str
    """`str.format` pattern of a value; a missing or NaN value shows as `-`."""


COLUMNS: dict[str, Column] = {
    c.key: c
    for c in (
        Column("ttft_mean_s", "TTFT mean", "{:.3f}"),
        Column("ttft_p50_s", "p50", "{:.3f}"),
        Column("ttft_p90_s", "p90", "{:.3f}"),
        Column("ttft_p99_s", "p99", "{:.3f}"),
        Column("tpot_mean_s", "TPOT mean", "{:.4f}"),
        Column("itl_p99_s", "ITL p99", "{:.4f}"),
        Column("throughput_tok_s", "tok/s", "{:.0f}"),
        Column("output_throughput_tok_s", "out tok/s", "{:.0f}"),
        Column("request_throughput", "req/s", "{:.2f}"),
        Column("goodput_rps", "goodput", "{:.2f}"),
        Column("prefill_chunk_utilization", "chunk util", "{:.2f}"),
        Column("dp_imbalance", "DP imbal", "{:.2f}"),
        Column("prefill_time_balance", "time bal", "{:.2f}"),
        Column("completed", "done", "{:.0f}"),
        Column("dropped", "dropped", "{:.0f}"),
        Column("errors", "errors", "{:.0f}"),
    )
}


LATENCY_KEYS = ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_mean_s", "itl_p99_s")
"""The latency columns every summary table leads with."""


def pick(*keys: str, **formats: str) -> tuple[Column, ...]:
    """The columns of `keys`, in that order; `formats` (key=pattern) overrides a column's pattern."""
    return tuple(replace(COLUMNS[k], fmt=formats[k]) if k in formats else COLUMNS[k] for k in keys)


def cell(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def summary_lines(
    label: str, summaries: Iterable[tuple[str, Mapping[str, Any]]], columns: Sequence[Column]
) -> list[str]:
    """One row per (name, summary), headed `label` and the columns' headers, aligned."""
    rows = [[label, *(c.header for c in columns)]]
    rows += [[name, *(cell(c.fmt, s.get(c.key)) for c in columns)] for name, s in summaries]
    return align(rows)


def align(rows: list[list[str]]) -> list[str]:
    """`rows` (the first is the header) right-aligned in columns, with a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
