"""The live rank with the fewest outstanding tokens (SMG `least_load`, Dynamo's active-token cost):
the strongest immediate policy when its load view is fresh, which in-flight accounting keeps it."""

from __future__ import annotations

import random
from collections.abc import Sequence


class LeastLoad:
    def __init__(self, rng: random.Random) -> None:
        del rng  # ties go to the lowest index

    def pick(self, live: Sequence[int], load: Sequence[int]) -> int:
        return min(live, key=load.__getitem__)
