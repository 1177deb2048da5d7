"""What a core rebuilt over a new membership keeps from the old one (`Scheduler.rebuilt`).

An instance in both memberships is matched by its `InstanceSpec` (its name is the engine's stable key;
a re-shaped engine is a new instance). For each such prefill instance its beliefs move over: predicted
free time, planned steps, chunked-prompt carries, step-time and prediction-error averages, health,
suspicion, unpinned tokens and the prefills queued per rank; for both roles the per-rank counters with
the deltas a snapshot may not have seen yet. Flights are re-indexed; a leg on an instance that left
has nothing left to free there and is dropped (a flight with neither leg left is dropped whole). New
instances start fresh. Not carried: deferrals (the next release attempt makes them again) and
`SchedulerStats` (callers sum the counters of retired cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

from sbs.scheduler.core.state import ClusterState, PrefillInstanceState
from sbs.scheduler.core.types import InstanceSpec

_NOT_CARRIED = {"spec", "offset", "revision", "changed", "planned", "carries", "deferred_until_s"}
_CARRIED = tuple(f.name for f in fields(PrefillInstanceState) if f.name not in _NOT_CARRIED)
"""The plain fields of a prefill instance's beliefs (a field added later is carried by default)."""


def match(old: Sequence[InstanceSpec], new: Sequence[InstanceSpec]) -> dict[int, int]:
    """New index → old index of the same instance (an equal spec; each old one matched once, in order)."""
    free: dict[InstanceSpec, list[int]] = {}
    for j, spec in enumerate(old):
        free.setdefault(spec, []).append(j)
    out: dict[int, int] = {}
    for i, spec in enumerate(new):
        if free.get(spec):
            out[i] = free[spec].pop(0)
    return out


def carry_instance(old: PrefillInstanceState, new: PrefillInstanceState) -> None:
    """Set `new`'s beliefs to `old`'s, through its counted assignments (`PrefillInstanceState`)."""
    for name in _CARRIED:
        setattr(new, name, getattr(old, name))
    new.planned.extend(old.planned)
    new.carries.update({r: replace(c) for r, c in old.carries.items()})


def carry_state(old: ClusterState, new: ClusterState) -> None:
    """Move what `old` knows about the instances both hold into `new` (fresh, not yet used); `old` is
    left as it was."""
    pmap = match(old.prefill_specs, new.prefill_specs)
    dmap = match(old.decode_specs, new.decode_specs)
    for i, j in pmap.items():
        carry_instance(old.instances[j], new.instances[i])
        new.prefill.carry(old.prefill, j, i, new.prefill_specs[i].dp_size)
        src, dst = old.prefill.offsets[j], new.prefill.offsets[i]
        for r in range(new.prefill_specs[i].dp_size):
            new.queued[dst + r] = dict(old.queued[src + r])
    for i, j in dmap.items():
        new.decode_healthy[i] = old.decode_healthy[j]
        new.decode.carry(old.decode, j, i, new.decode_specs[i].dp_size)
    p_now = {j: i for i, j in pmap.items()}
    d_now = {j: i for i, j in dmap.items()}
    for rid, (p_old, p_rank, p_tokens, d_old, d_rank, kv) in old.flights.items():
        p, d = p_now.get(p_old), d_now.get(d_old)
        if p is None and d is None:
            continue
        if p is None:  # its prefill instance left: nothing to free there
            p, p_rank, p_tokens = -1, None, 0
            new.prefilled.add(rid)
        elif rid in old.prefilled:
            new.prefilled.add(rid)
        if d is None:  # its decode instance left: nothing to free there either
            d, d_rank = -1, None
        new.flights[rid] = (p, p_rank, p_tokens, d, d_rank, kv)
