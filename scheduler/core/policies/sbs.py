"""Staggered Batch Scheduling: requests are buffered and released per prefill instance just before the
instance's predicted free time (timing rules in `sbs_timing`), in a size-aware order, water-filled
over its DP ranks (`prefill_alloc`), each paired with a decode rank by the IQR-masked lexicographic
rule (`decode_alloc`). An idle instance gets work at once (low-load bypass). A request held past the
hold time is forced out to the instance that frees first, or, when no instance is usable at all,
gets an explicit retryable `Reject`. Prefix-cache credit (`prefix_index`) may make a request wait for
the instance that caches its prefix, never longer than the recompute it saves.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate, compress, islice, repeat
from operator import add, itemgetter, le

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.decode_alloc import assign_decode_ranks
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.prefill_alloc import water_fill_lists
from sbs.scheduler.core.prefix_index import PrefixIndex
from sbs.scheduler.core.state import Carry, ClusterState, Flight
from sbs.scheduler.core.types import Decision, Reject, Request, dispatches
from sbs.settings.scheduling import SbsPolicy


class StaggeredBatching:
    """The SBS policy over one cluster state."""

    def __init__(
        self, state: ClusterState, settings: SbsPolicy, *, block_tokens: int | None, suspect_overrun: float
    ) -> None:
        self.state = state
        self.settings = settings
        self.suspect_overrun = suspect_overrun
        self.batching = settings.batching
        self.block_tokens = block_tokens
        self.buffer: dict[int, Request] = {}
        """Buffered requests in arrival order (the hold guard looks at the oldest)."""
        self._queue: list[tuple[float, int]] = []
        """(priority key, rid) of the buffered requests, sorted: the order releases take them in."""
        self._queue_tokens: list[int] = []
        """The prompt tokens of `_queue`'s requests, position by position."""
        self._buffer_tokens = 0
        self._hashed = 0
        """Buffered requests with prefix hashes (with none, a release needs no look at the prefix index)."""
        self.prefix: PrefixIndex | None = None
        if settings.prefix_credit and block_tokens:
            caps = [
                s.kv_capacity_tokens // block_tokens for s in state.prefill_specs for _ in range(s.dp_size)
            ]
            self.prefix = PrefixIndex(len(caps), caps)

    # -- the Policy interface ---------------------------------------------------------------------

    def arrive(self, req: Request, now: float) -> list[Decision]:
        self.buffer[req.rid] = req
        key = sbs_timing.priority_key(req.arrival_s, req.prompt_tokens, self.state.capacity, self.batching)
        i = bisect_right(self._queue, (key, req.rid))
        self._queue.insert(i, (key, req.rid))
        self._queue_tokens.insert(i, req.prompt_tokens)
        self._buffer_tokens += req.prompt_tokens
        self._hashed += bool(req.hash_ids)
        return []

    def cancel(self, rid: int) -> bool:
        req = self.buffer.pop(rid, None)
        if req is None:
            return False
        self._buffer_tokens -= req.prompt_tokens
        self._hashed -= bool(req.hash_ids)
        self._sync_queue()
        return True

    def next_deadline(self) -> float | None:
        if not self.buffer:
            return None
        instances = self.state.instances
        hold = sbs_timing.hold_s(instances, self.batching)
        deadline = next(iter(self.buffer.values())).arrival_s + hold
        if self.state.unusable_side() is not None:
            return deadline + hold  # then reject what is still held, retryable
        idle_from = self._idle_from()
        lead = self.batching.lead_s
        return min(
            deadline, *(sbs_timing.release_time(st, lead_s=lead, idle_from=idle_from) for st in instances)
        )

    def tick(self, now: float) -> list[Decision]:
        """Release to every instance that is due, then force out what was held too long."""
        out: list[Decision] = []
        if not self.buffer:
            return out
        state = self.state
        sbs_timing.mark_suspects(state.instances, now, self.suspect_overrun)
        if not any(state.decode_healthy):  # nowhere to decode: hold, then reject retryable
            return self._reject_stale(now, "no healthy decode instance within the hold time")
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
            if oldest.arrival_s + sbs_timing.hold_s(state.instances, self.batching) > now:
                break
            live = [i for i, st in enumerate(state.instances) if st.available]
            if not live:
                out.extend(self._reject_stale(now, "no healthy prefill instance within the hold time"))
                break
            first = min(live, key=lambda i: (state.instances[i].busy_until_s, i))
            sent = self._release_to(first, now, "max_hold")
            if not sent:
                break
            state.stats.forced_releases += 1
            out.extend(sent)
        return out

    # -- timing -----------------------------------------------------------------------------------

    def interval_s(self) -> float:
        """Adaptive release interval: measured step time over the instances sharing the load."""
        return sbs_timing.interval_s(self.state.instances, self.batching)

    def _idle_from(self) -> float:
        """When idle instances may take work: at once under the bypass, else one interval after the
        oldest buffered arrival (a plain fixed-window batcher)."""
        if self.batching.bypass:
            return -math.inf
        return next(iter(self.buffer.values())).arrival_s + self.interval_s()

    def _due_instance(self, now: float, tried: set[int]) -> int | None:
        """The instance due now whose step ends first (ties: lowest index), if any."""
        idle_from = self._idle_from()
        lead = self.batching.lead_s
        best: tuple[float, int] | None = None
        for i, st in enumerate(self.state.instances):
            if i not in tried and sbs_timing.release_time(st, lead_s=lead, idle_from=idle_from) <= now:
                key = (st.busy_until_s, i)
                if best is None or key < best:
                    best = key
        return None if best is None else best[1]

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
        chunk = max(1, int(spec.chunk_tokens * self.batching.fill_target))
        committed = st.committed_next()
        ctok = [0] * spec.dp_size
        cpairs = [0.0] * spec.dp_size
        for r, (tok, done, _) in committed.items():
            ctok[r] = tok
            cpairs[r] = PrefillCapacityModel.pairs(int(done), tok)
        full = chunk
        buffer = self.buffer
        queue, qtok = self._queue, self._queue_tokens
        if reason == "max_hold":  # the requests over the hold go first, whatever their size
            late = now - sbs_timing.hold_s(state.instances, self.batching)
            by = sorted(range(len(queue)), key=lambda i: buffer[queue[i][1]].arrival_s > late)
            queue = [queue[i] for i in by]
            qtok = [qtok[i] for i in by]
        if self.batching.level_fill:
            chunk = sbs_timing.fill_level(
                chunk, head_tokens=qtok[0], committed=ctok, buffered_tokens=self._buffer_tokens
            )
        room = sum(max(chunk - t, 0) for t in ctok)
        # A request above the step's level waits for a step whose level it sets (never once oldest).
        level = chunk if chunk < full else None
        credits: list[dict[int, int] | None] | None = None
        if self.prefix is None or not self._hashed:
            take: Sequence[int] = take_in_order(qtok, room, spec.dp_size, level)
        else:
            take, credits, wake = self._take_with_credit(p, now, queue, qtok, room, level)
            if not take:
                # Everything buffered waits for the instances caching its prefixes: look again when the
                # first of them is due (or a new request arrives), not in a loop.
                st.deferred_until_s = max(wake, now + self.batching.min_interval_s)
                return []
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
            prompts = tokens
        else:
            self._sync_queue()
            prompts = [r.prompt_tokens for r in reqs]
        self._buffer_tokens -= sum(prompts)
        frac = self.settings.decode.output_kv_fraction
        if frac:
            kvs = [r.prompt_tokens + 1 + int(frac * r.output_tokens) for r in reqs]
        else:
            kvs = list(map(add, prompts, repeat(1)))
        flat = self._decode_plan(placed, kvs)
        d_instances = list(map(state.decode.instance_of.__getitem__, flat))
        d_ranks = list(map(state.decode.rank_of.__getitem__, flat))
        ranks = plan.ranks
        uncached = list(map(add, plan.step_tokens, plan.remaining_tokens))
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
            zip(placed, map(Flight, repeat(p), ranks, uncached, d_instances, d_ranks, kvs), strict=True)
        )
        state.prefill.add_many(list(map(add, ranks, repeat(st.offset))), uncached, now)
        state.decode.add_many(flat, kvs, now)
        state.stats.releases += 1
        state.stats.released_requests += len(placed)
        return dispatches(placed, p, ranks, d_instances, d_ranks, reason)

    def _take_with_credit(
        self,
        p: int,
        now: float,
        queue: list[tuple[float, int]],
        qtok: list[int],
        room: int,
        level: int | None,
    ) -> tuple[list[int], list[dict[int, int] | None] | None, float]:
        """`take_in_order` where requests carry prefix hashes: a request whose prefix another instance
        caches may wait for it (`_cached_elsewhere`; the earliest such wait is returned), and the others
        get per-rank cache credit on this instance."""
        st = self.state.instances[p]
        ranks = range(st.offset, st.offset + st.spec.dp_size)
        prefix = self.prefix
        assert prefix is not None
        take: list[int] = []
        credits: list[dict[int, int] | None] = []
        any_credit = False
        taken = 0
        wake = math.inf
        for i, (_, rid) in enumerate(queue):
            if taken >= room and len(take) >= st.spec.dp_size:
                break
            tokens = qtok[i]
            if take and level is not None and tokens > level:
                continue
            req = self.buffer[rid]
            credit = None
            if req.hash_ids:  # else _cached_elsewhere is None
                wait_for = self._cached_elsewhere(req, p, now)
                if wait_for is not None:  # another instance holds its prefix and frees before a recompute
                    wake = min(wake, wait_for)
                    continue
                matched = prefix.matched_blocks(req.hash_ids, ranks)
                if matched:
                    bt = self.block_tokens or 0
                    credit = {
                        flat - st.offset: min(blocks * bt, tokens - 1) for flat, blocks in matched.items()
                    }
                    any_credit = True
            take.append(i)
            credits.append(credit)
            taken += tokens
        return take, credits if any_credit else None, wake

    def _cached_elsewhere(self, req: Request, p: int, now: float) -> float | None:
        """When `req` should rather go to another instance caching more of its prefix: that instance's
        due time; None if it should go here.

        It waits when that instance is predicted free sooner than the prefill the cache saves would
        take (`per_token·Δcached + per_pair·Δ(cached²)`), so cache affinity never costs more latency
        than it saves, and never past half the hold time.
        """
        state = self.state
        if self.prefix is None or not req.hash_ids or not self.block_tokens:
            return None
        if now - req.arrival_s >= 0.5 * sbs_timing.hold_s(state.instances, self.batching):
            return None
        matched = self.prefix.matched_blocks(req.hash_ids, range(len(state.prefill.count)))
        if not matched:
            return None
        st = state.instances[p]
        here = max((b for f, b in matched.items() if st.offset <= f < st.offset + st.spec.dp_size), default=0)
        flat, there = max(matched.items(), key=lambda kv: (kv[1], -kv[0]))
        if there <= here:
            return None
        other = state.instances[state.prefill_ref(flat).instance]
        if not other.available:
            return None
        cap = req.prompt_tokens - 1
        c_here = min(here * self.block_tokens, cap)
        c_there = min(there * self.block_tokens, cap)
        saved = state.capacity.per_token_s * (c_there - c_here) + state.capacity.per_pair_s * (
            float(c_there) ** 2 - float(c_here) ** 2
        )
        due = max(other.busy_until_s - self.batching.lead_s, other.deferred_until_s, now)
        return due if due - now < saved else None

    def _decode_plan(self, rids: list[int], kvs: list[int]) -> list[int]:
        """Each request's decode rank (flat index)."""
        state = self.state
        d = self.settings.decode
        counters = state.decode
        flat, masked = assign_decode_ranks(
            rids,
            kvs,
            counters.count,
            counters.tokens,
            state.decode_cap,
            state.decode_max_running,
            state.decode_available(),
            iqr_k=d.iqr_k,
            min_candidates=d.min_candidates,
        )
        state.stats.masked_ranks += masked
        if min(flat) < 0:  # decode is full: wait in the emptiest healthy rank's queue, as SGLang does
            tokens = list(counters.tokens)
            for f, kv in zip(flat, kvs, strict=True):
                if f >= 0:
                    tokens[f] += kv
            live = state.decode_live()
            for i in sorted((i for i, f in enumerate(flat) if f < 0), key=lambda i: (-kvs[i], rids[i])):
                f = min(live, key=lambda j: (tokens[j], j))
                tokens[f] += kvs[i]
                flat[i] = f
        return flat


def take_in_order(tokens: Sequence[int], room: int, min_count: int, level: int | None) -> Sequence[int]:
    """Queue positions a release takes, in order, when no request waits for another instance's cache:
    requests (their prompt `tokens`, in release order) until the taken tokens reach `room` and there
    are at least `min_count` of them; with a `level`, the ones above it are skipped, except the first."""
    n = len(tokens)
    take: Sequence[int] = range(n)
    sizes = tokens
    if level is not None:
        take = [0, *compress(range(1, n), map(le, islice(tokens, 1, None), repeat(level)))]
        sizes = list(map(tokens.__getitem__, take))
    reached = bisect_left(list(accumulate(sizes)), room) + 1 if room > 0 else 0
    return take[: max(reached, min_count)]
