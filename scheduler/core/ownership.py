"""Which scheduler replica decides for which prefill instance.

Staggered release needs one decider per prefill instance at a time, so scheduler replicas partition
the prefill instances among themselves; decode instances are shared by all. `assign` is the
partition: a pure function of the instance set and the live replicas, so every replica that sees the
same membership computes the same owners with no further coordination (`docs/scaling.md`).

It balances DP ranks (each replica owns at most its fair share, rounded up to whole instances) and is
otherwise rendezvous hashing (highest random weight): when a replica joins or leaves, mostly the
instances that must move do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _score(member: str, instance: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(instances: Sequence[tuple[str, int]], members: Sequence[str]) -> dict[str, str]:
    """Owner of each prefill instance: `instances` are (key, DP size), `members` the live replicas.

    Larger instances are placed first; each goes to the member ranking it highest whose ranks stay
    within the fair share (total ranks / members, or the largest instance, if larger); if none has
    room, to the least loaded member. Every member owns something when there are at least as many
    instances as members and equal sizes. No members: no owners.
    """
    live = sorted(set(members))
    if not live:
        return {}
    total = sum(max(w, 1) for _, w in instances)
    share = max(-(-total // len(live)), max((max(w, 1) for _, w in instances), default=1))
    load = dict.fromkeys(live, 0)
    owners: dict[str, str] = {}
    for key, w in sorted(instances, key=lambda kw: (-max(kw[1], 1), kw[0])):
        weight = max(w, 1)
        ranked = sorted(live, key=lambda m: (-_score(m, key), m))
        fits = [m for m in ranked if load[m] + weight <= share]
        owner = fits[0] if fits else min(live, key=lambda m: (load[m], m))
        owners[key] = owner
        load[owner] += weight
    return owners


def owned(instances: Sequence[tuple[str, int]], members: Sequence[str], me: str) -> set[str]:
    """The keys of the instances `me` owns (all of them when `me` is the only member or none is live)."""
    if not members or set(members) == {me}:
        return {k for k, _ in instances}
    return {k for k, m in assign(instances, members).items() if m == me}
