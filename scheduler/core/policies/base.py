"""The protocol every immediate-dispatch rank picker implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RankPicker(Protocol):
    """Chooses one of `live` (flat rank indices, never empty) given per-rank outstanding `load`."""

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int: ...
