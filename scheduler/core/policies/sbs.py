"""Staggered Batch Scheduling: requests are buffered and released per prefill instance just before the
instance's predicted free time (timing rules in `sbs_timing`), in a size-aware order (`sbs`) or in
arrival order (`sbs-fcfs`), up to the step's level in predicted time, water-filled over its DP ranks
(`prefill_alloc`), each paired with a decode rank by the IQR-masked lexicographic rule
(`decode_choice`). An idle instance gets work at once (low-load bypass). Short prompts do not ride a
slow continuation step (a late chunk of a long prompt) when another instance frees sooner, and prompts
longer than a chunk gather on such a step (a long-prompt lane) when that costs them less than starting
elsewhere costs the short prompts, and leave one for an instance that finishes them sooner when that
gains them more than it costs the short prompts there (`sbs_lanes`). A request held past the hold
time is forced out to the instance that frees first (a long one to a lane, on the same cost), or, when
no instance is usable at all, gets an explicit retryable `Reject`. Prefix-cache credit (`prefix_index`)
may make a request wait for the instance that caches its prefix, never longer than the recompute it
saves."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace
from itertools import compress, repeat
from operator import add, itemgetter, mul

import numpy as np
from sbs.scheduler.core import engine_steps
from sbs.scheduler.core.policies import sbs_cap, sbs_lanes, sbs_timing
from sbs.scheduler.core.policies.decode_choice import lexicographic_ranks_array
from sbs.scheduler.core.policies.sbs_clock import ReleaseClock
from sbs.scheduler.core.policies.sbs_take import take_in_order
from sbs.scheduler.core.prefill_alloc import water_fill_lists
from sbs.scheduler.core.prefix_index import PrefixIndex, cached_of
from sbs.scheduler.core.state import ClusterState
from sbs.scheduler.core.types import Carry, Decision, Reject, Request, dispatches
from sbs.settings.scheduling import StaggeredPolicy

_SUM_N, _SUM_TOKENS = 1 << 11, 1 << 26
"""Fewer than `_SUM_N` prompts each below `_SUM_TOKENS` tokens: their sum of squares fits in int64."""


class StaggeredBatching:
    """The SBS policy over one cluster state."""

    def __init__(
        self,
        state: ClusterState,
        settings: StaggeredPolicy,
        *,
        block_tokens: int | None,
        suspect_overrun: float,
    ) -> None:
        self.state = state
        self.settings = settings
        self.suspect_overrun = suspect_overrun
        self.batching = settings.batching
        self.block_tokens = block_tokens
        self.clock = ReleaseClock(state, settings.batching, suspect_overrun)
        """The timing rules folded over the instances, kept between changes of their state."""
        self.buffer: dict[int, Request] = {}
        """Buffered requests in arrival order (the hold guard looks at the oldest)."""
        self._queue: list[tuple[float, int]] = []
        """(priority key, rid) of the buffered requests, sorted: the order releases take them in."""
        self._queue_tokens: list[int] = []
        """The prompt tokens of `_queue`'s requests, position by position."""
        self._buffer_tokens = 0
        self._buffer_sq = 0
        """Σ prompt_tokens² over the buffer (its attention work, for the step level)."""
        self._hashed = 0
        """Buffered requests with prefix hashes (with none, a release needs no look at the prefix index)."""
        self._lane_deferred: set[int] = set()
        """Instances deferred because everything buffered waited for a long-prompt lane."""
        short = min((s.chunk_tokens for s in state.prefill_specs), default=0)
        self.short = sbs_lanes.ShortArrivals(short, settings.batching.lane_rate_window_s)
        """Recent arrivals of prompts of at most a chunk: what a long prompt costs them (`sbs_lanes`)."""
        self.prefix: PrefixIndex | None = None
        if settings.prefix_credit and block_tokens:
            self.prefix = PrefixIndex.for_instances(state.prefill_specs, block_tokens)

    # -- the Policy interface ---------------------------------------------------------------------

    def arrive(self, req: Request, now: float) -> list[Decision]:
        self.buffer[req.rid] = req
        self.short.add(req.prompt_tokens, now)
        key = sbs_timing.priority_key(req.arrival_s, req.prompt_tokens, self.state.capacity, self.batching)
        i = bisect_right(self._queue, (key, req.rid))
        self._queue.insert(i, (key, req.rid))
        self._queue_tokens.insert(i, req.prompt_tokens)
        self._buffer_tokens += req.prompt_tokens
        self._buffer_sq += req.prompt_tokens * req.prompt_tokens
        self._hashed += bool(req.hash_ids)
        if self._lane_deferred:
            self._undefer(req.prompt_tokens)
        return []

    def _undefer(self, tokens: int) -> None:
        """A prompt of `tokens` arrived: instances deferred only because everything buffered was long
        (and waited for a lane) may take it now."""
        for p in [p for p in self._lane_deferred if tokens <= self.state.prefill_specs[p].chunk_tokens]:
            self.state.instances[p].deferred_until_s = 0.0
            self._lane_deferred.discard(p)

    def cancel(self, rid: int) -> bool:
        req = self.buffer.pop(rid, None)
        if req is None:
            return False
        self._buffer_tokens -= req.prompt_tokens
        self._buffer_sq -= req.prompt_tokens * req.prompt_tokens
        self._hashed -= bool(req.hash_ids)
        self._sync_queue()
        return True

    def next_deadline(self) -> float | None:
        if not self.buffer:
            return None
        clock = self.clock.fresh()
        hold = clock.hold_s
        deadline = next(iter(self.buffer.values())).arrival_s + hold
        if not clock.prefill_usable or not any(self.state.decode_healthy):
            return deadline + hold  # then reject what is still held, retryable
        return min(deadline, clock.release_min(self._idle_from()))

    def tick(self, now: float) -> list[Decision]:
        """Release to every instance that is due, then force out what was held too long."""
        out: list[Decision] = []
        if not self.buffer:
            return out
        state = self.state
        for st in state.instances:
            if st.carries:
                engine_steps.roll_carries(st, now, state.capacity)
        clock = self.clock.fresh()
        if now > clock.suspect_at:
            sbs_timing.mark_suspects(state.instances, now, self.suspect_overrun)
            clock.fresh()
        if not any(state.decode_healthy):  # nowhere to decode: hold, then reject retryable
            return self._reject_stale(now, "no healthy decode instance within the hold time")
        oldest_s = next(iter(self.buffer.values())).arrival_s
        if clock.release_min(self._idle_from()) > now and oldest_s + clock.hold_s > now:
            return out  # none is due, none is held too long (most events)
        tried: set[int] = set()
        while self.buffer:
            p = self._due_instance(now, tried)
            if p is None:
                break
            tried.add(p)
            reason = "bypass" if state.instances[p].idle(now) else "staggered"
            if reason == "bypass":
                state.stats.bypass_releases += 1
            out.extend(self._release_to(p, now, reason))
        while self.buffer:
            oldest = next(iter(self.buffer.values()))
            if oldest.arrival_s + self.clock.fresh().hold_s > now:
                break
            live = [i for i, st in enumerate(state.instances) if st.available]
            if not live:
                out.extend(self._reject_stale(now, "no healthy prefill instance within the hold time"))
                break
            rates = self.short.rate(now), self.short.token_rate(now)
            first = sbs_lanes.forced_target(
                state.instances, live, oldest.prompt_tokens, *rates, model=state.capacity, b=self.batching
            )  # a long prompt may be forced into a long-prompt lane
            sent = self._release_to(first, now, "max_hold")
            if not sent:
                break
            state.stats.forced_releases += 1
            out.extend(sent)
        return out

    # -- timing -----------------------------------------------------------------------------------

    def interval_s(self) -> float:
        """Adaptive release interval: measured step time over the instances sharing the load."""
        return self.clock.fresh().interval_s

    def _idle_from(self) -> float:
        """When idle instances may take work: at once under the bypass, else one interval after the
        oldest buffered arrival (a plain fixed-window batcher)."""
        if self.batching.bypass:
            return -math.inf
        return next(iter(self.buffer.values())).arrival_s + self.interval_s()

    def _due_instance(self, now: float, tried: set[int]) -> int | None:
        """The instance due now whose step ends first (ties: lowest index), if any."""
        idle_from = self._idle_from()
        clock = self.clock.fresh()
        if clock.release_min(idle_from) > now:
            return None  # none is due
        return clock.due(now, idle_from, tried)

    def _reject_stale(self, now: float, why: str) -> list[Decision]:
        """No prefill (or no decode) instance is usable: requests held twice the hold get an explicit,
        retryable error instead of waiting forever (an accepted request completes or is told to retry)."""
        out: list[Decision] = []
        limit = 2.0 * sbs_timing.hold_s(self.state.instances, self.batching)
        while self.buffer:
            oldest = next(iter(self.buffer.values()))
            if oldest.arrival_s + limit > now:
                break
            del self.buffer[oldest.rid]
            self._buffer_tokens -= oldest.prompt_tokens
            self._buffer_sq -= oldest.prompt_tokens * oldest.prompt_tokens
            self._hashed -= bool(oldest.hash_ids)
            self.state.stats.rejected += 1
            out.append(Reject(oldest.rid, why, retryable=True))
        if out:
            self._sync_queue()
        return out

    def _sync_queue(self) -> None:
        """Drop the queue entries of requests no longer buffered."""
        keep = list(map(self.buffer.__contains__, map(itemgetter(1), self._queue)))
        self._queue = list(compress(self._queue, keep))
        self._queue_tokens = list(compress(self._queue_tokens, keep))

    # -- one release --------------------------------------------------------------------------------

    def _release_to(self, p: int, now: float, reason: str) -> list[Decision]:
        state = self.state
        st = state.instances[p]
        spec = st.spec
        qtok = self._queue_tokens
        try:  # the prompt sizes as one array, for the cap and the take (`take_in_order`)
            qa: np.ndarray | None = np.fromiter(qtok, np.int64, len(qtok))
        except OverflowError:
            qa = None
        chunk = sbs_cap.release_chunk(spec, self.batching, qtok if qa is None else qa)
        committed = st.committed_next()
        ctok, cpairs = sbs_timing.committed_loads(st)
        buffer = self.buffer
        queue, qtok = self._queue, self._queue_tokens
        if reason == "max_hold":  # the requests over the hold go first, whatever their size
            late = now - sbs_timing.hold_s(state.instances, self.batching)
            by = sorted(range(len(queue)), key=lambda i: buffer[queue[i][1]].arrival_s > late)
            queue = [queue[i] for i in by]
            qtok = [qtok[i] for i in by]
            qa = None if qa is None else qa[by]
        isolate = reason != "max_hold" and self.batching.isolate_slow_steps
        slow = state.capacity.step_s(ctok, cpairs) if isolate and committed else 0.0
        if slow > sbs_timing.full_chunk_s(state.capacity, chunk) and max(qtok) > chunk:
            # A long-prompt lane: the prompts longer than a chunk, which wait for it, go first.
            by = sorted(range(len(queue)), key=lambda i: qtok[i] <= chunk)
            queue = [queue[i] for i in by]
            qtok = [qtok[i] for i in by]
            qa = None if qa is None else qa[by]
        budget = self._budget(p, now, chunk, ctok, cpairs, qtok[0], slow_s=slow if isolate else None)
        credits: list[dict[int, int] | None] | None = None
        if self.prefix is None or not self._hashed:
            sizes = qtok if qa is None else qa
            take: Sequence[int] = take_in_order(sizes, budget, spec.dp_size, state.capacity, chunk)
        else:
            take, credits, wake = self._take_with_credit(p, now, queue, qtok, budget, chunk)
            if not take and wake < math.inf:
                # Everything buffered waits for the instances caching its prefixes: look again when the
                # first of them is due (or a new request arrives), not in a loop.
                st.deferred_until_s = max(wake, now + self.batching.min_interval_s)
                return []
        if not take and budget.wake_s < math.inf:
            # Everything buffered is long and waits for a lane: look again when it is due, or when a
            # prompt this instance may take arrives (`arrive`).
            st.deferred_until_s = max(budget.wake_s, now + self.batching.min_interval_s)
            self._lane_deferred.add(p)
            return []
        tokens_a = None
        if isinstance(take, range):  # the head of the release order
            rids = list(map(itemgetter(1), queue[: len(take)]))
            tokens = qtok[: len(take)]
            tokens_a = None if qa is None else qa[: len(take)]
        else:
            rids = list(map(itemgetter(1), map(queue.__getitem__, take)))
            tokens = list(map(qtok.__getitem__, take))
        plan = water_fill_lists(
            rids,
            tokens,
            ctok,
            cpairs,
            credits=credits,
            chunk_tokens=chunk,
            model=state.capacity,
            allow_chunking=True,
            tokens_a=tokens_a,
        )
        if not plan.rids:
            if committed and len(st.planned) == 1:  # every rank is busy with a chunked prompt
                st.planned.append((now, st.plan_carry_only(state.capacity)))
                st.busy_until_s += st.planned[-1][1]
            return []
        st.consume_carries(committed)  # the chunks this step takes; new carries are recorded below
        predicted = plan.step_s * st.error_ewma
        st.planned.append((now, predicted))
        st.busy_until_s = max(st.busy_until_s, now) + predicted
        placed = plan.rids
        reqs = list(map(buffer.pop, placed))
        if len(placed) == len(take) and isinstance(take, range) and queue is self._queue:
            del self._queue[: len(take)]  # the head of the queue went out whole
            del self._queue_tokens[: len(take)]
            prompts, prompts_a = tokens, tokens_a
        else:
            self._sync_queue()
            prompts, prompts_a = [r.prompt_tokens for r in reqs], None
        small = prompts_a is not None and len(prompts_a) < _SUM_N and prompts_a.max() < _SUM_TOKENS
        if small:
            self._buffer_tokens -= int(prompts_a.sum())  # exact: the sums stay below 2**63
            self._buffer_sq -= int(prompts_a @ prompts_a)
        else:
            self._buffer_tokens -= sum(prompts)
            self._buffer_sq -= sum(map(mul, prompts, prompts))
        frac = self.settings.decode.output_kv_fraction
        kv_a: np.ndarray | None = None
        if frac:
            kvs = [r.prompt_tokens + 1 + int(frac * r.output_tokens) for r in reqs]
        elif small:
            kv_a = prompts_a + 1
            kvs = kv_a.tolist()
        else:
            kvs = list(map(add, prompts, repeat(1)))
        if kv_a is None:
            try:
                kv_a = np.fromiter(kvs, np.int64, len(kvs))
            except OverflowError:
                kv_a = None
        flat = lexicographic_ranks_array(state, self.settings.decode, placed, kvs, kv_a)
        d_instances = state.decode.instance_of_a[flat].tolist()
        d_ranks = state.decode.rank_of_a[flat].tolist()
        ranks = plan.ranks
        if plan.ranks_a is None or plan.uncached_a is None:  # packed in Python: columns as lists
            uncached = list(map(add, plan.step_tokens, plan.remaining_tokens))
            on_prefill: tuple[Sequence[int], Sequence[int]] = ranks, uncached
        else:
            uncached = plan.uncached_a.tolist()
            on_prefill = plan.ranks_a, plan.uncached_a
        for i in compress(range(len(placed)), plan.remaining_tokens):  # chunked: the rest stays on the rank
            st.carries[ranks[i]] = Carry(
                placed[i], ranks[i], plan.remaining_tokens[i], plan.cached_tokens[i] + plan.step_tokens[i]
            )
        if self._hashed:
            self._hashed -= sum(1 for r in reqs if r.hash_ids)
            if self.prefix is not None:
                for rank, req in zip(ranks, reqs, strict=True):
                    if req.hash_ids:
                        self.prefix.insert(st.offset + rank, req.hash_ids)
        state.flights.update(
            zip(
                placed,
                zip(repeat(p), ranks, uncached, d_instances, d_ranks, kvs),
                strict=True,
            )
        )
        state.queue_prefill(p, ranks, placed, uncached, plan.remaining_tokens, now)
        state.prefill.add_many(*on_prefill, now, offset=st.offset)
        state.decode.add_many(flat, kvs if kv_a is None else kv_a, now)
        state.stats.releases += 1
        state.stats.released_requests += len(placed)
        return dispatches(placed, p, ranks, d_instances, d_ranks, reason)

    def _budget(
        self,
        p: int,
        now: float,
        chunk: int,
        ctok: list[int],
        cpairs: list[float],
        head: int,
        *,
        slow_s: float | None,
    ) -> sbs_timing.StepBudget:
        """The step's budget (`sbs_timing.step_budget`). With `slow_s` (the committed chunks' time; None:
        no lanes, as in a forced release): prompts of at most a chunk wait when the step is a slow
        continuation another instance beats (`sbs_timing.isolate_slow_step`), and longer ones wait for
        a long-prompt lane while one is due and costs them less, or for an instance that finishes them
        sooner by more than they cost the short prompts there (`sbs_lanes`)."""
        b = self.batching
        model = self.state.capacity
        budget = sbs_timing.step_budget(
            model,
            chunk,
            ctok,
            cpairs,
            head_tokens=head,
            buffered_tokens=self._buffer_tokens,
            buffered_sq=self._buffer_sq,
            level_fill=b.level_fill,
            skip_above_level=not self.settings.fcfs,
        )
        if slow_s is None:
            return budget
        instances = self.state.instances
        rates = self.short.rate(now), self.short.token_rate(now)
        if b.sooner_elsewhere and max(self._queue_tokens) > instances[p].spec.chunk_tokens:
            sooner = sbs_lanes.sooner_elsewhere(instances, p, now, *rates, model=model, b=b)
            if sooner is not None:
                budget = replace(budget, sooner=sooner.waits, wake_s=sooner.wake_s)
        if sbs_timing.isolate_slow_step(instances, p, now, model=model, chunk=chunk, committed_s=slow_s):
            return replace(budget, min_tokens=chunk)
        if slow_s > sbs_timing.full_chunk_s(model, chunk):
            return budget
        lane = sbs_lanes.first_lane(instances, p, model=model, b=b)
        if lane is None:
            return budget
        due, i = lane
        cost = sbs_lanes.lane_cost(instances, p, i, due - now, *rates, model=model, b=b)
        waits = None if cost is None else cost.waits
        return replace(budget, max_tokens=chunk, lane_waits=waits, wake_s=min(due, budget.wake_s))

    def _take_with_credit(
        self,
        p: int,
        now: float,
        queue: list[tuple[float, int]],
        qtok: list[int],
        budget: sbs_timing.StepBudget,
        chunk: int,
    ) -> tuple[list[int], list[dict[int, int] | None] | None, float]:
        """`take_in_order` where requests carry prefix hashes: a request whose prefix another instance
        caches may wait for it (`_cached_elsewhere`; the earliest such wait is returned), and the others
        get per-rank cache credit on this instance. A request whose longest cached prefix is here (its
        home) is judged by the tokens it computes here, and does not wait for a slow step to pass:
        any other step would recompute the prefix."""
        st = self.state.instances[p]
        lo, hi = st.offset, st.offset + st.spec.dp_size
        every = range(len(self.state.prefill.count))
        block = self.block_tokens or 0
        prefix = self.prefix
        assert prefix is not None
        take: list[int] = []
        credits: list[dict[int, int] | None] = []
        any_credit = False
        taken = 0
        cost = 0.0
        wake = math.inf
        model = self.state.capacity
        for i, (_, rid) in enumerate(queue):
            if budget.full(taken, cost) and len(take) >= st.spec.dp_size:
                break
            tokens = qtok[i]
            c = sbs_timing.item_cost_s(model, tokens, chunk)
            req = self.buffer[rid]
            matched = prefix.matched_blocks(req.hash_ids, every) if req.hash_ids else {}
            mine = {f - lo: b for f, b in matched.items() if lo <= f < hi}  # cached blocks per rank here
            here = max(mine.values(), default=0)
            if here and here >= max(matched.values()):  # its home: judged by the tokens it computes here
                rest = tokens - cached_of(here, block, tokens)
                c_rest = sbs_timing.item_cost_s(model, rest, chunk)
                if not budget.admits(rest, c_rest, not take, cached_here=True):
                    continue
            elif not budget.admits(tokens, c, not take):
                continue
            credit = None
            if matched:
                wait_for = self._cached_elsewhere(req, p, now, matched, here)
                if wait_for is not None:  # another instance holds its prefix and frees before a recompute
                    wake = min(wake, wait_for)
                    continue
                if mine:
                    credit = {r: cached_of(b, block, tokens) for r, b in mine.items()}
                    any_credit = True
            take.append(i)
            credits.append(credit)
            taken += min(tokens, chunk)
            cost += c
        return take, credits if any_credit else None, wake

    def _cached_elsewhere(
        self, req: Request, p: int, now: float, matched: dict[int, int], here: int
    ) -> float | None:
        """When `req` should rather go to another instance caching more of its prefix (`matched`: its
        cached blocks per flat rank; `here`: the most on a rank of `p`): that instance's due time; None
        if it should go here.

        It waits when that instance is predicted free sooner than the prefill the cache saves would
        take (`per_token·Δcached + per_pair·Δ(cached²)`), so cache affinity never costs more latency
        than it saves, and never past half the hold time.
        """
        state = self.state
        if not matched or not self.block_tokens:
            return None
        if now - req.arrival_s >= 0.5 * sbs_timing.hold_s(state.instances, self.batching):
            return None
        flat, there = max(matched.items(), key=lambda kv: (kv[1], -kv[0]))
        if there <= here:
            return None
        other = state.instances[state.prefill_ref(flat).instance]
        if not other.available:
            return None
        c_here = cached_of(here, self.block_tokens, req.prompt_tokens)
        c_there = cached_of(there, self.block_tokens, req.prompt_tokens)
        saved = state.capacity.per_token_s * (c_there - c_here) + state.capacity.per_pair_s * (
            float(c_there) ** 2 - float(c_here) ** 2
        )
        due = max(other.busy_until_s - sbs_timing.lead_s(other, self.batching), other.deferred_until_s, now)
        return due if due - now < saved else None
