"""The IQR fence of decode placement (`decode_alloc`), kept exact from one placement to the next.

The fence over n sorted K values x is `Q3 + iqr_k * (Q3 - Q1)` with numpy's 'linear' quartiles (see
`decode_alloc`); it depends on x only through four order statistics (positions lo1, lo1 + 1, lo3, lo3 + 1)
and the count of values under it. A placement moves one value from k to k2 >= k, and that changes the
sorted values at exactly the positions whose value lies in [k, k2]: everything below k and above k2
stays where it was, the values in between shift down one position and k2 takes the last of them.

`FenceWindows` therefore keeps only three short windows of the sorted values: from Q1's position, from
Q3's position, and around the fence's count. A move that reaches into none of them leaves all three,
and so the fence and the masked count, unchanged. A move that reaches into one is applied to it exactly,
except that a value entering the window from above is unknown, so the window loses its top position;
the fence is then recomputed from the windows. When a window gets too short for that, or the fence
leaves its window, `move` says so and the caller recomputes from the full sorted values.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

__all__ = ["FenceWindows", "fence_of", "quartile_positions"]

INF = float("inf")
_WINDOW = 8
"""Values kept per window."""


def quartile_positions(n: int) -> tuple[int, float, int, float]:
    """Q1's and Q3's lower index into n sorted values and the interpolation fraction of each."""
    h1 = (n - 1) * 0.25
    h3 = (n - 1) * 0.75
    return int(h1), h1 - int(h1), int(h3), h3 - int(h3)


def fence_of(v1: float, v2: float, v3: float, v4: float, fr1: float, fr3: float, iqr_k: float) -> float:
    """`Q3 + iqr_k * (Q3 - Q1)` from the order statistics at lo1, lo1 + 1 (v1, v2) and lo3, lo3 + 1."""
    q1 = v1 + fr1 * (v2 - v1)
    q3 = v3 + fr3 * (v4 - v3)
    return q3 + iqr_k * (q3 - q1)


class FenceWindows:
    """The fence over n sorted values (all ranks candidates), updated move by move (module docstring).

    `thr` is the fence when it masks some value (else inf), `masked` the number of values it masks, and
    `touch` the ranges of the windows as (lo, hi) pairs, disjoint and ascending, padded with (inf, inf):
    a move from k to k2 needs `move` iff the first pair with hi >= k has lo <= k2.
    """

    __slots__ = ("af", "fr1", "fr3", "iqr_k", "lo1", "lo3", "masked", "n", "thr", "touch", "w1", "w3", "wf")

    def __init__(self, ks: list[int], iqr_k: float, fence: float, kept: int, *, active: bool = True) -> None:
        """From the full sorted values `ks`, their `fence` and the count `kept` under it; an inactive
        fence (too few candidates) masks nothing, needs no windows and never moves."""
        n = self.n = len(ks)
        self.iqr_k = iqr_k
        self.lo1, self.fr1, self.lo3, self.fr3 = quartile_positions(n)
        self.af = max(kept - _WINDOW // 2, 0)
        self.w1 = ks[self.lo1 : self.lo1 + _WINDOW] if active else []
        self.w3 = ks[self.lo3 : self.lo3 + _WINDOW] if active else []
        self.wf = ks[self.af : self.af + _WINDOW] if active else []
        self._settle(fence, kept)

    def move(self, k: int, k2: int) -> bool:
        """Apply a move from k to k2 that reaches into a window; False if the fence cannot be told."""
        n = self.n
        for w, start in ((self.w1, self.lo1), (self.w3, self.lo3), (self.wf, self.af)):
            if w and k <= w[-1] and k2 >= w[0]:
                reaches_end = start + len(w) == n
                if k <= w[0]:
                    del w[0]  # the removal is at or below the window: its values shift down one
                else:
                    del w[bisect_left(w, k)]
                if reaches_end or (w and k2 <= w[-1]):
                    insort(w, k2)
        w1, w3, wf = self.w1, self.w3, self.wf
        if len(w1) < min(2, n - self.lo1) or len(w3) < min(2, n - self.lo3) or not wf:
            return False
        v1 = w1[0]
        v3 = w3[0]
        fence = fence_of(
            v1, w1[1] if len(w1) > 1 else v1, v3, w3[1] if len(w3) > 1 else v3, self.fr1, self.fr3, self.iqr_k
        )
        below = bisect_right(wf, fence)
        if (below == 0 and self.af > 0) or (below == len(wf) and self.af + len(wf) < n):
            return False
        self._settle(fence, self.af + below)
        return True

    def _settle(self, fence: float, kept: int) -> None:
        masks = 0 < kept < self.n
        self.thr = fence if masks else INF
        self.masked = self.n - kept if masks else 0
        spans = sorted((w[0], w[-1]) for w in (self.w1, self.w3, self.wf) if w)
        merged: list[list[float]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        merged += [[INF, INF]] * (3 - len(merged))
        self.touch = tuple(v for pair in merged for v in pair)
