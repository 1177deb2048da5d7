"""Loader for prompt/response length tables without timestamps (Sarathi's ShareGPT, Vidur's arXiv).

Columns `num_prefill_tokens,num_decode_tokens[,...]` (extra columns are ignored). Pair a table with an
arrival process from `sbs.sim.workload`. As for traces, 0 decode tokens become 1 output token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import csv_rows, parse_int

COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


@dataclass(frozen=True)
class LengthTable:
    """Paired (prompt, output) token counts, one entry per request of the source dataset."""

    name: str
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prompt_tokens:
            raise ValueError(f"length table {self.name!r} must have at least one entry")
        if len(self.prompt_tokens) != len(self.output_tokens):
            raise ValueError(
                f"length table {self.name!r}: {len(self.prompt_tokens)} prompt lengths but "
                f"{len(self.output_tokens)} output lengths"
            )

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / len(self.prompt_tokens)

    @property
    def mean_output_tokens(self) -> float:
        return sum(self.output_tokens) / len(self.output_tokens)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Draw `n` (prompt, output) pairs uniformly with replacement, keeping each pair together."""
        idx = rng.integers(0, len(self.prompt_tokens), size=n)
        prompts = np.asarray(self.prompt_tokens, dtype=np.int64)[idx]
        outputs = np.asarray(self.output_tokens, dtype=np.int64)[idx]
        return prompts, outputs


def load(path: str | os.PathLike[str]) -> LengthTable:
    """Read a length CSV into a `LengthTable` named after the file."""
    prompts: list[int] = []
    outputs: list[int] = []
    for line, (prompt, output) in csv_rows(path, COLUMNS, more=True):
        prompts.append(parse_int(prompt, path, line, "num_prefill_tokens", minimum=1))
        outputs.append(max(1, parse_int(output, path, line, "num_decode_tokens", minimum=0)))
    if not prompts:
        raise TraceFormatError(path, None, None, "has a header but no rows")
    return LengthTable(Path(path).name, tuple(prompts), tuple(outputs))
