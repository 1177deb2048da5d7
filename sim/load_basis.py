"""`--load-basis capacity`: loads as fractions of the best immediate baseline's measured capacity.

`capacity_basis` resolves `--load-basis` and `--capacity-tok-s` to the record `compare` and `sweep`
put in their JSON; the measurement itself is `sbs.sim.capacity.measure`, without knees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from sbs.settings import scheduling
from sbs.sim.capacity import CapacitySettings, PolicyCapacity, Probe, measure
from sbs.sim.cluster import ClusterConfig
from sbs.sim.errors import SimInputError
from sbs.sim.trace import Trace

DEFAULT_IMMEDIATE = ("eft", "least_load", "sglang")
"""Immediate baselines measured for `--load-basis capacity` when the field has none."""


def best_immediate(results: Sequence[PolicyCapacity]) -> PolicyCapacity:
    """The result with the highest capacity (the first on ties)."""
    return max(results, key=lambda r: r.capacity_tok_s)


def immediate_field(policies: Sequence[scheduling.PolicySettings]) -> list[scheduling.PolicySettings]:
    """The immediate policies of a field, or the default immediate baselines when it has none."""
    imm = [p for p in policies if isinstance(p, scheduling.ImmediatePolicy)]
    return imm or [scheduling.policy_settings(n) for n in DEFAULT_IMMEDIATE]


def capacity_basis(
    basis: str,
    given_tok_s: float | None,
    trace_at: Callable[[float], Trace],
    cluster: ClusterConfig,
    policies: Sequence[scheduling.PolicySettings],
    nominal_tok_s: float,
    *,
    jobs: int = 1,
    on_probe: Callable[[str, Probe], None] | None = None,
) -> dict[str, Any]:
    """The JSON record of `--load-basis` (`basis`) and `--capacity-tok-s` (`given_tok_s`): "nominal";
    or capacity `given_tok_s`; or the best measured capacity of the field's immediate policies
    (`immediate_field`), without knees. Raises `SimInputError` naming the flag for a bad combination,
    and when no baseline sustains even the lowest load tried."""
    if basis == "nominal":
        if given_tok_s is not None:
            raise SimInputError("--capacity-tok-s is a capacity basis; add --load-basis capacity")
        return {"load_basis": "nominal"}
    if basis != "capacity":
        raise SimInputError(f"--load-basis: expected nominal or capacity, got {basis!r}")
    if given_tok_s is not None:
        if not (math.isfinite(given_tok_s) and given_tok_s > 0):
            raise SimInputError(f"--capacity-tok-s must be > 0, got {given_tok_s:g}")
        return _basis(given_tok_s, nominal_tok_s, None, {})
    results = measure(
        trace_at,
        cluster,
        immediate_field(policies),
        nominal_tok_s=nominal_tok_s,
        settings=CapacitySettings(knee=False),
        jobs=jobs,
        on_probe=on_probe,
    )
    best = best_immediate(results)
    if best.capacity_load is None:
        raise SimInputError(
            f"--load-basis capacity: no immediate baseline ({', '.join(r.policy for r in results)}) "
            f"sustains even {CapacitySettings().min_load:.3g} of nominal on this workload"
        )
    record = _basis(
        best.capacity_tok_s, nominal_tok_s, best.policy, {r.policy: r.capacity_tok_s for r in results}
    )
    return {**record, "capacity_served_tok_s": best.served_tok_s}


def _basis(
    tok_s: float, nominal_tok_s: float, policy: str | None, capacities: dict[str, float]
) -> dict[str, Any]:
    """`capacity_tok_s` is in the `--load` yardstick (multiplier × nominal); `capacity_served_tok_s`,
    when measured, is what the capacity run's window served (see `PolicyCapacity.served_tok_s`)."""
    return {
        "load_basis": "capacity",
        "capacity_tok_s": tok_s,
        "capacity_of_nominal": tok_s / nominal_tok_s,
        "capacity_policy": policy,
        "capacities": capacities,
    }
