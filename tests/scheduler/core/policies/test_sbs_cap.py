"""`sbs_cap.release_chunk`: the adaptive per-release step cap, and its setting."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sbs.scheduler.core.policies.sbs_cap import release_chunk
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings import scheduling

from tests.scheduler.core.fakes import arrive, dispatches, make_scheduler

SPEC = InstanceSpec("prefill-0", Role.PREFILL, 32, 16_384, 400_000)
ON = scheduling.BatchingSettings(adaptive_cap=True)
OFF = scheduling.BatchingSettings(adaptive_cap=False)


def test_short_prompts_get_a_small_cap() -> None:
    queue = [1000] * 50 + [1200] * 50
    assert release_chunk(SPEC, ON, queue) == 3 * 1200  # 3 × the (upper) median
    assert release_chunk(SPEC, OFF, queue) == 16_384


def test_a_prompt_longer_than_a_chunk_keeps_full_chunks() -> None:
    queue = [800] * 99 + [20_000]
    assert release_chunk(SPEC, ON, queue) == 16_384
    half = scheduling.BatchingSettings(adaptive_cap=True, fill_target=0.5)
    assert release_chunk(SPEC, half, queue) == 8192  # never above fill_target × the chunk
    assert release_chunk(SPEC, half, [800] * 100) == 2400


def test_tiny_prompts_get_the_floor() -> None:
    assert release_chunk(SPEC, ON, [10] * 40) == 16_384 // 16


def test_the_release_head_goes_whole() -> None:
    """A prompt the release takes first is never split by the cap (the engine runs it whole)."""
    head = [9000, *[1000] * 200]
    assert release_chunk(SPEC, ON, head) == 9000
    tail = [*[1000] * 200, 9000]  # behind 32 ranks × 3000 tokens of others: not in this release
    assert release_chunk(SPEC, ON, tail) == 3000


def test_a_backlog_raises_the_cap() -> None:
    """More than 10 capped releases of the instance buffered: the cap grows (no capacity lost)."""
    assert release_chunk(SPEC, ON, [1000] * 900) == 3000  # 900k tokens < 10 × 32 ranks × 3000
    assert release_chunk(SPEC, ON, [1000] * 2000) == 2_000_000 // (10 * 32)


def test_an_empty_buffer_gets_the_ceiling() -> None:
    assert release_chunk(SPEC, ON, []) == 16_384


@given(st.lists(st.integers(1, 40_000), min_size=1, max_size=300))
def test_cap_is_deterministic_and_bounded(queue: list[int]) -> None:
    cap = release_chunk(SPEC, ON, queue)
    assert cap == release_chunk(SPEC, ON, list(queue))
    assert 16_384 // 16 <= cap <= 16_384
    if max(queue) > 16_384:
        assert cap == 16_384


def test_scheduler_release_of_short_prompts_is_capped() -> None:
    """Through the scheduler (2 instances of 4 ranks × 1000 tokens, due together): 20 buffered
    100-token prompts. With the cap (3 × 100 per rank) the first instance takes 12 and the second
    the rest; without it the first takes all 20."""

    def release(adaptive: bool) -> Counter[tuple[int, int]]:
        sched = make_scheduler(adaptive_cap=adaptive)
        arrive(sched, 100, 0.0, 500)  # both instances busy: the rest is buffered
        arrive(sched, 101, 0.0, 500)
        for rid in range(20):
            arrive(sched, rid, 0.001, 100)
        out = dispatches(sched.handle(None, sched.next_deadline()))
        assert sorted(d.rid for d in out) == list(range(20))
        return Counter((d.prefill_instance, d.prefill_rank) for d in out)

    capped = release(adaptive=True)
    assert sum(n for (i, _), n in capped.items() if i == 0) == 12
    assert max(capped.values()) == 3
    full = release(adaptive=False)
    assert {i for i, _ in full} == {0}
    assert max(full.values()) == 5


def test_setting_defaults_and_validation() -> None:
    assert scheduling.BatchingSettings().adaptive_cap is True
    assert scheduling.SbsPolicy().batching.adaptive_cap is True
    assert scheduling.SbsFcfsPolicy().batching.adaptive_cap is False  # the paper's order keeps full fills
    assert scheduling.SbsFcfsPolicy(batching={"lead_s": 0.001}).batching.adaptive_cap is False
    assert scheduling.SbsFcfsPolicy(batching={"adaptive_cap": True}).batching.adaptive_cap is True
    assert scheduling.OraclePolicy().batching.adaptive_cap is False  # picks its cap in hindsight
    with pytest.raises(pydantic.ValidationError):
        scheduling.BatchingSettings(adaptive_cap="sometimes")  # type: ignore[arg-type]


@given(
    st.lists(st.integers(1, 40_000) | st.integers(1, 3_000), min_size=1, max_size=400),
    st.sampled_from([ON, scheduling.BatchingSettings(adaptive_cap=True, fill_target=0.5)]),
    st.sampled_from([1, 4, 32]),
)
def test_the_compiled_cap_is_the_numpy_cap(queue: list[int], b: scheduling.BatchingSettings, dp: int) -> None:
    """`release_chunk` (compiled, over a list or an int64 array) against `release_chunk_numpy`."""
    from sbs.scheduler.core.policies.sbs_cap import release_chunk_numpy

    spec = InstanceSpec("prefill-0", Role.PREFILL, dp, 16_384, 400_000)
    expected = release_chunk_numpy(spec, b, queue)
    assert release_chunk(spec, b, queue) == expected
    assert release_chunk(spec, b, np.array(queue, np.int64)) == expected
