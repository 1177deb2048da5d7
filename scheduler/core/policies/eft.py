"""Earliest finish time (the `eft` baseline): immediate dispatch with the information SBS uses.

Each request, the moment it arrives (so in arrival order), goes to the prefill instance and DP rank
whose lockstep steps are predicted to finish it first. The prediction uses what the SBS policy uses:
the instance's predicted free time (`busy_until_s`, kept by the step reports), its error ratio, the
per-rank outstanding tokens and requests (optimistic accounting corrected by snapshots), and the
capacity model. The engine then queues it behind what that rank already holds, FCFS, as SGLang does.
With `prefix_credit` (requests with `hash_ids`), each rank is charged only the prompt's tokens it does
not cache, by the same approximate prefix index SBS keeps: the finish time decides between cache
affinity and load, as cache-aware routers (sglang-router's `cache_aware`, Dynamo's KV router) do.

The model of one instance: after its running step, each rank works through its queue a chunk per
step, and every step lasts as long as its slowest rank. What a rank has queued behind the running step
is what was sent to it since that step started (the step reports date it), plus what the running step
could not take of the rest (a chunk per rank). A rank's queued tokens are charged attention as if its
requests were of their mean length (`tokens / count`); the new request's own chunks are charged
exactly. Per instance only the rank needing the fewest steps (then the least predicted work)
is evaluated, so a request costs O(instances × ranks × steps until it finishes).
"""

from __future__ import annotations

from collections.abc import Mapping

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.policies.base import RankPicker
from sbs.scheduler.core.policies.decode_choice import decode_rank
from sbs.scheduler.core.policies.immediate import DispatchAtOnce, refuse_without_engines
from sbs.scheduler.core.prefix_index import PrefixIndex
from sbs.scheduler.core.state import ClusterState, PrefillInstanceState
from sbs.scheduler.core.types import Decision, Dispatch, Request
from sbs.settings.scheduling import EftPolicy


class EarliestFinish(DispatchAtOnce):
    """Prefill: earliest predicted finish over (instance, rank). Decode: `settings.decode_rule`, by SBS's
    lexicographic rule or by `decode_picker`."""

    def __init__(
        self,
        state: ClusterState,
        settings: EftPolicy,
        decode_picker: RankPicker | None,
        *,
        block_tokens: int | None = None,
    ) -> None:
        super().__init__(state, settings.engine_priority)
        self.settings = settings
        self._decode_picker = decode_picker
        self.block_tokens = block_tokens
        self.prefix: PrefixIndex | None = None
        if settings.prefix_credit and block_tokens:
            self.prefix = PrefixIndex.for_instances(state.prefill_specs, block_tokens)
        self._since = [0] * len(state.prefill.tokens)
        """Per flat prefill rank: tokens sent to it since its instance's running step started."""
        self._running: list[float | None] = [None] * len(state.instances)
        """Per instance: the start (as the state dates it) of the step `_since` counts from."""
        self._end = [0.0] * len(state.instances)
        """Per instance: the predicted end of its running step (the capacity model on what it holds)."""

    def arrive(self, req: Request, now: float) -> list[Decision]:
        st = self.state
        if (refused := refuse_without_engines(st, req)) is not None:
            return [refused]
        n = req.prompt_tokens
        self._track_steps()
        queued = self._queued(now)
        ends = [end if inst.planned else now for end, inst in zip(self._end, st.instances, strict=True)]
        cached = self._cached(req)
        p, rank, _ = earliest_finish(
            st.instances, ends, queued, st.prefill.tokens, st.prefill.count, st.capacity, n, now, cached
        )
        inst = st.instances[p]
        flat = inst.offset + rank
        prefix = cached.get(flat, 0)
        uncached = n - prefix
        if inst.idle(now):  # the engine starts a step with this request at once: predict it
            first = min(uncached, inst.spec.chunk_tokens)
            step = st.capacity.rank_cost_s(first, PrefillCapacityModel.pairs(prefix, first)) * inst.error_ewma
            inst.planned.append((now, step))
            inst.busy_until_s = now + step
        else:
            self._since[flat] += uncached
        if self.prefix is not None and req.hash_ids:
            self.prefix.insert(flat, req.hash_ids)
        kv = n + 1
        dref = st.decode_refs[decode_rank(st, self.settings.decode, self._decode_picker, req.rid, kv)]
        st.prefill.add(p, rank, 1, uncached, now)
        st.decode.add(dref.instance, dref.rank, 1, kv, now)
        st.flights[req.rid] = (p, rank, uncached, dref.instance, dref.rank, kv)
        return [Dispatch(req.rid, p, rank, dref.instance, dref.rank, "immediate", self.priority(req))]

    def _cached(self, req: Request) -> dict[int, int]:
        """Per flat prefill rank caching a prefix of `req`: its cached tokens (empty without credit)."""
        if self.prefix is None or not req.hash_ids or not self.block_tokens:
            return {}
        ranks = range(len(self.state.prefill.count))
        return self.prefix.cached_tokens(req.hash_ids, ranks, self.block_tokens, req.prompt_tokens)

    def _track_steps(self) -> None:
        """Forget what was sent before each instance's running step started (it is in that step, or
        counted by the rank's outstanding tokens)."""
        state = self.state
        for i, st in enumerate(state.instances):
            running = st.planned[0][0] if st.planned else None
            if running != self._running[i]:
                self._running[i] = running
                lo, hi = st.offset, st.offset + st.spec.dp_size
                self._since[lo:hi] = [0] * st.spec.dp_size
                held = state.prefill.tokens[lo:hi]
                lengths = _mean_lengths(held, state.prefill.count[lo:hi])
                started = st.busy_until_s - st.planned_total_s()
                self._end[i] = started + _step_s(state.capacity, st.spec.chunk_tokens, held, lengths, 0)

    def _queued(self, now: float) -> list[int]:
        """Per flat prefill rank: tokens queued behind the running step of its instance."""
        out: list[int] = []
        tokens = self.state.prefill.tokens
        for st in self.state.instances:
            lo, hi, chunk = st.offset, st.offset + st.spec.dp_size, st.spec.chunk_tokens
            if st.idle(now):
                out += tokens[lo:hi]
            else:
                out += [
                    s + max(t - s - chunk, 0) for t, s in zip(tokens[lo:hi], self._since[lo:hi], strict=True)
                ]
        return out


def earliest_finish(
    instances: list[PrefillInstanceState],
    ends: list[float],
    queued: list[int],
    tokens: list[int],
    count: list[int],
    model: PrefillCapacityModel,
    prompt_tokens: int,
    now: float,
    cached: Mapping[int, int] | None = None,
) -> tuple[int, int, float]:
    """(instance, rank, predicted finish time) of a new prompt of `prompt_tokens`, over the available
    instances (all of them when none is), given per instance the predicted end of its running step
    (`ends`), and per flat rank the tokens `queued` behind it and the outstanding `tokens` and `count`
    (for their mean length). `cached`: per flat rank, the prompt's tokens it caches (not computed)."""
    cached = cached or {}
    usable = [i for i, st in enumerate(instances) if st.available] or list(range(len(instances)))
    best: tuple[float, int, int] | None = None
    for i in usable:
        st = instances[i]
        chunk = st.spec.chunk_tokens
        start = max(ends[i], now)
        lo, hi = st.offset, st.offset + st.spec.dp_size
        ahead = queued[lo:hi]
        mean_len = _mean_lengths(tokens[lo:hi], count[lo:hi])
        a, b = model.per_token_s, model.per_pair_s
        own = [prompt_tokens - cached.get(lo + r, 0) for r in range(st.spec.dp_size)]
        rank = min(
            range(st.spec.dp_size),
            key=lambda r: (-(-(ahead[r] + own[r]) // chunk), ahead[r] * (a + b * mean_len[r]), r),
        )
        prefix = prompt_tokens - own[rank]
        finish = start + _time_to_finish(model, chunk, ahead, mean_len, rank, own[rank], prefix)
        if best is None or finish < best[0]:
            best = (finish, i, rank)
    assert best is not None
    return best[1], best[2], best[0]


def _time_to_finish(
    model: PrefillCapacityModel,
    chunk: int,
    ahead: list[int],
    mean_len: list[float],
    rank: int,
    n: int,
    prefix: int = 0,
) -> float:
    """Predicted time of the lockstep steps until a prompt of `n` tokens to compute (behind `prefix`
    cached ones) queued on `rank` behind `ahead[rank]` tokens is prefilled (each rank a chunk per step,
    each step its slowest rank)."""
    total = 0.0
    own_ahead = ahead[rank]
    steps = -(-(own_ahead + n) // chunk)
    for s in range(steps):
        skip = s * chunk
        slowest = _step_s(model, chunk, ahead, mean_len, skip)
        queued = min(chunk, max(own_ahead - skip, 0))
        done = max(skip - own_ahead, 0)
        mine = min(chunk - queued, n - done)
        pairs = queued * mean_len[rank] + PrefillCapacityModel.pairs(prefix + done, mine)
        total += max(slowest, model.rank_cost_s(queued + mine, pairs))
    return total


def _mean_lengths(tokens: list[int], count: list[int]) -> list[float]:
    """Per rank, the mean outstanding prompt length (0.0 with nothing outstanding)."""
    return [t / c if c > 0 else 0.0 for t, c in zip(tokens, count, strict=True)]


def _step_s(
    model: PrefillCapacityModel, chunk: int, queued: list[int], lengths: list[float], skip: int
) -> float:
    """Predicted lockstep step over ranks holding `queued` tokens (of mean length `lengths`), `skip`
    of each already done: each rank takes a chunk of the rest."""
    slowest = 0.0
    for t, length in zip(queued, lengths, strict=True):
        part = min(chunk, t - skip)
        if part > 0:
            slowest = max(slowest, model.rank_cost_s(part, part * length))
    return slowest
