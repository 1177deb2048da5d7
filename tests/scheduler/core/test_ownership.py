"""The partition of prefill instances among scheduler replicas (`ownership.assign`)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from sbs.scheduler.core import ownership

KEYS = st.lists(
    st.text("abcdefgh/-0123456789", min_size=1, max_size=12), min_size=1, max_size=40, unique=True
)
MEMBERS = st.lists(st.text("pqrstuvwxyz-0123", min_size=1, max_size=8), min_size=1, max_size=8, unique=True)


@given(KEYS, MEMBERS)
def test_every_instance_has_one_live_owner_and_equal_instances_are_spread_evenly(
    keys: list[str], members: list[str]
) -> None:
    owners = ownership.assign([(k, 32) for k in keys], members)
    assert set(owners) == set(keys) and set(owners.values()) <= set(members)
    counts = Counter(owners.values())
    if len(keys) >= len(members):
        assert set(counts) == set(members), "a replica owns nothing while instances are enough"
    assert max(counts.values()) - min(counts.get(m, 0) for m in members) <= 1


@given(KEYS, MEMBERS)
def test_the_answer_does_not_depend_on_the_order_of_the_inputs(keys: list[str], members: list[str]) -> None:
    inst = [(k, 8 + i % 3 * 8) for i, k in enumerate(keys)]
    assert ownership.assign(inst, members) == ownership.assign(inst[::-1], members[::-1])


def test_ranks_not_instances_are_balanced() -> None:
    owners = ownership.assign([("big", 64), ("s1", 16), ("s2", 16), ("s3", 16), ("s4", 16)], ["a", "b"])
    ranks = Counter()
    for key, m in owners.items():
        ranks[m] += 64 if key == "big" else 16
    assert sorted(ranks.values()) == [64, 64]


def test_a_replica_leaving_moves_only_its_own_instances_when_the_rest_stay_balanced() -> None:
    inst = [(f"prefill-{i}", 32) for i in range(12)]
    before = ownership.assign(inst, ["a", "b", "c"])
    after = ownership.assign(inst, ["a", "b"])
    moved = {k for k in before if before[k] != after[k]}
    assert {k for k, m in before.items() if m == "c"} <= moved
    assert len(moved) <= 4 + 2  # c's four, and at most a rebalancing pair


def test_owned_is_everything_alone_and_a_share_with_peers() -> None:
    inst = [(f"p{i}", 8) for i in range(4)]
    assert ownership.owned(inst, [], "a") == ownership.owned(inst, ["a"], "a") == {"p0", "p1", "p2", "p3"}
    mine, theirs = ownership.owned(inst, ["a", "b"], "a"), ownership.owned(inst, ["a", "b"], "b")
    assert mine and theirs and not mine & theirs and mine | theirs == {"p0", "p1", "p2", "p3"}
    assert ownership.assign(inst, []) == {}
