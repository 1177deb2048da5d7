"""The scheduling core: `decisions = sched.handle(event, now)`; `sched.next_deadline()` says when to
call back. Pure and deterministic: no IO, no clock, randomness from a seeded `random.Random`.

Two families of policy share the state model and the interfaces:
- `sbs`: requests are buffered and released per prefill instance just before the instance's predicted
  free time (rules in `batcher`), in a size-aware order, water-filled over its DP ranks
  (`prefill_alloc`), each paired with a decode rank by the IQR-masked lexicographic rule
  (`decode_alloc`). An idle instance gets work at once (low-load bypass). A request held past the hold
  time is forced out to the instance that frees first, or, when no instance is usable at all, gets an
  explicit retryable `Reject`.
- immediate baselines (`round_robin`, `random`, `least_load`, `power_of_two`, `sglang`): every request
  is dispatched the moment it arrives; the engines queue what they cannot start.
"""

from __future__ import annotations

import math
import random
from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat

from sbs.scheduler.core import batcher, config, policies
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.decode_alloc import assign_decode_lists
from sbs.scheduler.core.prefill_alloc import water_fill_lists
from sbs.scheduler.core.prefix_index import PrefixIndex
from sbs.scheduler.core.state import Carry, PrefillInstanceState, RankCounters
from sbs.scheduler.core.types import (
    Decision,
    Dispatch,
    EngineHealth,
    Event,
    InstanceSpec,
    LoadReported,
    RankRef,
    Reject,
    Request,
    RequestArrived,
    RequestCancelled,
    RequestFinished,
    Role,
    StepCompleted,
)


@dataclass(slots=True)
class _Flight:
    """A dispatched request the scheduler still accounts for."""

    prefill_instance: int
    prefill_rank: int | None
    prefill_tokens: int
    decode_instance: int
    decode_rank: int | None
    kv_tokens: int
    prefilled: bool = False


@dataclass(slots=True)
class SchedulerStats:
    """Counters for metrics (the core never logs; callers export these)."""

    releases: int = 0
    released_requests: int = 0
    bypass_releases: int = 0
    forced_releases: int = 0
    masked_ranks: int = 0
    rejected: int = 0
    cancelled: int = 0


class Scheduler:
    """One scheduler over a fixed set of prefill and decode instances."""

    def __init__(
        self,
        prefill: Sequence[InstanceSpec],
        decode: Sequence[InstanceSpec],
        *,
        settings: config.SchedulerSettings,
        capacity: PrefillCapacityModel,
        block_tokens: int | None = None,
    ) -> None:
        if not prefill or not decode:
            raise ValueError("a scheduler needs at least one prefill and one decode instance")
        self.settings = settings
        self.policy = settings.policy
        self.capacity = capacity
        self.block_tokens = block_tokens
        self.rng = random.Random(settings.seed)
        self.prefill_specs = list(prefill)
        self.decode_specs = list(decode)
        self.prefill = RankCounters(self.prefill_specs, settings.sync.transit_s)
        self.decode = RankCounters(self.decode_specs, settings.sync.transit_s)
        self.instances = [
            PrefillInstanceState(spec=s, offset=o) for s, o in zip(prefill, self.prefill.offsets, strict=True)
        ]
        self.decode_healthy = [True] * len(self.decode_specs)
        self.decode_refs = [RankRef(i, r) for i, s in enumerate(self.decode_specs) for r in range(s.dp_size)]
        self._decode_cap = [s.kv_capacity_tokens for s in self.decode_specs for _ in range(s.dp_size)]
        self._decode_max_running = [
            s.max_running_requests for s in self.decode_specs for _ in range(s.dp_size)
        ]
        self.max_prompt_tokens = max(s.kv_capacity_tokens for s in self.decode_specs) - 1
        self.buffer: dict[int, Request] = {}
        """Buffered requests in arrival order (the hold guard looks at the oldest)."""
        self._queue: list[tuple[float, int]] = []
        """(priority key, rid) of the buffered requests, sorted: the order releases take them in."""
        self._buffer_tokens = 0
        self.flights: dict[int, _Flight] = {}
        self.stats = SchedulerStats()
        self._rr_decode = 0
        self._rr_instance = 0
        self._live_cache: tuple[tuple[bool, ...], list[int]] = ((), [])
        self._decode_live_cache: tuple[tuple[bool, ...], list[int]] = ((), [])
        self._pickers: tuple[policies.RankPicker, policies.RankPicker] | None = None
        if self.policy.type in policies.PICKERS:  # prefill and decode legs are picked independently
            self._pickers = (
                policies.make_picker(self.policy, self.rng),
                policies.make_picker(self.policy, self.rng),
            )
        self._sbs = isinstance(self.policy, config.SbsPolicy)
        self.prefix: PrefixIndex | None = None
        if self._sbs and self.policy.prefix_credit and block_tokens:
            caps = [
                s.kv_capacity_tokens // block_tokens for s in self.prefill_specs for _ in range(s.dp_size)
            ]
            self.prefix = PrefixIndex(len(caps), caps)

    # -- entry points ---------------------------------------------------------------------------

    def handle(self, event: Event | None, now: float) -> list[Decision]:
        """Apply one event (or just the passage of time, `event=None`) and return the decisions."""
        match event:
            case RequestArrived(request=req):
                if req.prompt_tokens > self.max_prompt_tokens:
                    self.stats.rejected += 1
                    return [
                        Reject(
                            req.rid,
                            f"prompt of {req.prompt_tokens} tokens exceeds the largest decode rank's KV "
                            f"capacity ({self.max_prompt_tokens + 1} tokens)",
                        )
                    ]
                if not self._sbs:
                    return [self._dispatch_now(req, now)]
                self.buffer[req.rid] = req
                key = batcher.priority_key(
                    req.arrival_s, req.prompt_tokens, self.capacity, self.policy.batching
                )
                insort(self._queue, (key, req.rid))
                self._buffer_tokens += req.prompt_tokens
            case StepCompleted():
                self._on_step(event, now)
            case LoadReported():
                self._on_loads(event, now)
            case RequestFinished(rid=rid, finished_s=at):
                self._on_finished(rid, now, at)
            case RequestCancelled(rid=rid):
                self.stats.cancelled += 1
                req = self.buffer.pop(rid, None)
                if req is None:
                    self._on_finished(rid, now, None)
                else:
                    self._buffer_tokens -= req.prompt_tokens
                    self._queue = [e for e in self._queue if e[1] != rid]
            case EngineHealth(role=role, instance=i, healthy=ok):
                if role is Role.PREFILL:
                    self.instances[i].healthy = ok
                else:
                    self.decode_healthy[i] = ok
            case None:
                pass
        return self._release(now) if self._sbs else []

    def next_deadline(self) -> float | None:
        """When the caller must call `handle(None, t)` next, or None if only events can help."""
        if not self._sbs or not self.buffer:
            return None
        hold = batcher.hold_s(self.instances, self.policy.batching)
        deadline = next(iter(self.buffer.values())).arrival_s + hold
        if not any(st.available for st in self.instances) or not any(self.decode_healthy):
            return deadline + hold  # then reject what is still held, retryable
        idle_from = self._idle_from()
        lead = self.policy.batching.lead_s
        return min(
            deadline, *(batcher.release_time(st, lead_s=lead, idle_from=idle_from) for st in self.instances)
        )

    def interval_s(self) -> float:
        """Adaptive release interval: measured step time over the instances sharing the load."""
        b = self.policy.batching if self._sbs else config.BatchingSettings()
        return batcher.interval_s(self.instances, b)

    def _idle_from(self) -> float:
        """When idle instances may take work: at once under the bypass, else one interval after the
        oldest buffered arrival (a plain fixed-window batcher)."""
        if self.policy.batching.bypass:
            return -math.inf
        return next(iter(self.buffer.values())).arrival_s + self.interval_s()

    # -- reports --------------------------------------------------------------------------------

    def _on_step(self, ev: StepCompleted, now: float) -> None:
        st = self.instances[ev.instance]
        st.last_heard_s = now
        st.suspect = False
        alpha = self.policy.batching.ewma_alpha if self._sbs else 0.2
        st.step_ewma_s = (
            ev.duration_s if st.step_ewma_s == 0.0 else ((1 - alpha) * st.step_ewma_s + alpha * ev.duration_s)
        )
        end = ev.started_s + ev.duration_s
        if st.planned and st.planned[0][0] <= ev.started_s:
            _, predicted = st.planned.popleft()
            if predicted > 0:
                ratio = min(max(ev.duration_s * st.error_ewma / predicted, 0.25), 4.0)
                st.error_ewma = (1 - alpha) * st.error_ewma + alpha * ratio
        for rid in ev.finished_rids:
            flight = self.flights.get(rid)
            if flight is None or flight.prefilled:
                continue
            flight.prefilled = True
            if flight.prefill_rank is None:
                st.unpinned_tokens -= flight.prefill_tokens
            else:
                self.prefill.add(
                    flight.prefill_instance, flight.prefill_rank, -1, -flight.prefill_tokens, now, seen_at=end
                )
        if not ev.next_step_queued:
            # The engine went idle. Steps sent after it ended (still in transit) will start on arrival.
            cutoff = end - self.settings.sync.transit_s
            while st.planned and st.planned[0][0] <= cutoff:
                st.planned.popleft()
            if not st.planned:
                st.carries.clear()
            st.busy_until_s = max(end, st.planned[0][0] if st.planned else end) + st.planned_total_s()
            return
        if not st.planned:
            # The engine started a step nobody released (a chunked prompt continuing): predict it.
            st.planned.append((ev.started_s, self._plan_carry_only(st)))
        st.busy_until_s = end + st.planned_total_s()

    def _on_loads(self, ev: LoadReported, now: float) -> None:
        if ev.role is Role.PREFILL:
            st = self.instances[ev.instance]
            st.last_heard_s = now
            self.prefill.reconcile(ev.instance, ev.snapshot_s, ev.loads, _waiting_tokens)
            if st.suspect:
                # Alive: re-admit it, and re-base the prediction on what the snapshot shows.
                st.suspect = False
                if all(load.num_waiting_reqs == 0 for load in ev.loads):
                    st.planned.clear()
                    st.carries.clear()
                    st.busy_until_s = ev.snapshot_s
                else:
                    st.busy_until_s = max(st.busy_until_s, now + st.step_ewma_s)
        else:
            self.decode.reconcile(ev.instance, ev.snapshot_s, ev.loads, _used_tokens)

    def _on_finished(self, rid: int, now: float, at: float | None) -> None:
        flight = self.flights.pop(rid, None)
        if flight is None:
            return
        if not flight.prefilled:  # aborted before its prefill completed
            if flight.prefill_rank is None:
                self.instances[flight.prefill_instance].unpinned_tokens -= flight.prefill_tokens
            else:
                self.prefill.add(
                    flight.prefill_instance, flight.prefill_rank, -1, -flight.prefill_tokens, now, seen_at=at
                )
        if flight.decode_rank is not None:
            self.decode.add(
                flight.decode_instance, flight.decode_rank, -1, -flight.kv_tokens, now, seen_at=at
            )

    # -- SBS: staggered release -----------------------------------------------------------------

    def _release(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        if not self.buffer:
            return out
        batcher.mark_suspects(self.instances, now, self.settings.sync.suspect_overrun)
        if not any(self.decode_healthy):  # nowhere to decode: hold, then reject retryable
            return self._reject_stale(now, "no healthy decode instance within the hold time")
        tried: set[int] = set()
        while self.buffer:
            p = self._due_instance(now, tried)
            if p is None:
                break
            tried.add(p)
            st = self.instances[p]
            reason = "bypass" if st.idle(now) else "staggered"
            if reason == "bypass":
                self.stats.bypass_releases += 1
            out.extend(self._release_to(p, now, reason))
        while self.buffer:
            oldest = next(iter(self.buffer.values()))
            if oldest.arrival_s + batcher.hold_s(self.instances, self.policy.batching) > now:
                break
            live = [i for i, st in enumerate(self.instances) if st.available]
            if not live:
                out.extend(self._reject_stale(now, "no healthy prefill instance within the hold time"))
                break
            first = min(live, key=lambda i: (self.instances[i].busy_until_s, i))
            sent = self._release_to(first, now, "max_hold")
            if not sent:
                break
            self.stats.forced_releases += 1
            out.extend(sent)
        return out

    def _reject_stale(self, now: float, why: str) -> list[Decision]:
        """No prefill (or no decode) instance is usable: requests held twice the hold get an explicit,
        retryable error instead of waiting forever (an accepted request completes or is told to retry)."""
        out: list[Decision] = []
        limit = 2.0 * batcher.hold_s(self.instances, self.policy.batching)
        while self.buffer:
            oldest = next(iter(self.buffer.values()))
            if oldest.arrival_s + limit > now:
                break
            del self.buffer[oldest.rid]
            self._buffer_tokens -= oldest.prompt_tokens
            self.stats.rejected += 1
            out.append(Reject(oldest.rid, why, retryable=True))
        if out:
            self._queue = [e for e in self._queue if e[1] in self.buffer]
        return out

    def _due_instance(self, now: float, tried: set[int]) -> int | None:
        """The instance due now whose step ends first (ties: lowest index), if any."""
        idle_from = self._idle_from()
        lead = self.policy.batching.lead_s
        best: tuple[float, int] | None = None
        for i, st in enumerate(self.instances):
            if i not in tried and batcher.release_time(st, lead_s=lead, idle_from=idle_from) <= now:
                key = (st.busy_until_s, i)
                if best is None or key < best:
                    best = key
        return None if best is None else best[1]

    def _release_to(self, p: int, now: float, reason: str) -> list[Decision]:
        st = self.instances[p]
        spec = st.spec
        chunk = max(1, int(spec.chunk_tokens * self.policy.batching.fill_target))
        committed = st.committed_next()
        ctok = [0] * spec.dp_size
        cpairs = [0.0] * spec.dp_size
        for r, (tok, done, _) in committed.items():
            ctok[r] = tok
            cpairs[r] = PrefillCapacityModel.pairs(int(done), tok)
        ranks = range(st.offset, st.offset + spec.dp_size)
        full = chunk
        if self.policy.batching.level_fill:
            head = self.buffer[self._queue[0][1]].prompt_tokens
            chunk = batcher.fill_level(
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
            late = now - batcher.hold_s(self.instances, self.policy.batching)
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
            st.deferred_until_s = max(wake, now + self.policy.batching.min_interval_s)
            return []
        plan = water_fill_lists(
            rids,
            tokens,
            ctok,
            cpairs,
            credits=credits if any_credit else None,
            chunk_tokens=chunk,
            model=self.capacity,
            allow_chunking=True,
        )
        if not plan.rids:
            if committed and len(st.planned) == 1:  # every rank is busy with a chunked prompt
                st.planned.append((now, self._plan_carry_only(st)))
                st.busy_until_s += st.planned[-1][1]
            return []
        # Advance the carries that this step consumes, then record the new ones.
        for r, (tok, _, carry) in committed.items():
            carry.remaining -= tok
            carry.done += tok
            if carry.remaining <= 0:
                del st.carries[r]
        predicted = plan.step_s * st.error_ewma
        st.planned.append((now, predicted))
        st.busy_until_s = max(st.busy_until_s, now) + predicted
        pop = self.buffer.pop
        reqs = [pop(rid) for rid in plan.rids]
        self._queue = [e for e in self._queue if e[1] in buffer]
        self._buffer_tokens -= sum(r.prompt_tokens for r in reqs)
        frac = self.policy.decode.output_kv_fraction
        kvs = [r.prompt_tokens + 1 + int(frac * r.output_tokens) for r in reqs]  # as _kv_estimate
        decode_ranks = self._decode_plan(plan.rids, kvs)
        out: list[Decision] = []
        flights = self.flights
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
            flights[rid] = _Flight(p, rank, uncached, di, dr, kv)
            out.append(Dispatch(rid, p, rank, di, dr, reason))
        self.prefill.add_many([p] * len(out), plan.ranks, 1, uncached_of, now)
        self.decode.add_many(d_instances, d_ranks, 1, kvs, now)
        self.stats.releases += 1
        self.stats.released_requests += len(out)
        return out

    def _cached_elsewhere(self, req: Request, p: int, now: float) -> float | None:
        """When `req` should rather go to another instance caching more of its prefix: that instance's
        due time; None if it should go here.

        It waits when that instance is predicted free sooner than the prefill the cache saves would
        take (`per_token·Δcached + per_pair·Δ(cached²)`), so cache affinity never costs more latency
        than it saves, and never past half the hold time.
        """
        if self.prefix is None or not req.hash_ids or not self.block_tokens:
            return None
        if now - req.arrival_s >= 0.5 * batcher.hold_s(self.instances, self.policy.batching):
            return None
        matched = self.prefix.matched_blocks(req.hash_ids, range(len(self.prefill.count)))
        if not matched:
            return None
        st = self.instances[p]
        here = max((b for f, b in matched.items() if st.offset <= f < st.offset + st.spec.dp_size), default=0)
        flat, there = max(matched.items(), key=lambda kv: (kv[1], -kv[0]))
        if there <= here:
            return None
        other = self.instances[self._prefill_ref(flat).instance]
        if not other.available:
            return None
        cap = req.prompt_tokens - 1
        c_here = min(here * self.block_tokens, cap)
        c_there = min(there * self.block_tokens, cap)
        saved = self.capacity.per_token_s * (c_there - c_here) + self.capacity.per_pair_s * (
            float(c_there) ** 2 - float(c_here) ** 2
        )
        due = max(other.busy_until_s - self.policy.batching.lead_s, other.deferred_until_s, now)
        return due if due - now < saved else None

    def _plan_carry_only(self, st: PrefillInstanceState) -> float:
        committed = st.committed_next()
        tokens = [0] * st.spec.dp_size
        pairs = [0.0] * st.spec.dp_size
        for r, (tok, done, carry) in committed.items():
            tokens[r] = tok
            pairs[r] = PrefillCapacityModel.pairs(int(done), tok)
            carry.remaining -= tok
            carry.done += tok
            if carry.remaining <= 0:
                del st.carries[r]
        predicted = self.capacity.step_s(tokens, pairs) * st.error_ewma
        return predicted if predicted > 0 else st.step_ewma_s

    def _kv_estimate(self, req: Request) -> int:
        frac = self.policy.decode.output_kv_fraction if self._sbs else 0.0
        return req.prompt_tokens + 1 + int(frac * req.output_tokens)

    def _decode_plan(self, rids: list[int], kvs: list[int]) -> dict[int, RankRef]:
        healthy = zip(self.decode_healthy, self.decode_specs, strict=True)
        available = list(chain.from_iterable(repeat(ok, spec.dp_size) for ok, spec in healthy))
        d = self.policy.decode
        plan = assign_decode_lists(
            rids,
            kvs,
            self.decode.count,
            self.decode.tokens,
            self._decode_cap,
            self._decode_max_running,
            available,
            self.decode_refs,
            iqr_k=d.iqr_k,
            min_candidates=d.min_candidates,
            refs_sorted=True,
        )
        self.stats.masked_ranks += plan.masked_ranks
        chosen = dict(plan.assignments)
        if plan.unplaced:  # decode is full: wait in the emptiest healthy rank's queue, as SGLang does
            kv_of = dict(zip(rids, kvs, strict=True))
            tokens = list(self.decode.tokens)
            for rid, ref in plan.assignments:
                tokens[self.decode.offsets[ref.instance] + ref.rank] += kv_of[rid]
            live = self._decode_live()
            for rid in plan.unplaced:
                flat = min(live, key=lambda i: (tokens[i], i))
                tokens[flat] += kv_of[rid]
                chosen[rid] = self.decode_refs[flat]
        return chosen

    # -- immediate dispatch baselines ------------------------------------------------------------

    def _dispatch_now(self, req: Request, now: float) -> Decision:
        if not any(self.decode_healthy) or not any(st.available for st in self.instances):
            self.stats.rejected += 1
            side = "decode" if not any(self.decode_healthy) else "prefill"
            return Reject(req.rid, f"no healthy {side} instance", retryable=True)
        kv = self._kv_estimate(req)
        if isinstance(self.policy, config.SglangPolicy):
            p = self._next_instance([st.available for st in self.instances], "_rr_instance")
            d = self._next_instance(self.decode_healthy, "_rr_decode")
            self.instances[p].unpinned_tokens += req.prompt_tokens
            self.flights[req.rid] = _Flight(p, None, req.prompt_tokens, d, None, kv)
            return Dispatch(req.rid, p, None, d, None, "immediate")
        assert self._pickers is not None
        pflat = self._pickers[0].pick(self._prefill_live(), self.prefill.tokens)
        dflat = self._pickers[1].pick(self._decode_live(), self.decode.tokens)
        pref = self._prefill_ref(pflat)
        dref = self.decode_refs[dflat]
        self.prefill.add(pref.instance, pref.rank, 1, req.prompt_tokens, now)
        self.decode.add(dref.instance, dref.rank, 1, kv, now)
        self.flights[req.rid] = _Flight(
            pref.instance, pref.rank, req.prompt_tokens, dref.instance, dref.rank, kv
        )
        return Dispatch(req.rid, pref.instance, pref.rank, dref.instance, dref.rank, "immediate")

    def _next_instance(self, available: list[bool], rr_attr: str) -> int:
        n = len(available)
        start = getattr(self, rr_attr)
        for k in range(n):
            i = (start + k) % n
            if available[i]:
                setattr(self, rr_attr, i + 1)
                return i
        setattr(self, rr_attr, start + 1)
        return start % n

    def _prefill_live(self) -> list[int]:
        key = tuple(st.available for st in self.instances)
        if self._live_cache[0] != key:
            live = [st.offset + r for st in self.instances if st.available for r in range(st.spec.dp_size)]
            self._live_cache = (key, live or list(range(len(self.prefill.count))))
        return self._live_cache[1]

    def _decode_live(self) -> list[int]:
        key = tuple(self.decode_healthy)
        if self._decode_live_cache[0] != key:
            live = [i for i, ref in enumerate(self.decode_refs) if self.decode_healthy[ref.instance]]
            self._decode_live_cache = (key, live or list(range(len(self.decode_refs))))
        return self._decode_live_cache[1]

    def _prefill_ref(self, flat: int) -> RankRef:
        for i, st in enumerate(self.instances):
            if st.offset <= flat < st.offset + st.spec.dp_size:
                return RankRef(i, flat - st.offset)
        raise IndexError(flat)


def _waiting_tokens(load) -> int:
    return load.num_waiting_uncached_tokens


def _used_tokens(load) -> int:
    return load.num_used_tokens
