"""`take_in_order`: the requests a release offers to water-filling, against the loop it replaced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from sbs.scheduler.core.policies.sbs import take_in_order


def reference_take(tokens: list[int], room: int, min_count: int, level: int | None) -> list[int]:
    """The selection loop, one request at a time."""
    take: list[int] = []
    taken = 0
    for i, t in enumerate(tokens):
        if taken >= room and len(take) >= min_count:
            break
        if take and level is not None and t > level:
            continue
        take.append(i)
        taken += t
    return take


@given(
    st.lists(st.integers(1, 3000), min_size=1, max_size=200),
    st.integers(-100, 100_000),
    st.integers(1, 64),
    st.none() | st.integers(1, 3000),
)
def test_matches_the_one_by_one_loop(tokens: list[int], room: int, min_count: int, level: int | None) -> None:
    assert list(take_in_order(tokens, room, min_count, level)) == reference_take(
        tokens, room, min_count, level
    )


def test_without_a_level_the_head_of_the_queue_is_a_range() -> None:
    assert take_in_order([5, 5, 5, 5], 8, 1, None) == range(2)
    assert take_in_order([5, 5, 5, 5], 8, 3, None) == range(3)
    assert take_in_order([9, 2, 9, 3], 4, 1, 5) == [0]
    assert take_in_order([9, 2, 9, 3], 12, 1, 5) == [0, 1, 3]
