"""A release's bookkeeping: the buffer's token sums and the decode counters follow what was released,
whether the sums take the int64 path (prompts below 2**26) or Python's integers (larger ones)."""

from __future__ import annotations

import random

import pytest
from sbs.scheduler.core.policies import StaggeredBatching

from tests.scheduler.core.fakes import arrive, dispatches, make_scheduler


@pytest.mark.parametrize("huge", [False, True])
def test_buffer_sums_and_decode_kv_follow_every_release(huge: bool) -> None:
    sched = make_scheduler("sbs", prefill=2, decode=1, decode_kv=1 << 40)
    policy = sched.policy
    assert isinstance(policy, StaggeredBatching)
    rng = random.Random(7)
    sizes: dict[int, int] = {}
    released = 0
    t = 0.0
    for rid in range(300):
        t += rng.expovariate(400.0)
        tokens = rng.randint(1, 3000)
        if huge and rid % 37 == 5:
            tokens = (1 << 26) + rng.randint(0, 1 << 20)  # beyond the int64 sums' bound
        sizes[rid] = tokens
        out = dispatches(arrive(sched, rid, t, tokens=tokens))
        due = sched.next_deadline()
        if due is not None and due <= t + 0.002:
            out += dispatches(sched.handle(None, max(due, t)))
        released += sum(sizes[d.rid] + 1 for d in out)  # KV: the prompt and the first output token
        buffered = [r.prompt_tokens for r in policy.buffer.values()]
        assert policy._buffer_tokens == sum(buffered)
        assert policy._buffer_sq == sum(n * n for n in buffered)
        assert sum(sched.state.decode.tokens) == released
    assert released and policy.buffer  # some were released, some still wait
