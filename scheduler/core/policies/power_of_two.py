"""Power of two choices: sample two live ranks, take the one with fewer outstanding tokens
(sglang-router `power_of_two`); ties go to the lower index."""

from __future__ import annotations

import random
from collections.abc import Sequence


class PowerOfTwo:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int:
        if len(live) == 1:
            return live[0]
        a, b = self._rng.sample(live, 2)
        return a if (load[a], a) <= (load[b], b) else b
