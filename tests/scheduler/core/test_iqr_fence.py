"""FenceWindows: the IQR fence kept move by move from three windows, against a full recomputation."""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core.iqr_fence import INF, FenceWindows, fence_of, quartile_positions


def exact(values: list[int], iqr_k: float) -> tuple[float, int]:
    """The fence of `values` and the count under it, from the full sorted list."""
    ks = sorted(values)
    n = len(ks)
    lo1, fr1, lo3, fr3 = quartile_positions(n)
    v2 = ks[lo1 + 1] if lo1 + 1 < n else ks[lo1]
    v4 = ks[lo3 + 1] if lo3 + 1 < n else ks[lo3]
    fence = fence_of(ks[lo1], v2, ks[lo3], v4, fr1, fr3, iqr_k)
    return fence, bisect_right(ks, fence)


def touches(win: FenceWindows, k: int, k2: int) -> bool:
    l1, h1, l2, h2, l3, h3 = win.touch
    return (l1 if k <= h1 else l2 if k <= h2 else l3 if k <= h3 else INF) <= k2


@st.composite
def walks(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], float]:
    """Values (many ties or none), then moves of one value each upwards by 0 to a few spreads."""
    n = draw(st.integers(16, 80))
    top = draw(st.sampled_from([20, 1000, 10**6]))
    values = [draw(st.integers(0, top)) for _ in range(n)]
    moves = [
        (draw(st.integers(0, n - 1)), draw(st.integers(0, top // 2))) for _ in range(draw(st.integers(1, 60)))
    ]
    return values, moves, draw(st.sampled_from([0.0, 0.5, 1.5, -1.0]))


@settings(max_examples=300, deadline=None)
@given(walks())
def test_fence_follows_every_move_until_it_gives_up(case: tuple) -> None:
    values, moves, iqr_k = case
    fence, kept = exact(values, iqr_k)
    win = FenceWindows(sorted(values), iqr_k, fence, kept)
    for index, delta in moves:
        k = values[index]
        values[index] = k + delta
        fence, kept = exact(values, iqr_k)
        if touches(win, k, k + delta) and not win.move(k, k + delta):
            win = FenceWindows(sorted(values), iqr_k, fence, kept)  # what the allocator does
        n = len(values)
        assert win.masked == (n - kept if 0 < kept < n else 0)
        assert win.thr == (fence if 0 < kept < n else INF)


def test_a_move_below_every_window_changes_nothing() -> None:
    values = list(range(0, 3200, 100))  # 32 values; the windows start at Q1's position (7)
    fence, kept = exact(values, 1.5)
    win = FenceWindows(values, 1.5, fence, kept)
    assert not touches(win, 0, 650)  # 0 -> 650: below Q1's window (700...)
    assert touches(win, 0, 700)


def test_an_inactive_fence_masks_nothing_and_is_never_touched() -> None:
    win = FenceWindows(list(range(20)), 1.5, INF, 20, active=False)
    assert (win.thr, win.masked) == (INF, 0)
    assert not touches(win, 0, 10**9)
