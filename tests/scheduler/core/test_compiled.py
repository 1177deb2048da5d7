"""The core's kernels: compiled at warm-up, and compiled per process where no cache can be written."""

from __future__ import annotations

import numpy as np
import pytest
from sbs.scheduler.core import compiled, decode_kernel, prefill_kernel, state
from sbs.scheduler.core.policies import sbs_cap, sbs_take


def test_warm_up_compiles_every_kernel() -> None:
    """Every kernel the core calls from Python (`pack` runs inside `pack_lpt`)."""
    compiled.warm_up()
    kernels = (
        decode_kernel.place,
        decode_kernel.place_sorted,
        prefill_kernel.pack_lpt,
        prefill_kernel.head_count,
        sbs_cap._cap_kernel,
        sbs_take._take_kernel,
        state._per_rank,
    )
    assert all(k.signatures for k in kernels)


def test_without_a_writable_cache_the_kernel_is_compiled_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compiled.njit
    calls: list[bool] = []

    def njit(**kw: bool):  # numba raises this where no cache location is writable
        calls.append(kw.get("cache", False))
        if kw.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(**kw)

    monkeypatch.setattr(compiled, "njit", njit)

    def total(a: np.ndarray) -> int:
        s = 0
        for x in a:
            s += x
        return s

    fast = compiled.jit(total)
    assert calls == [True, False] and fast(np.arange(5)) == 10
