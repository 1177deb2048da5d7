"""`sbs-fcfs`: SBS releasing in arrival order, with no request skipping a step's level."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sbs.settings import scheduling

from tests.scheduler.core.fakes import arrive, dispatches, make_scheduler


def release_after_a_burst(policy: str) -> list[int]:
    """One instance busy with a first request; a 3500-token prompt, then a 100-token one, arrive; the
    rids of the next release."""
    sched = make_scheduler(policy, prefill=1)
    assert dispatches(arrive(sched, 0, 0.0, tokens=1000))  # bypass: the instance is busy until 0.11 s
    assert not arrive(sched, 1, 0.01, tokens=3500) and not arrive(sched, 2, 0.02, tokens=100)
    due = sched.next_deadline()
    assert due is not None
    return [d.rid for d in dispatches(sched.handle(None, due))]


def test_sbs_puts_the_short_prompt_first_and_the_long_one_waits_above_the_level() -> None:
    assert release_after_a_burst("sbs") == [2]


def test_sbs_fcfs_releases_in_arrival_order_and_skips_nothing() -> None:
    assert sorted(release_after_a_burst("sbs-fcfs")) == [1, 2]


def test_sbs_fcfs_is_settable_by_name_and_refuses_a_size_priority() -> None:
    settings = scheduling.SchedulerSettings.model_validate(
        {"policy": {"type": "sbs-fcfs", "batching": {"lead_s": 0.003}}}
    )
    policy = settings.policy
    assert isinstance(policy, scheduling.SbsFcfsPolicy) and policy.fcfs
    assert policy.batching.size_priority == 0.0 and policy.batching.lead_s == 0.003
    assert not scheduling.SbsPolicy().fcfs
    with pytest.raises(ValidationError, match="size_priority must be 0"):
        scheduling.SchedulerSettings.model_validate(
            {"policy": {"type": "sbs-fcfs", "batching": {"size_priority": 5.0}}}
        )
