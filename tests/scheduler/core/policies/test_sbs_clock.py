"""SBS's release clock: its folds over the instances equal the `sbs_timing` rules applied to all of them,
whatever changed in between (a field set, a planned step added or removed)."""

from __future__ import annotations

import copy
import math
import pickle
import random

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.policies.sbs_clock import ReleaseClock
from sbs.scheduler.core.state import ClusterState, PrefillInstanceState
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings.scheduling import BatchingSettings

MODEL = PrefillCapacityModel(0.01, 1e-4, 1e-9)
OVERRUN = 3.0


def cluster(n: int) -> ClusterState:
    prefill = [InstanceSpec(f"prefill-{i}", Role.PREFILL, 4, 1000, 100_000) for i in range(n)]
    decode = [InstanceSpec("decode-0", Role.DECODE, 4, 1000, 100_000)]
    return ClusterState(prefill, decode, capacity=MODEL, transit_s=0.001, step_alpha=0.2)


def change(state: ClusterState, rng: random.Random) -> None:
    """One random change of one instance, as the scheduler or a test may make it."""
    st = rng.choice(state.instances)
    what = rng.randrange(8)
    if what == 0:
        st.busy_until_s = rng.uniform(0.0, 5.0)
    elif what == 1:
        st.planned.append((0.0, rng.uniform(0.01, 0.5)))
    elif what == 2 and st.planned:
        st.planned.popleft()
    elif what == 3:
        st.planned.clear()
    elif what == 4:
        st.healthy = rng.random() < 0.8
    elif what == 5:
        st.suspect = rng.random() < 0.2
    elif what == 6:
        st.deferred_until_s = rng.uniform(0.0, 5.0)
    else:
        st.step_ewma_s = rng.uniform(0.0, 1.0)


def test_the_clock_equals_the_rules_over_every_instance() -> None:
    rng = random.Random(7)
    b = BatchingSettings()
    state = cluster(6)
    clock = ReleaseClock(state, b, OVERRUN)
    for _ in range(2000):
        for _ in range(rng.randrange(3)):
            change(state, rng)
        idle_from = rng.choice([-math.inf, rng.uniform(0.0, 5.0)])
        clock.fresh()
        instances = state.instances
        expected = min(sbs_timing.release_time(st, b=b, idle_from=idle_from) for st in instances)
        assert clock.release_min(idle_from) == expected
        assert clock.hold_s == sbs_timing.hold_s(instances, b)
        assert clock.interval_s == sbs_timing.interval_s(instances, b)
        assert clock.prefill_usable == any(st.available for st in instances)
        assert clock.suspect_at == min(sbs_timing.suspect_after(st, OVERRUN) for st in instances)
        now = rng.uniform(0.0, 5.0)
        skip = set(rng.sample(range(len(instances)), rng.randrange(3)))
        assert clock.due(now, idle_from, skip) == reference_due(instances, b, now, idle_from, skip)


def reference_due(
    instances: list[PrefillInstanceState], b: BatchingSettings, now: float, idle_from: float, skip: set[int]
) -> int | None:
    """The instance not in `skip` whose release time has come and whose step ends first (ties: lowest)."""
    due = [
        (st.busy_until_s, i)
        for i, st in enumerate(instances)
        if i not in skip and sbs_timing.release_time(st, b=b, idle_from=idle_from) <= now
    ]
    return min(due)[1] if due else None


def test_an_unchanged_state_is_not_recomputed() -> None:
    state = cluster(2)
    clock = ReleaseClock(state, BatchingSettings(), OVERRUN)
    clock.fresh()
    seen = state.revision.n
    clock.fresh()
    assert state.revision.n == seen
    state.instances[1].planned.append((0.0, 0.1))
    assert state.revision.n > seen
    assert state.instances[1].take_changed() and not state.instances[1].take_changed()


def test_a_copy_is_as_changed_as_its_original() -> None:
    # A copied state (a benchmark's fresh round, a pickled core) must not read as all changed: the clock
    # would refold every instance, work its original would not do.
    state = cluster(3)
    state.instances[1].planned.append((0.0, 0.1))
    state.instances[2].busy_until_s = 1.0
    clock = ReleaseClock(state, BatchingSettings(), OVERRUN)
    clock.fresh()
    copied_state, copied_clock = copy.deepcopy((state, clock))
    assert copied_state.revision.n == state.revision.n == copied_clock._rev
    assert not any(st.take_changed() for st in copied_state.instances)
    assert copied_state.instances[1].planned == state.instances[1].planned
    restored = pickle.loads(pickle.dumps(state))
    assert restored.revision.n == state.revision.n and restored.instances[2].busy_until_s == 1.0
    restored.instances[1].planned.popleft()  # the copy's changes still count, in its own revision
    assert restored.revision.n == state.revision.n + 1 and restored.instances[1].take_changed()
