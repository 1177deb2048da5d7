"""The core's compiled hot loops (`decode_kernel`, `prefill_kernel`, `policies.sbs_cap`,
`policies.sbs_take`): how they are compiled, and a warm-up that compiles them before the first decision
needs them.

numba compiles a kernel at its first call (seconds) and keeps the machine code on disk where it may
(next to the source, else `NUMBA_CACHE_DIR` or the user's cache directory); where no cache directory is
writable, each process compiles once. A live service calls `warm_up` before it listens, so no request
waits for a compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numba import njit

__all__ = ["jit", "warm_up"]

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """`numba.njit(nogil=True)`, with an on-disk cache where one can be written."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location: compile per process
        return njit(nogil=True)(fn)


def warm_up() -> None:
    """Compile (or load) every kernel by running each once on a tiny input."""
    from sbs.scheduler.core.capacity import PrefillCapacityModel
    from sbs.scheduler.core.decode_alloc import assign_decode_ranks, assign_decode_uniform
    from sbs.scheduler.core.policies import sbs_cap, sbs_take
    from sbs.scheduler.core.policies.sbs_timing import StepBudget
    from sbs.scheduler.core.prefill_alloc import water_fill_lists
    from sbs.scheduler.core.state import RankCounters
    from sbs.scheduler.core.types import InstanceSpec, Role
    from sbs.settings.scheduling import BatchingSettings

    assign_decode_ranks([0, 1], [10, 20], [0] * 4, [0] * 4, [100] * 4, [0] * 4, [True] * 4)
    model = PrefillCapacityModel(0.0, 1e-4, 1e-9)
    water_fill_lists([0, 1], [10, 20], [0] * 2, [0.0] * 2, chunk_tokens=16, model=model)
    assign_decode_uniform([0, 1], [10, 20], [0] * 4, [0] * 4, 100, np.zeros(4, np.int64))
    spec = InstanceSpec("warm-up", Role.PREFILL, 2, 16, 64)
    RankCounters([spec], 0.0).add_many([1, 0, 1], [3, 4, 5], 0.0)
    sbs_cap.release_chunk(spec, BatchingSettings(adaptive_cap=True), [3, 5])
    sbs_take.take_in_order([3, 5], StepBudget(8, 1.0, 0.5), 1, model, 16)
