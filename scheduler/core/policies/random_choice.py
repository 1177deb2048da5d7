"""A uniformly random live rank (SMG `random`), from the scheduler's seeded RNG."""

from __future__ import annotations

import random
from collections.abc import Sequence


class RandomChoice:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int:
        return self._rng.choice(live)
