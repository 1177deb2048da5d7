"""Immediate-dispatch rank pickers, one per module behind one protocol, and their factory.

Each picker chooses one DP rank (a flat index) among the live ones for a request that is dispatched
the moment it arrives; `load[i]` is the scheduler's outstanding-token count of rank i (in-flight
accounting corrected by engine snapshots). SBS itself and SGLang's in-engine balancing are not rank
pickers: the scheduler implements those.
"""

from __future__ import annotations

import random

from sbs.scheduler.core import config
from sbs.scheduler.core.policies.base import RankPicker
from sbs.scheduler.core.policies.least_load import LeastLoad
from sbs.scheduler.core.policies.power_of_two import PowerOfTwo
from sbs.scheduler.core.policies.random_choice import RandomChoice
from sbs.scheduler.core.policies.round_robin import RoundRobin

__all__ = ["PICKERS", "RankPicker", "make_picker"]

PICKERS: dict[str, type] = {
    "round_robin": RoundRobin,
    "random": RandomChoice,
    "least_load": LeastLoad,
    "power_of_two": PowerOfTwo,
}


def make_picker(policy: config.PolicySettings, rng: random.Random) -> RankPicker:
    """The picker for an immediate policy; other policies are refused with the valid names."""
    cls = PICKERS.get(policy.type)
    if cls is None:
        raise ValueError(f"policy {policy.type!r} has no rank picker; pickers: {', '.join(PICKERS)}")
    return cls(rng)
