"""Round robin over the live ranks (sglang-router / SMG `round_robin` with `--dp-aware`)."""

from __future__ import annotations

import random
from collections.abc import Sequence


class RoundRobin:
    def __init__(self, rng: random.Random) -> None:
        del rng  # deterministic by construction
        self._next = 0

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int:
        n = self._next
        self._next = n + 1
        return live[n % len(live)]
