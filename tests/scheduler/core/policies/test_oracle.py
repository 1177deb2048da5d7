"""The oracle's own rules: it holds an instance for an imminent short request when that lowers the
summed TTFT, and it takes each step's true duration from the simulator's hook."""

from __future__ import annotations

from sbs.scheduler.core.events import RequestArrived
from sbs.scheduler.core.policies.oracle import Clairvoyant, Foresight
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Dispatch, Request
from sbs.settings import scheduling

from tests.scheduler.core.fakes import CAPACITY, decode_specs, prefill_specs

LONG = Request(0, 0.0, 5000, 10)
"""Its first chunk alone makes a 0.11 s step."""
SHORT = Request(1, 0.01, 200, 10)


def oracle(horizon_s: float, instances: int = 1) -> tuple[Scheduler, Clairvoyant]:
    policy = scheduling.OraclePolicy(horizon_s=horizon_s)
    sched = Scheduler(
        prefill_specs(instances, ranks=2),
        decode_specs(),
        settings=scheduling.SchedulerSettings(policy=policy),
        capacity=CAPACITY,
    )
    assert isinstance(sched.policy, Clairvoyant)
    sched.policy.attach(Foresight([LONG, SHORT], horizon_s), transit_s=0.001)
    return sched, sched.policy


def sent_at(sched: Scheduler) -> dict[int, float]:
    """Feed LONG then SHORT; when each was dispatched."""
    out: dict[int, float] = {}
    for r in (LONG, SHORT):
        for d in sched.handle(RequestArrived(r), r.arrival_s):
            if isinstance(d, Dispatch):
                out[d.rid] = r.arrival_s
    return out


def test_it_holds_a_long_step_for_a_short_request_it_sees_coming() -> None:
    sched, policy = oracle(2.0)
    assert sent_at(sched) == {0: 0.01, 1: 0.01}  # one step: the short one does not wait 0.11 s
    assert policy.holds == 1


def test_without_foresight_or_when_another_instance_is_free_it_does_not_hold() -> None:
    assert sent_at(oracle(0.0)[0]) == {0: 0.0}  # the short one waits for the long step to end
    sched, policy = oracle(2.0, instances=2)  # the short one gets the other, idle instance
    assert sent_at(sched) == {0: 0.0, 1: 0.01} and policy.holds == 0


def test_a_started_step_sets_the_exact_free_time() -> None:
    sched, policy = oracle(0.0)
    st = sched.instances[0]
    policy.step_started(0, 1.0, 0.5)  # nobody released it (a prompt continuing): recorded
    assert list(st.planned) == [(1.0, 0.5)] and st.busy_until_s == 1.5
    st.planned.append((1.2, 0.3))  # released during it, predicted 0.3 s; it runs 0.4 s
    st.planned.popleft()
    policy.step_started(0, 1.5, 0.4)
    assert list(st.planned) == [(1.2, 0.3)] and st.busy_until_s == 1.9


def test_it_never_holds_while_a_backlog_waits() -> None:
    sched, policy = oracle(2.0)
    st = sched.instances[0]
    st.planned.append((0.0, 1.0))  # busy until 1.0; three long prompts queue behind on two ranks
    st.busy_until_s = 1.0
    for rid in (5, 6, 7):
        sched.handle(RequestArrived(Request(rid, 0.0, 5000, 10)), 0.0)
    policy.attach(Foresight([Request(8, 1.001, 200, 10)], 2.0), transit_s=0.001)
    assert len(policy.buffer) == 3 and policy.hold_until(0, 0.998) is None  # else a gain of about 0.1 s
