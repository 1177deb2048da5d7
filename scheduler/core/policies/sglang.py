"""SGLang's own DP balancing (the `sglang` baseline): the router picks the instance round robin, as
sglang-router's PD mode without `--dp-aware` does, and the engine's DP controller picks the rank
(`--load-balance-method`, modelled by the engines), so dispatches carry no rank. `sglang+prio` sends
SBS's release key as each request's priority (`immediate.engine_priority`)."""

from __future__ import annotations

from sbs.scheduler.core.policies.immediate import DispatchAtOnce, refuse_without_engines
from sbs.scheduler.core.state import ClusterState
from sbs.scheduler.core.types import Decision, Dispatch, Request


class EngineBalanced(DispatchAtOnce):
    """Instances in turn, skipping unusable ones; ranks left to the engine."""

    def __init__(self, state: ClusterState, send_priority: bool = False) -> None:
        super().__init__(state, send_priority)
        self._next_prefill = 0
        self._next_decode = 0

    def arrive(self, req: Request, now: float) -> list[Decision]:
        st = self.state
        if (refused := refuse_without_engines(st, req)) is not None:
            return [refused]
        kv = req.prompt_tokens + 1
        p, self._next_prefill = _round_robin([s.available for s in st.instances], self._next_prefill)
        d, self._next_decode = _round_robin(st.decode_healthy, self._next_decode)
        st.instances[p].unpinned_tokens += req.prompt_tokens
        st.flights[req.rid] = (p, None, req.prompt_tokens, d, None, kv)
        return [Dispatch(req.rid, p, None, d, None, "immediate", self.priority(req))]


def _round_robin(available: list[bool], start: int) -> tuple[int, int]:
    """The first available index from `start` on (cyclically), and where the next turn starts."""
    n = len(available)
    for k in range(n):
        i = (start + k) % n
        if available[i]:
            return i, i + 1
    return start % n, start + 1
