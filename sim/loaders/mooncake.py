"""Loader for Mooncake JSONL traces (FAST'25 release: conversation, toolagent, synthetic).

One JSON object per line: `timestamp` (ms), `input_length`, `output_length`, `hash_ids` (one hash per
512-token prompt block). As for Azure, an `output_length` of 0 becomes 1 output token.
"""

from __future__ import annotations

import os
from pathlib import Path

from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import check_int, load_json, open_text, short, text_lines
from sbs.sim.trace import Trace, build_trace

BLOCK_TOKENS = 512
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
MAX_TIMESTAMP_MS = 2**53
"""Largest timestamp (ms) kept exact as a float: about 285,000 years."""
_HASH_MIN, _HASH_MAX = -(2**63), 2**63 - 1


def load(path: str | os.PathLike[str]) -> Trace:
    """Read a Mooncake JSONL trace into a `Trace` with `block_tokens=512`."""
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with open_text(path) as f:
        for line, text in enumerate(text_lines(path, f), start=1):
            if not text.strip():
                continue
            obj = load_json(text, path, line)
            if not isinstance(obj, dict):
                raise TraceFormatError(path, line, None, f"must be a JSON object, got {type(obj).__name__}")
            for key in FIELDS:
                if key not in obj:
                    raise TraceFormatError(path, line, key, f"is missing: expected keys {', '.join(FIELDS)}")
            arrivals.append(_timestamp_s(obj["timestamp"], path, line))
            prompts.append(check_int(obj["input_length"], path, line, "input_length", minimum=1))
            outputs.append(max(1, check_int(obj["output_length"], path, line, "output_length", minimum=0)))
            hashes.append(_hash_ids(obj["hash_ids"], path, line))
    if not arrivals:
        raise TraceFormatError(path, None, None, "has no requests")
    return build_trace(Path(path).name, arrivals, prompts, outputs, hashes, block_tokens=BLOCK_TOKENS)


def _timestamp_s(ts: object, path: str | os.PathLike[str], line: int) -> float:
    if type(ts) not in (int, float) or not ts >= 0:  # NaN fails too
        message = f"must be a non-negative number of ms, got {short(ts)}"
        raise TraceFormatError(path, line, "timestamp", message)
    if ts > MAX_TIMESTAMP_MS:
        raise TraceFormatError(path, line, "timestamp", f"must be at most 2**53 ms, got {short(ts)}")
    return ts / 1000.0


def _hash_ids(ids: object, path: str | os.PathLike[str], line: int) -> tuple[int, ...]:
    if type(ids) is not list or not all(type(h) is int for h in ids):
        raise TraceFormatError(path, line, "hash_ids", f"must be a list of integers, got {short(ids)}")
    if not all(_HASH_MIN <= h <= _HASH_MAX for h in ids):
        raise TraceFormatError(path, line, "hash_ids", f"must hold 64-bit integers, got {short(ids)}")
    return tuple(ids)
