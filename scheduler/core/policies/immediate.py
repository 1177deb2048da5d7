"""Immediate dispatch over rank pickers (the `round_robin`, `random`, `least_load` and
`power_of_two` baselines, all DP-rank aware like SMG's `--dp-aware`): every request is dispatched the
moment it arrives, its prefill and its decode leg each to the rank its picker chooses; the engines
queue what they cannot start. With `engine_priority` (`+prio`) every dispatch carries SBS's release key
as its SGLang priority (`engine_priority`), so the engines' queues take requests in SBS's order."""

from __future__ import annotations

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies.base import RankPicker
from sbs.scheduler.core.policies.decode_choice import decode_rank
from sbs.scheduler.core.policies.sbs_timing import priority_key
from sbs.scheduler.core.state import ClusterState
from sbs.scheduler.core.types import Decision, Dispatch, Reject, Request
from sbs.settings.scheduling import BatchingSettings, PickerPolicy

SBS_ORDER = BatchingSettings()
"""SBS's default release order (`size_priority`, `size_priority_max_s`): the `+prio` priorities."""
PRIORITY_UNITS_PER_S = 1_000_000
"""An SGLang priority is an integer: the key is sent in microseconds."""


def engine_priority(req: Request, model: PrefillCapacityModel) -> int:
    """SBS's release key for `req` (`sbs_timing.priority_key`: arrival + size_priority × predicted
    prefill time, capped) as an SGLang request priority: negated microseconds, so the engines' default
    order (higher values first, without `--schedule-low-priority-values-first`) takes the smallest key
    first, and requests of equal key in arrival order."""
    return -round(priority_key(req.arrival_s, req.prompt_tokens, model, SBS_ORDER) * PRIORITY_UNITS_PER_S)


def refuse_without_engines(state: ClusterState, req: Request) -> Reject | None:
    """An immediate dispatcher never sends to an unusable engine: with no usable prefill or decode
    instance the request is rejected at once, retryable."""
    side = state.unusable_side()
    if side is None:
        return None
    state.stats.rejected += 1
    return Reject(req.rid, f"no healthy {side} instance", retryable=True)


class DispatchAtOnce:
    """What every immediate policy shares: it holds nothing, so it has nothing to release later."""

    def __init__(self, state: ClusterState, send_priority: bool = False) -> None:
        self.state = state
        self.buffer: dict[int, Request] = {}
        self.send_priority = send_priority
        """The policy's `engine_priority`: dispatches carry `engine_priority(req)`."""

    def priority(self, req: Request) -> int | None:
        """The SGLang priority a dispatch of `req` carries (None without `engine_priority`)."""
        return engine_priority(req, self.state.capacity) if self.send_priority else None

    def cancel(self, rid: int) -> bool:
        return False

    def tick(self, now: float) -> list[Decision]:
        return []

    def next_deadline(self) -> float | None:
        return None


class ImmediateDispatch(DispatchAtOnce):
    """The prefill leg goes to its picker's rank among the live ones, by outstanding tokens; the decode
    leg by the policy's `decode_rule` (`decode_choice.decode_rank`)."""

    def __init__(
        self, state: ClusterState, settings: PickerPolicy, prefill_picker: RankPicker,
        decode_picker: RankPicker | None,
    ) -> None:  # fmt: skip
        super().__init__(state, settings.engine_priority)
        self.settings = settings
        self._prefill_picker = prefill_picker
        self._decode_picker = decode_picker

    def arrive(self, req: Request, now: float) -> list[Decision]:
        st = self.state
        if (refused := refuse_without_engines(st, req)) is not None:
            return [refused]
        kv = req.prompt_tokens + 1
        pref = st.prefill_ref(self._prefill_picker.pick(st.prefill_live(), st.prefill.tokens))
        dref = st.decode_refs[decode_rank(st, self.settings.decode, self._decode_picker, req.rid, kv)]
        st.prefill.add(pref.instance, pref.rank, 1, req.prompt_tokens, now)
        st.decode.add(dref.instance, dref.rank, 1, kv, now)
        st.flights[req.rid] = (pref.instance, pref.rank, req.prompt_tokens, dref.instance, dref.rank, kv)
        return [
            Dispatch(
                req.rid, pref.instance, pref.rank, dref.instance, dref.rank, "immediate", self.priority(req)
            )
        ]
