"""`eft`: immediate dispatch to the prefill instance and rank predicted to finish a request first."""

from __future__ import annotations

import math

import pytest
from sbs.scheduler.core.events import RequestArrived
from sbs.scheduler.core.policies.eft import earliest_finish
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.state import PrefillInstanceState
from sbs.scheduler.core.types import Request
from sbs.settings import scheduling

from tests.scheduler.core.fakes import (
    CAPACITY,
    arrive,
    decode_specs,
    dispatches,
    make_scheduler,
    prefill_specs,
)


def test_an_idle_instance_takes_the_request_and_its_step_is_predicted() -> None:
    sched = make_scheduler("eft")
    [d] = dispatches(arrive(sched, 1, 0.0, tokens=500))
    assert (d.prefill_instance, d.reason) == (0, "immediate")
    st = sched.instances[0]
    assert list(st.planned) == [(0.0, pytest.approx(0.06))] and st.busy_until_s == pytest.approx(0.06)


def test_the_next_request_goes_where_it_finishes_first() -> None:
    sched = make_scheduler("eft")
    arrive(sched, 1, 0.0, tokens=500)  # instance 0 busy until 0.06
    [d] = dispatches(arrive(sched, 2, 0.01, tokens=500))
    assert d.prefill_instance == 1  # 0.07 there, against 0.06 + 0.06 behind the running step


def test_requests_queued_behind_running_steps_spread_over_the_ranks() -> None:
    sched = make_scheduler("eft")
    arrive(sched, 1, 0.0, tokens=1000)
    arrive(sched, 2, 0.0, tokens=1000)  # both instances busy until 0.11
    later = [d for rid in range(3, 9) for d in dispatches(arrive(sched, rid, 0.02, tokens=400))]
    per_instance: dict[int, list[int]] = {}
    for d in later:
        per_instance.setdefault(d.prefill_instance, []).append(d.prefill_rank)
    for ranks in per_instance.values():
        assert len(set(ranks)) == len(ranks)  # no rank takes two while another is empty


def instance(offset: int, end: float) -> PrefillInstanceState:
    st = PrefillInstanceState(spec=prefill_specs(1)[0], offset=offset, busy_until_s=end)
    st.planned.append((0.0, end))
    return st


def test_a_straggler_in_the_next_step_sends_a_short_request_elsewhere() -> None:
    instances = [instance(0, 0.1), instance(4, 0.15)]
    straggler = [3000, 0, 0, 0, 0, 0, 0, 0]  # rank 0 of instance 0: a full chunk in its next step
    held = [3000, 0, 0, 0, 0, 0, 0, 0]
    count = [1, 0, 0, 0, 0, 0, 0, 0]
    p, _, finish = earliest_finish(instances, [0.1, 0.15], straggler, held, count, CAPACITY, 100, 0.05)
    assert p == 1 and finish == pytest.approx(0.15 + 0.02)
    p, rank, finish = earliest_finish(instances, [0.1, 0.15], [0] * 8, [0] * 8, [0] * 8, CAPACITY, 100, 0.05)
    assert (p, rank) == (0, 0) and finish == pytest.approx(0.12)


def test_a_long_prompt_counts_every_step_until_it_is_done() -> None:
    instances = [instance(0, 0.0)]
    _, _, finish = earliest_finish(instances, [0.0], [0] * 4, [0] * 4, [0] * 4, CAPACITY, 2500, 0.0)
    assert finish == pytest.approx(0.11 + 0.11 + 0.06)  # chunks of 1000, 1000 and 500 tokens


@pytest.mark.parametrize(("rule", "rank"), [("lexicographic", 0), ("least_load", 1)])
def test_the_decode_rule_is_a_setting(rule: str, rank: int) -> None:
    settings = scheduling.SchedulerSettings(policy=scheduling.EftPolicy(decode_rule=rule))  # type: ignore[arg-type]
    sched = Scheduler(prefill_specs(1), decode_specs(1), settings=settings, capacity=CAPACITY)
    sched.decode.count[:] = [0, 1, 5, 5]  # rank 0: fewest requests; rank 1: fewest KV tokens
    sched.decode.tokens[:] = [100, 0, 5000, 5000]
    [d] = dispatches(arrive(sched, 1, 0.0))
    assert d.decode_rank == rank
    assert not math.isnan(sched.instances[0].busy_until_s)


@pytest.mark.parametrize("credit", [True, False])
def test_a_cached_prefix_weighs_against_load(credit: bool) -> None:
    """Both instances run a 1000-token step until 0.11; rank 0 of instance 0 caches 1000 tokens of an
    1100-token prompt and has 500 queued. With credit it finishes the prompt there in one step (at
    0.18, 600 tokens) against two steps anywhere else (0.24); without, it goes to an empty rank and
    each rank is charged the whole prompt."""
    settings = scheduling.SchedulerSettings(policy=scheduling.EftPolicy(prefix_credit=credit))
    sched = Scheduler(
        prefill_specs(2), decode_specs(1), settings=settings, capacity=CAPACITY, block_tokens=100
    )
    blocks = tuple(range(1, 11))

    def place(rid: int, t: float, tokens: int, hash_ids: tuple[int, ...] = ()) -> tuple[int, int]:
        [d] = dispatches(sched.handle(RequestArrived(Request(rid, t, tokens, 10, hash_ids)), t))
        return d.prefill_instance, d.prefill_rank

    assert place(1, 0.0, 1000, blocks) == (0, 0)
    assert place(2, 0.0, 1000) == (1, 0)
    assert place(3, 0.0005, 500) == (0, 0)  # queued behind the running step
    where = place(4, 0.001, 1100, (*blocks, 11))
    if credit:
        assert where == (0, 0) and sched.state.flights[4][2] == 100  # only the uncached tokens
    else:
        assert where != (0, 0) and sched.state.flights[4][2] == 1100
