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
from bisect import insort

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.decode_alloc import assign_decode_lists
from sbs.scheduler.core.policies import sbs_timing
from sbs.scheduler.core.prefill_alloc import water_fill_lists
from sbs.scheduler.core.prefix_index import PrefixIndex
from sbs.scheduler.core.state import Carry, ClusterState, Flight
from sbs.scheduler.core.types import Decision, Dispatch, RankRef, Reject, Request
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
        self._buffer_tokens = 0
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
        insort(self._queue, (key, req.rid))
        self._buffer_tokens += req.prompt_tokens
        return []

    def cancel(self, rid: int) -> bool:
        req = self.buffer.pop(rid, None)
        if req is None:
            return False
        self._buffer_tokens -= req.prompt_tokens
        self._queue = [e for e in self._queue if e[1] != rid]
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
            self.state.stats.rejected += 1
            out.append(Reject(oldest.rid, why, retryable=True))
        if out:
            self._queue = [e for e in self._queue if e[1] in self.buffer]
        return out

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
        ranks = range(st.offset, st.offset + spec.dp_size)
        full = chunk
        if self.batching.level_fill:
            head = self.buffer[self._queue[0][1]].prompt_tokens
            chunk = sbs_timing.fill_level(
                chunk, head_tokens=head, committed=ctok, buffered_tokens=self._buffer_tokens
            )
        room = sum(max(chunk - t, 0) for t in ctok)
        rids: list[int] = []
        tokens: list[int] = []
        credits: list[dict[int, int] | None] = []
        any_credit = False
        taken = 0
        wake = math.inf
        prefix = self.prefix
        buffer = self.buffer
        queue = self._queue
        if reason == "max_hold":  # the requests over the hold go first, whatever their size
            late = now - sbs_timing.hold_s(state.instances, self.batching)
            queue = sorted(queue, key=lambda e: buffer[e[1]].arrival_s > late)
        for _, rid in queue:
            req = buffer[rid]
            if taken >= room and len(rids) >= spec.dp_size:
                break
            if rids and chunk < full and req.prompt_tokens > chunk:
                continue  # waits for a step whose level it sets (it is never skipped once oldest)
            credit = None
            if prefix is not None and req.hash_ids:  # else _cached_elsewhere is None
                wait_for = self._cached_elsewhere(req, p, now)
                if wait_for is not None:  # another instance holds its prefix and frees before a recompute
                    wake = min(wake, wait_for)
                    continue
                matched = prefix.matched_blocks(req.hash_ids, ranks)
                if matched:
                    bt = self.block_tokens or 0
                    credit = {
                        flat - st.offset: min(blocks * bt, req.prompt_tokens - 1)
                        for flat, blocks in matched.items()
                    }
                    any_credit = True
            rids.append(req.rid)
            tokens.append(req.prompt_tokens)
            credits.append(credit)
            taken += req.prompt_tokens
        if not rids:
            # Everything buffered waits for the instances caching its prefixes: look again when the
            # first of them is due (or a new request arrives), not in a loop.
            st.deferred_until_s = max(wake, now + self.batching.min_interval_s)
            return []
        plan = water_fill_lists(
            rids,
            tokens,
            ctok,
            cpairs,
            credits=credits if any_credit else None,
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
        pop = self.buffer.pop
        reqs = [pop(rid) for rid in plan.rids]
        self._queue = [e for e in self._queue if e[1] in buffer]
        self._buffer_tokens -= sum(r.prompt_tokens for r in reqs)
        frac = self.settings.decode.output_kv_fraction
        kvs = [r.prompt_tokens + 1 + int(frac * r.output_tokens) for r in reqs]
        decode_ranks = self._decode_plan(plan.rids, kvs)
        out: list[Decision] = []
        flights = state.flights
        uncached_of: list[int] = []
        d_instances: list[int] = []
        d_ranks: list[int] = []
        columns = zip(
            plan.rids,
            plan.ranks,
            plan.step_tokens,
            plan.remaining_tokens,
            plan.cached_tokens,
            reqs,
            kvs,
            strict=True,
        )
        for rid, rank, step, rest, cached, req, kv in columns:
            if rest > 0:
                st.carries[rank] = Carry(rid, rank, rest, cached + step)
            uncached = step + rest
            uncached_of.append(uncached)
            if prefix is not None and req.hash_ids:
                prefix.insert(st.offset + rank, req.hash_ids)
            dref = decode_ranks[rid]
            di = dref.instance
            dr = dref.rank
            d_instances.append(di)
            d_ranks.append(dr)
            flights[rid] = Flight(p, rank, uncached, di, dr, kv)
            out.append(Dispatch(rid, p, rank, di, dr, reason))
        state.prefill.add_many([p] * len(out), plan.ranks, 1, uncached_of, now)
        state.decode.add_many(d_instances, d_ranks, 1, kvs, now)
        state.stats.releases += 1
        state.stats.released_requests += len(out)
        return out

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

    def _decode_plan(self, rids: list[int], kvs: list[int]) -> dict[int, RankRef]:
        state = self.state
        d = self.settings.decode
        plan = assign_decode_lists(
            rids,
            kvs,
            state.decode.count,
            state.decode.tokens,
            state.decode_cap,
            state.decode_max_running,
            state.decode_available(),
            state.decode_refs,
            iqr_k=d.iqr_k,
            min_candidates=d.min_candidates,
            refs_sorted=True,
        )
        state.stats.masked_ranks += plan.masked_ranks
        chosen = dict(plan.assignments)
        if plan.unplaced:  # decode is full: wait in the emptiest healthy rank's queue, as SGLang does
            kv_of = dict(zip(rids, kvs, strict=True))
            tokens = list(state.decode.tokens)
            for rid, ref in plan.assignments:
                tokens[state.decode.offsets[ref.instance] + ref.rank] += kv_of[rid]
            live = state.decode_live()
            for rid in plan.unplaced:
                flat = min(live, key=lambda i: (tokens[i], i))
                tokens[flat] += kv_of[rid]
                chosen[rid] = state.decode_refs[flat]
        return chosen
