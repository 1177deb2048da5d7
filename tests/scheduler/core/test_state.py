"""RankCounters (tier-3 reconcile) and PrefillInstanceState (idle, planned time, committed carries)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.scheduler.core.state import Carry, PrefillInstanceState, RankCounters
from sbs.scheduler.core.types import InstanceSpec, RankLoad, Role

TRANSIT_S = 0.005


def specs(*dp_sizes: int) -> list[InstanceSpec]:
    return [InstanceSpec(f"p{i}", Role.PREFILL, n, 1000, 100_000) for i, n in enumerate(dp_sizes)]


def snapshot(*tokens: int) -> tuple[RankLoad, ...]:
    return tuple(RankLoad(r, 1, 2, t, 0, 100_000) for r, t in enumerate(tokens))


def waiting(load: RankLoad) -> int:
    return load.num_waiting_uncached_tokens


def test_offsets_flatten_instances_in_order() -> None:
    c = RankCounters(specs(2, 3, 1), TRANSIT_S)
    assert c.offsets == [0, 2, 5]
    assert c.count == [0] * 6


def test_add_updates_the_flat_rank() -> None:
    c = RankCounters(specs(2, 3), TRANSIT_S)
    c.add(1, 2, 1, 400, now=0.0)
    c.add(1, 2, 1, 100, now=0.0)
    assert c.count == [0, 0, 0, 0, 2]
    assert c.tokens == [0, 0, 0, 0, 500]


def test_reconcile_replaces_counters_with_snapshot() -> None:
    c = RankCounters(specs(2), TRANSIT_S)
    c.add(0, 0, 1, 999, now=0.0)
    c.reconcile(0, 1.0, snapshot(40, 60), waiting)
    assert c.count == [3, 3]  # running + waiting
    assert c.tokens == [40, 60]


def test_reconcile_reapplies_deltas_newer_than_snapshot_minus_transit() -> None:
    c = RankCounters(specs(2), TRANSIT_S)
    c.add(0, 0, 1, 100, now=0.990)  # older than 1.0 - transit: the snapshot saw it
    c.add(0, 1, 1, 200, now=0.996)  # within transit: maybe unseen, re-applied
    c.add(0, 1, 1, 300, now=1.010)  # after the snapshot: re-applied
    c.reconcile(0, 1.0, snapshot(100, 0), waiting)
    assert c.tokens == [100, 500]
    assert c.count == [3, 5]


def test_delta_exactly_at_cutoff_counts_as_seen() -> None:
    c = RankCounters(specs(1), 0.0)
    c.add(0, 0, 1, 100, now=1.0)
    c.reconcile(0, 1.0, snapshot(0), waiting)
    assert c.tokens == [0]


def test_reconcile_touches_only_its_instance() -> None:
    c = RankCounters(specs(1, 1), TRANSIT_S)
    c.add(0, 0, 1, 100, now=0.0)
    c.add(1, 0, 1, 200, now=0.0)
    c.reconcile(1, 1.0, snapshot(7), waiting)
    assert c.tokens == [100, 7]


def test_reapplied_deltas_are_not_reapplied_twice() -> None:
    c = RankCounters(specs(1), TRANSIT_S)
    c.add(0, 0, 1, 300, now=1.002)
    c.reconcile(0, 1.0, snapshot(0), waiting)
    c.reconcile(0, 2.0, snapshot(0), waiting)  # the second snapshot saw the dispatch
    assert c.tokens == [0]


@settings(max_examples=100, deadline=None)
@given(
    deltas=st.lists(
        st.tuples(st.floats(0.0, 2.0, allow_nan=False), st.integers(0, 1), st.integers(-50, 500)),
        max_size=30,
    ),
    snap_s=st.floats(0.0, 2.0, allow_nan=False),
    base=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)),
)
def test_reconcile_is_snapshot_plus_unseen_deltas(
    deltas: list[tuple[float, int, int]], snap_s: float, base: tuple[int, int]
) -> None:
    c = RankCounters(specs(2), TRANSIT_S)
    for t, rank, tok in sorted(deltas):
        c.add(0, rank, 1, tok, now=t)
    c.reconcile(0, snap_s, snapshot(*base), waiting)
    cutoff = snap_s - TRANSIT_S
    for rank in (0, 1):
        unseen = [tok for t, r, tok in deltas if r == rank and t > cutoff]
        assert c.tokens[rank] == base[rank] + sum(unseen)
        assert c.count[rank] == 3 + len(unseen)


def instance(**kw) -> PrefillInstanceState:
    return PrefillInstanceState(spec=specs(4)[0], offset=0, **kw)


def test_instance_is_idle_only_without_planned_steps_and_past_busy_time() -> None:
    assert instance().idle(0.0)
    assert not instance(busy_until_s=1.0).idle(0.5)
    assert instance(busy_until_s=1.0).idle(1.0)
    st_ = instance()
    st_.planned.append((0.0, 0.1))
    assert not st_.idle(5.0)


def test_unhealthy_or_suspect_instance_is_unavailable() -> None:
    assert instance().available
    assert not instance(healthy=False).available
    assert not instance(suspect=True).available


def test_planned_total_sums_predicted_durations() -> None:
    st_ = instance()
    st_.planned.extend([(0.0, 0.1), (0.05, 0.25)])
    assert st_.planned_total_s() == 0.35


def test_committed_next_is_one_chunk_per_carry() -> None:
    st_ = instance()
    st_.carries = {0: Carry(7, 0, remaining=2500, done=1000), 3: Carry(8, 3, remaining=300, done=1000)}
    assert {r: (tok, done) for r, (tok, done, _) in st_.committed_next().items()} == {
        0: (1000, 1000.0),
        3: (300, 1000.0),
    }


@pytest.mark.parametrize("big", [False, True])
def test_add_many_is_add_of_one_request_each(big: bool) -> None:
    """Summed per rank (or request by request beyond int64), with the same counters before and after
    snapshots that have and have not seen the round."""
    many, one = RankCounters(specs(2, 3), TRANSIT_S), RankCounters(specs(2, 3), TRANSIT_S)
    flat, tokens = [4, 0, 2, 4, 1], [10, 20, 30, 40, 50 + (1 << 70 if big else 0)]
    many.add_many(flat, tokens, now=1.0)
    for i, t in zip(flat, tokens, strict=True):
        instance = 0 if i < 2 else 1
        one.add(instance, i - many.offsets[instance], 1, t, now=1.0)
    assert (many.count, many.tokens) == (one.count, one.tokens)
    assert many.count == [1, 1, 1, 0, 2] and many.tokens[2:] == [30, 0, 50]
    assert many.instance_of == [0, 0, 1, 1, 1] and many.rank_of == [0, 1, 0, 1, 2]
    assert len(many._log[1]) == (3 if big else 2)  # rank 2 of instance 1 (flat 4) once, summed
    loads = tuple(RankLoad(r, 5, 0, 7, 100, 1000) for r in range(3))
    for snapshot_s in (0.5, 1.0 + TRANSIT_S + 1e-9):  # before the round is seen, after
        for c in (many, one):
            c.reconcile(1, snapshot_s, loads, lambda load: load.num_used_tokens)
        assert (many.count, many.tokens) == (one.count, one.tokens)
    assert many.count[2:] == [5, 5, 5]


def test_add_many_with_an_offset_and_out_of_range_ranks() -> None:
    """`offset` shifts every rank; a rank outside the counters raises before anything is counted."""
    shifted, plain = RankCounters(specs(2, 3), TRANSIT_S), RankCounters(specs(2, 3), TRANSIT_S)
    shifted.add_many([0, 2, 0], [5, 6, 7], now=1.0, offset=2)
    plain.add_many([2, 4, 2], [5, 6, 7], now=1.0)
    assert (
        (shifted.count, shifted.tokens) == (plain.count, plain.tokens) == ([0, 0, 2, 0, 1], [0, 0, 12, 0, 6])
    )
    for flat, offset in (([1, 5], 0), ([0, 3], 2), ([-1], 0)):
        with pytest.raises(IndexError):
            shifted.add_many(flat, [1] * len(flat), now=2.0, offset=offset)
    assert shifted.count == [0, 0, 2, 0, 1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 4), st.integers(-3, 3), st.integers(-500, 5000)),
            st.tuples(
                st.just("many"),
                st.lists(st.integers(0, 4), max_size=8),
                st.sampled_from([0, 1, 1 << 52, 1 << 70]),
            ),
            st.tuples(st.just("snapshot"), st.integers(0, 1), st.sampled_from([0, 7, 1 << 53, 1 << 70])),
        ),
        max_size=25,
    )
)
def test_the_int64_mirror_follows_the_counters(ops: list[tuple]) -> None:
    """`arrays()` equals `count` and `tokens` after any mix of `add`, `add_many` and snapshots, whether it
    was asked for before them or not; it is None exactly while a value is beyond +-2**53."""
    c = RankCounters(specs(2, 3), TRANSIT_S)
    c.arrays()
    for k, op in enumerate(ops):
        if op[0] == "add":
            _, flat, count, tokens = op
            instance = 0 if flat < 2 else 1
            c.add(instance, flat - c.offsets[instance], count, tokens, now=float(k))
        elif op[0] == "many":
            _, flat, size = op
            c.add_many(flat, [size + i for i in range(len(flat))], now=float(k))
        else:
            _, instance, used = op
            loads = tuple(
                RankLoad(r, 2, 1, 0, used, used + 1) for r in range(c._end(instance) - c.offsets[instance])
            )
            c.reconcile(instance, float(k), loads, lambda load: load.num_used_tokens)
        if k % 3 == 0:
            mirror = c.arrays()
            exact = all(abs(v) < 1 << 53 for v in (*c.count, *c.tokens))
            assert (mirror is not None) == exact
            if mirror is not None:
                assert (mirror[0].tolist(), mirror[1].tolist()) == (c.count, c.tokens)
    mirror = c.arrays()
    if mirror is not None:
        assert (mirror[0].tolist(), mirror[1].tolist()) == (c.count, c.tokens)
