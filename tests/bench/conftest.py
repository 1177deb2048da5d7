"""Tiny traces for the live benchmarks: a few seconds of arrivals, written as Azure CSV."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_azure(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    """An Azure LLM trace CSV of (arrival s, prompt tokens, output tokens) rows."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, p, o in rows:
        whole = int(t)
        micro = round((t - whole) * 1e6)
        lines.append(f"2023-11-16 18:15:{whole:02d}.{micro:06d},{p},{o}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    """24 requests over ~4 s, prompts of 100-3000 tokens, outputs of 2-40 tokens."""
    rows = [(i * 0.17, 100 + (i * 397) % 2900, 2 + (i * 7) % 39) for i in range(24)]
    return write_azure(tmp_path / "tiny.csv", rows)
