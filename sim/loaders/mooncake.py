"""Loader for Mooncake JSONL traces (FAST'25 release: conversation, toolagent, synthetic).

One JSON object per line: `timestamp` (ms), `input_length`, `output_length`, `hash_ids` (one hash per
512-token prompt block). As for Azure, an `output_length` of 0 becomes 1 output token.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import check_int, open_text
from sbs.sim.trace import Trace, build_trace

BLOCK_TOKENS = 512
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


def load(path: str | os.PathLike[str]) -> Trace:
    """Read a Mooncake JSONL trace into a `Trace` with `block_tokens=512`."""
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with open_text(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                message = f"invalid JSON: {exc.msg} (column {exc.colno})"
                raise TraceFormatError(path, line, None, message) from None
            if not isinstance(obj, dict):
                raise TraceFormatError(path, line, None, f"must be a JSON object, got {type(obj).__name__}")
            for key in FIELDS:
                if key not in obj:
                    raise TraceFormatError(path, line, key, f"is missing: expected keys {', '.join(FIELDS)}")
            ts = obj["timestamp"]
            if type(ts) not in (int, float) or not math.isfinite(ts) or ts < 0:
                message = f"must be a non-negative number of ms, got {ts!r}"
                raise TraceFormatError(path, line, "timestamp", message)
            arrivals.append(ts / 1000.0)
            prompts.append(check_int(obj["input_length"], path, line, "input_length", minimum=1))
            outputs.append(max(1, check_int(obj["output_length"], path, line, "output_length", minimum=0)))
            ids = obj["hash_ids"]
            if type(ids) is not list or not all(type(h) is int for h in ids):
                message = f"must be a list of integers, got {_short(ids)}"
                raise TraceFormatError(path, line, "hash_ids", message)
            hashes.append(tuple(ids))
    if not arrivals:
        raise TraceFormatError(path, None, None, "has no requests")
    return build_trace(Path(path).name, arrivals, prompts, outputs, hashes, block_tokens=BLOCK_TOKENS)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
