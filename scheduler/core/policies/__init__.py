"""The scheduling policies, one module each, behind the `Policy` protocol (`base`).

- `sbs` (also `sbs-fcfs`, its arrival-order variant): Staggered Batch Scheduling (its timing rules in
  `sbs_timing`, its decode rule in `decode_choice`);
- `immediate`: immediate dispatch over a rank picker per leg, one module per picker:
  `round_robin`, `random_choice`, `least_load`, `power_of_two`;
- `eft`: immediate dispatch to the rank predicted to finish the request first;
- `sglang`: immediate dispatch to an instance, the engine's own DP balancer picking the rank;
- `oracle` (simulator only): SBS given exact step times and a look ahead at the arrivals.
"""

from __future__ import annotations

import random

from sbs.scheduler.core.policies.base import Policy, RankPicker
from sbs.scheduler.core.policies.eft import EarliestFinish
from sbs.scheduler.core.policies.immediate import ImmediateDispatch
from sbs.scheduler.core.policies.least_load import LeastLoad
from sbs.scheduler.core.policies.oracle import Clairvoyant
from sbs.scheduler.core.policies.power_of_two import PowerOfTwo
from sbs.scheduler.core.policies.random_choice import RandomChoice
from sbs.scheduler.core.policies.round_robin import RoundRobin
from sbs.scheduler.core.policies.sbs import StaggeredBatching
from sbs.scheduler.core.policies.sglang import EngineBalanced
from sbs.scheduler.core.state import ClusterState
from sbs.settings import scheduling

__all__ = ["PICKERS", "Policy", "RankPicker", "make_picker", "make_policy", "picker_named", "step_alpha"]

PICKERS: dict[str, type] = {
    "round_robin": RoundRobin,
    "random": RandomChoice,
    "least_load": LeastLoad,
    "power_of_two": PowerOfTwo,
}


def make_picker(policy: scheduling.PolicySettings, rng: random.Random) -> RankPicker:
    """The picker for an immediate policy; other policies are refused with the valid names."""
    return picker_named(policy.type, rng)


def picker_named(name: str, rng: random.Random) -> RankPicker:
    """The rank picker called `name`; other names are refused with the valid ones."""
    cls = PICKERS.get(name)
    if cls is None:
        raise ValueError(f"policy {name!r} has no rank picker; pickers: {', '.join(PICKERS)}")
    return cls(rng)


def step_alpha(settings: scheduling.SchedulerSettings) -> float:
    """Weight of the newest step in the step-time averages (SBS's setting; 0.2 for the baselines)."""
    p = settings.policy
    return p.batching.ewma_alpha if isinstance(p, scheduling.StaggeredPolicy) else 0.2


def make_policy(
    settings: scheduling.SchedulerSettings, state: ClusterState, *, block_tokens: int | None
) -> Policy:
    """The policy `settings.policy` names, over `state`."""
    p = settings.policy
    overrun = settings.sync.suspect_overrun
    if isinstance(p, scheduling.OraclePolicy):
        return Clairvoyant(state, p, block_tokens=block_tokens, suspect_overrun=overrun)
    if isinstance(p, scheduling.StaggeredPolicy):
        return StaggeredBatching(state, p, block_tokens=block_tokens, suspect_overrun=overrun)
    if isinstance(p, scheduling.SglangPolicy):
        return EngineBalanced(state, p.engine_priority)
    rng = random.Random(settings.seed)  # prefill and decode legs are picked independently
    decode_picker = None if p.decode_rule == "lexicographic" else picker_named(p.decode_rule, rng)
    if isinstance(p, scheduling.EftPolicy):
        return EarliestFinish(state, p, decode_picker, block_tokens=block_tokens)
    return ImmediateDispatch(state, p, make_picker(p, rng), decode_picker)
