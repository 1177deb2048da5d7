"""`Trace`: an immutable, arrival-ordered list of requests, the simulator's workload input."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sbs.scheduler.core.types import Request


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival, the first arriving at 0.0 s, rids 0..n-1 in arrival order.

    `block_tokens` is the prefix-hash block size of the requests' `hash_ids` (512 for Mooncake), None
    when the trace carries no hashes. Build traces from columns with `build_trace`, which sorts,
    rebases and renumbers; the constructor only checks those invariants.
    """

    name: str
    requests: tuple[Request, ...]
    block_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.block_tokens is not None and self.block_tokens < 1:
            message = f"block_tokens must be >= 1 or None, got {self.block_tokens}"
            raise ValueError(f"trace {self.name!r}: {message}")
        if self.requests and self.requests[0].arrival_s != 0.0:
            raise ValueError(
                f"trace {self.name!r}: first arrival must be 0.0 s, got {self.requests[0].arrival_s}"
            )
        prev = 0.0
        for i, r in enumerate(self.requests):
            if r.rid != i:
                raise ValueError(f"trace {self.name!r}: request at index {i} must have rid {i}, got {r.rid}")
            if r.arrival_s < prev:
                raise ValueError(
                    f"trace {self.name!r}: arrivals must be sorted, rid {i} arrives at {r.arrival_s} s "
                    f"before rid {i - 1} at {prev} s"
                )
            prev = r.arrival_s

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Span from the first to the last arrival (0.0 for fewer than two requests)."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def mean_rate_rps(self) -> float:
        """Requests per second over `duration_s` (0.0 when the trace spans no time)."""
        return len(self.requests) / self.duration_s if self.duration_s > 0 else 0.0

    @functools.cached_property
    def total_prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def prompt_tokens_per_s(self) -> float:
        """Mean offered prompt tokens per second over `duration_s` (0.0 when it spans no time)."""
        return self.total_prompt_tokens / self.duration_s if self.duration_s > 0 else 0.0


def build_trace(
    name: str,
    arrivals_s: Sequence[float] | npt.NDArray[np.floating],
    prompt_tokens: Sequence[int] | npt.NDArray[np.integer],
    output_tokens: Sequence[int] | npt.NDArray[np.integer],
    hash_ids: Sequence[tuple[int, ...]] | None = None,
    *,
    block_tokens: int | None = None,
) -> Trace:
    """Make a `Trace` from per-request columns in any order.

    Requests are sorted by arrival (stable: ties keep their input order), arrivals are shifted so the
    first is at 0.0 s, and rids are numbered 0..n-1 in that order.
    """
    arrivals = np.asarray(arrivals_s, dtype=np.float64)
    n = len(arrivals)
    if len(prompt_tokens) != n or len(output_tokens) != n or (hash_ids is not None and len(hash_ids) != n):
        raise ValueError(f"trace {name!r}: all columns must have {n} entries (one per arrival)")
    if n == 0:
        return Trace(name, (), block_tokens)
    order = np.argsort(arrivals, kind="stable")
    times = (arrivals[order] - arrivals[order[0]]).tolist()
    prompts = np.asarray(prompt_tokens)[order].tolist()
    outputs = np.asarray(output_tokens)[order].tolist()
    if hash_ids is None:
        requests = tuple(
            Request(i, t, p, o) for i, (t, p, o) in enumerate(zip(times, prompts, outputs, strict=True))
        )
    else:
        hashes = [hash_ids[j] for j in order.tolist()]
        requests = tuple(
            Request(i, t, p, o, h)
            for i, (t, p, o, h) in enumerate(zip(times, prompts, outputs, hashes, strict=True))
        )
    return Trace(name, requests, block_tokens)
