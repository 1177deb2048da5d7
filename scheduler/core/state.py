"""The scheduler's model of the cluster: optimistic accounting corrected by engine reports.

Three tiers (the paper's multi-tier synchronisation):
1. every dispatch updates the local copy at once, so decisions within a round see each other;
2. prefill step completions (`StepCompleted`) correct the predicted free time of an instance and feed
   the step-time and prediction-error averages;
3. periodic per-rank snapshots (`LoadReported`, SGLang's `/v1/loads`) replace the counters; deltas the
   scheduler applied after the snapshot was taken (minus a transit margin) are re-applied on top, so a
   snapshot never erases dispatches the engine had not seen yet. A prefill snapshot also says which
   chunk each rank's long prompt is on (`chunk_sync`), and the carries are set to it.
A prefill instance that overruns its prediction by far, or an unhealthy one, is suspect and skipped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat

import numpy as np
from sbs.scheduler.core import chunk_sync, engine_steps
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.compiled import jit
from sbs.scheduler.core.events import LoadReported, StepCompleted
from sbs.scheduler.core.types import Carry, InstanceSpec, RankLoad, RankRef, Role

_LOG_LIMIT = 4096
_SAME_END_S = 1e-6
"""Reports of one step end at the same time to float rounding."""


class Revision:
    """A counter of changes to the prefill instances' state, shared by a `ClusterState`'s instances, so
    that a value derived from all of them (a policy's earliest release time) is recomputed only when one
    changed (and then only from the instances that did: `PrefillInstanceState.take_changed`)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


_LOOSE = Revision()
"""Counts the changes of no `ClusterState` (a field set in `__init__`, before `revision` is)."""


class _Steps(deque):  # type: ignore[type-arg]
    """`PrefillInstanceState.planned`: a deque whose changes count in its instance's `Revision` and set
    its own `changed`."""

    revision = _LOOSE
    changed = True

    def __reduce__(self) -> tuple[object, ...]:
        """Copies keep the items, the revision link and `changed` as they are (deque's own reduce
        refills the copy through the counted `extend`, so a copy read as changed)."""
        return (type(self), (list(self),), self.__dict__)


def _counted(name: str) -> Callable[..., object]:
    base = getattr(deque, name)

    def method(self: _Steps, *args: object) -> object:
        self.revision.n += 1
        self.changed = True
        return base(self, *args)

    method.__name__ = name
    return method


_MUTATORS = (
    "append appendleft extend extendleft pop popleft clear remove insert rotate __setitem__ __delitem__"
)
for _name in [*_MUTATORS.split(), "__iadd__"]:
    setattr(_Steps, _name, _counted(_name))


@dataclass(slots=True)
class PrefillInstanceState:
    """What the scheduler believes about one prefill instance.

    Every change of a field, or of `planned`, counts in `revision` and marks the instance changed
    (`take_changed`); changes inside `carries` do not."""

    spec: InstanceSpec
    offset: int
    """Flat index of rank 0 of this instance among all prefill ranks."""
    busy_until_s: float = 0.0
    planned: deque[tuple[float, float]] = field(default_factory=deque)
    """(sent at, predicted duration) of the steps sent and not yet reported complete, running first."""
    carries: dict[int, Carry] = field(default_factory=dict)
    """rank → chunked prompt continuing on it."""
    step_ewma_s: float = 0.0
    error_ewma: float = 1.0
    """Running ratio actual / predicted step time; multiplies new predictions."""
    healthy: bool = True
    suspect: bool = False
    last_heard_s: float = 0.0
    admission_s: float = 0.0
    """Running estimate of the dispatch → schedulable lag (quick to rise, slow to fall)."""
    step_dev: float = 0.0
    """Running mean of |actual / predicted − 1| step duration (how far off a predicted free time is,
    relative: a long step is off by more)."""
    reported_end_s: float = -math.inf
    """End of the latest step reported complete (a report ending no later only adds requests)."""
    guessed_end_s: float = -math.inf
    """End of the reported step after which the head planned step was guessed from work left
    behind alone (`engine_steps.next_step_s`); -inf: it was not."""
    deferred_until_s: float = 0.0
    """Not offered buffered work before this time (everything waits for cache affinity elsewhere)."""
    unpinned_tokens: int = 0
    """Outstanding tokens sent without a rank (the engine's own DP balancer places them)."""
    revision: Revision = field(default_factory=Revision, repr=False, compare=False)
    changed: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = _Steps(self.planned)
        steps.revision = self.revision
        self.planned = steps

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name != "changed":
            object.__setattr__(self, "changed", True)
            getattr(self, "revision", _LOOSE).n += 1

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        """Copies restore the fields as they were, not each counted as a change (`__setattr__`)."""
        for name, value in state[1].items():
            object.__setattr__(self, name, value)

    def take_changed(self) -> bool:
        """Whether the instance changed since the last call (for one reader: its policy's cache)."""
        steps = self.planned
        if not (self.changed or steps.changed):  # type: ignore[attr-defined]
            return False
        self.changed = steps.changed = False  # type: ignore[attr-defined]
        return True

    @property
    def available(self) -> bool:
        return self.healthy and not self.suspect

    def idle(self, now: float) -> bool:
        return not self.planned and self.busy_until_s <= now

    def planned_total_s(self) -> float:
        return sum(p for _, p in self.planned)

    def committed_next(self) -> dict[int, tuple[int, float, Carry]]:
        """Per rank, the chunk each carry puts into the next step: (tokens, prefix done, carry)."""
        chunk = self.spec.chunk_tokens
        return {r: (min(c.remaining, chunk), float(c.done), c) for r, c in self.carries.items()}

    def consume_carries(self, committed: dict[int, tuple[int, float, Carry]]) -> None:
        """Advance the carries by the chunks a step takes from them (`committed_next()`)."""
        for r, (tok, _, carry) in committed.items():
            carry.remaining -= tok
            carry.done += tok
            if carry.remaining <= 0:
                del self.carries[r]

    def plan_carry_only(self, capacity: PrefillCapacityModel) -> float:
        """Predict a step of nothing but the carries' next chunks, and consume them."""
        committed = self.committed_next()
        tokens = [0] * self.spec.dp_size
        pairs = [0.0] * self.spec.dp_size
        for r, (tok, done, _) in committed.items():
            tokens[r] = tok
            pairs[r] = PrefillCapacityModel.pairs(int(done), tok)
        self.consume_carries(committed)
        predicted = capacity.step_s(tokens, pairs) * self.error_ewma
        return predicted if predicted > 0 else self.step_ewma_s


@jit
def _per_rank(
    flat: np.ndarray, tokens: np.ndarray, offset: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The ranks `flat + offset` touch (ascending), with each one's request count and summed `tokens`;
    and the position of the first rank outside 0..n-1 (-1: none; nothing is summed then)."""
    for i in range(flat.shape[0]):
        if not 0 <= flat[i] + offset < n:
            empty = np.empty(0, np.int64)
            return empty, empty, empty, i
    count = np.zeros(n, np.int64)
    total = np.zeros(n, np.int64)
    for i in range(flat.shape[0]):
        r = flat[i] + offset
        count[r] += 1
        total[r] += tokens[i]
    touched = np.flatnonzero(count)
    return touched, count[touched], total[touched], -1


_EXACT = 1 << 53
"""Counters the int64 mirror keeps (`RankCounters.arrays`) stay below this in magnitude."""


class RankCounters:
    """Per-rank (count, tokens) counters of one role, reconciled with engine snapshots.

    `count` and `tokens` are written only through the methods here, which keep their int64 mirror
    (`arrays`) in step with them."""

    def __init__(self, specs: list[InstanceSpec], transit_s: float) -> None:
        self.offsets: list[int] = []
        self.instance_of: list[int] = []
        """Per flat rank index: its instance, and its rank within the instance (`rank_of`)."""
        self.rank_of: list[int] = []
        n = 0
        for i, spec in enumerate(specs):
            self.offsets.append(n)
            n += spec.dp_size
            self.instance_of += [i] * spec.dp_size
            self.rank_of += range(spec.dp_size)
        self.count = [0] * n
        self.tokens = [0] * n
        self.instance_of_a = np.array(self.instance_of, np.int64)
        self.rank_of_a = np.array(self.rank_of, np.int64)
        """`instance_of` and `rank_of` as int64 arrays (constant)."""
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._transit_s = transit_s
        # Bounded: without snapshots the log would grow forever; older entries are long seen.
        self._log: list[deque[tuple[float, int, int, int]]] = [deque(maxlen=_LOG_LIMIT) for _ in specs]

    def add(
        self, instance: int, rank: int, count: int, tokens: int, now: float, *, seen_at: float | None = None
    ) -> None:
        """Apply a delta. `seen_at` is when the engine's state reflects it: for a completion, the engine's
        own time of it; for a dispatch (default) the send time plus the transit margin."""
        i = self.offsets[instance] + rank
        self.count[i] += count
        self.tokens[i] += tokens
        if (mirror := self._arrays) is not None:
            c, t = self.count[i], self.tokens[i]
            if -_EXACT < c < _EXACT and -_EXACT < t < _EXACT:
                mirror[0][i], mirror[1][i] = c, t
            else:
                self._arrays = None
        self._log[instance].append(
            (now + self._transit_s if seen_at is None else seen_at, rank, count, tokens)
        )

    def add_many(
        self,
        flat: Sequence[int] | np.ndarray,
        tokens: Sequence[int] | np.ndarray,
        now: float,
        *,
        offset: int = 0,
    ) -> None:
        """`add` of one request each (count 1, `tokens[i]` tokens) on flat ranks `flat` (each plus
        `offset`), sent at `now` (one decision round), summed per rank (`_per_rank`): one log entry per
        rank the round touched. Either column may be an int64 array."""
        seen = now + self._transit_s
        n = len(flat)
        try:
            f = flat if isinstance(flat, np.ndarray) else np.fromiter(flat, np.int64, n)
            t = tokens if isinstance(tokens, np.ndarray) else np.fromiter(tokens, np.int64, n)
        except OverflowError:  # sizes beyond int64: request by request
            for i, tok in zip(flat, tokens, strict=True):
                self.add(self.instance_of[i + offset], self.rank_of[i + offset], 1, tok, now)
            return
        touched, per_count, per_tokens, bad = _per_rank(f, t, offset, len(self.count))
        if bad >= 0:
            raise IndexError(f"flat rank {int(f[bad]) + offset} out of range 0..{len(self.count) - 1}")
        counts, toks, logs, instance_of, rank_of = (
            self.count,
            self.tokens,
            self._log,
            self.instance_of,
            self.rank_of,
        )
        for i, c, tok in zip(touched.tolist(), per_count.tolist(), per_tokens.tolist(), strict=True):
            counts[i] += c
            toks[i] += tok
            logs[instance_of[i]].append((seen, rank_of[i], c, tok))
        if (mirror := self._arrays) is not None and len(touched):
            now_count, now_tokens = mirror[0][touched] + per_count, mirror[1][touched] + per_tokens
            mirror[0][touched], mirror[1][touched] = now_count, now_tokens
            if now_count.max() >= _EXACT or now_tokens.min() <= -_EXACT or now_tokens.max() >= _EXACT:
                self._arrays = None  # int64 sums may have wrapped: rebuilt from the lists when asked

    def arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """`count` and `tokens` as int64 arrays, kept in step with them (read them, never write them);
        None while a value is beyond +-2**53."""
        if self._arrays is None:
            try:
                c, t = np.array(self.count, np.int64), np.array(self.tokens, np.int64)
            except OverflowError:
                return None
            if len(c) and not (min(c.min(), t.min()) > -_EXACT and max(c.max(), t.max()) < _EXACT):
                return None
            self._arrays = c, t
        return self._arrays

    def _end(self, instance: int) -> int:
        """One past the instance's last flat rank."""
        return self.offsets[instance + 1] if instance + 1 < len(self.offsets) else len(self.count)

    def _mirror(self, lo: int, hi: int) -> None:
        """Copy flat ranks lo..hi-1 of the counters into `arrays` (dropped where one is out of range)."""
        assert self._arrays is not None
        c, t = self.count[lo:hi], self.tokens[lo:hi]
        if c and not (min(min(c), min(t)) > -_EXACT and max(max(c), max(t)) < _EXACT):
            self._arrays = None
            return
        self._arrays[0][lo:hi] = c
        self._arrays[1][lo:hi] = t

    def reconcile(self, instance: int, snapshot_s: float, loads: tuple[RankLoad, ...], tokens_of) -> None:
        """Replace the instance's counters with a snapshot plus the deltas it cannot have seen."""
        log = deque((e for e in self._log[instance] if e[0] > snapshot_s), maxlen=_LOG_LIMIT)
        self._log[instance] = log
        base = self.offsets[instance]
        for load in loads:
            i = base + load.dp_rank
            self.count[i] = load.num_running_reqs + load.num_waiting_reqs
            self.tokens[i] = tokens_of(load)
        for _, rank, count, tokens in log:
            self.count[base + rank] += count
            self.tokens[base + rank] += tokens
        if self._arrays is not None:
            self._mirror(base, self._end(instance))

    def carry(self, old: RankCounters, old_instance: int, instance: int, ranks: int) -> None:
        """Take over the counters of `old`'s instance `old_instance` (of `ranks` ranks, as `instance`
        here) and the deltas a snapshot may not have seen yet (a rebuild: `carry`)."""
        src, dst = old.offsets[old_instance], self.offsets[instance]
        self.count[dst : dst + ranks] = old.count[src : src + ranks]
        self.tokens[dst : dst + ranks] = old.tokens[src : src + ranks]
        if self._arrays is not None:
            self._mirror(dst, dst + ranks)
        self._log[instance] = deque(old._log[old_instance], maxlen=_LOG_LIMIT)


Flight = tuple[int, int | None, int, int, int | None, int]
"""A dispatched request the scheduler still accounts for: (prefill instance, prefill rank, prefill
tokens, decode instance, decode rank, KV tokens); a rank None is the engine's own choice. A plain
tuple, unpacked where it is read: a release builds hundreds at once, from zipped columns, and a named
tuple costs three times as much to build. Whether its prefill has completed is `ClusterState.prefilled`."""


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


def _waiting_tokens(load: RankLoad) -> int:
    return load.num_waiting_uncached_tokens


def _used_tokens(load: RankLoad) -> int:
    return load.num_used_tokens


class ClusterState:
    """Everything the scheduler believes about its instances, and the synchronisation that keeps it
    honest: tier-2 step reports (`on_step`), tier-3 snapshots (`on_loads`), finished requests and
    health. Policies read it and book their dispatches into it."""

    def __init__(
        self,
        prefill: Sequence[InstanceSpec],
        decode: Sequence[InstanceSpec],
        *,
        capacity: PrefillCapacityModel,
        transit_s: float,
        step_alpha: float,
        chunk_sync: bool = False,
    ) -> None:
        self.capacity = capacity
        self.chunk_sync = chunk_sync
        """Prefill snapshots set the carries (`chunk_sync.resync`); only SBS keeps carries."""
        self.transit_s = transit_s
        self.step_alpha = step_alpha
        """Weight of the newest step in the step-time and prediction-error averages."""
        self.prefill_specs = list(prefill)
        self.decode_specs = list(decode)
        self.prefill = RankCounters(self.prefill_specs, transit_s)
        self.decode = RankCounters(self.decode_specs, transit_s)
        self.revision = Revision()
        """Counts changes to `instances` (see `PrefillInstanceState`)."""
        self.instances = [
            PrefillInstanceState(spec=s, offset=o, revision=self.revision)
            for s, o in zip(prefill, self.prefill.offsets, strict=True)
        ]
        self.decode_healthy = [True] * len(self.decode_specs)
        self.decode_refs = [RankRef(i, r) for i, s in enumerate(self.decode_specs) for r in range(s.dp_size)]
        self.decode_cap = [s.kv_capacity_tokens for s in self.decode_specs for _ in range(s.dp_size)]
        self.decode_max_running = [
            s.max_running_requests for s in self.decode_specs for _ in range(s.dp_size)
        ]
        caps = set(self.decode_cap)
        self.decode_uniform_cap: int | None = caps.pop() if len(caps) == 1 else None
        """The decode ranks' one KV capacity (None: mixed; see `decode_alloc.assign_decode_uniform`)."""
        try:
            self.decode_running_a: np.ndarray | None = np.array(self.decode_max_running, np.int64)
        except OverflowError:
            self.decode_running_a = None
        """`decode_max_running` as int64 (None beyond it); both are constant."""
        self.flights: dict[int, Flight] = {}
        self.queued: list[dict[int, chunk_sync.Queued]] = [{} for _ in self.prefill.count]
        """Per flat prefill rank: rid → (uncached tokens, sent at, planned in chunks) of the prefills
        booked there by `queue_prefill` and not yet completed, oldest first (what `chunk_sync` reads a
        snapshot by; empty without it)."""
        self.prefilled: set[int] = set()
        """The flights whose prefill has completed (their prefill rank no longer holds them)."""
        self.stats = SchedulerStats()
        self._live_cache: tuple[tuple[bool, ...], list[int]] = ((), [])
        self._decode_live_cache: tuple[tuple[bool, ...], list[int]] = ((), [])
        self._decode_available: tuple[tuple[bool, ...], list[bool]] = ((), [])

    # -- views ------------------------------------------------------------------------------------

    def unusable_side(self) -> str | None:
        """ "decode" or "prefill" when no instance of that role is usable, else None."""
        if not any(self.decode_healthy):
            return "decode"
        if not any(st.available for st in self.instances):
            return "prefill"
        return None

    def prefill_live(self) -> list[int]:
        """Flat indices of the usable prefill ranks (all of them when none is usable)."""
        key = tuple(st.available for st in self.instances)
        if self._live_cache[0] != key:
            live = [st.offset + r for st in self.instances if st.available for r in range(st.spec.dp_size)]
            self._live_cache = (key, live or list(range(len(self.prefill.count))))
        return self._live_cache[1]

    def decode_live(self) -> list[int]:
        """Flat indices of the ranks of healthy decode instances (all of them when none is healthy)."""
        key = tuple(self.decode_healthy)
        if self._decode_live_cache[0] != key:
            live = [i for i, ref in enumerate(self.decode_refs) if self.decode_healthy[ref.instance]]
            self._decode_live_cache = (key, live or list(range(len(self.decode_refs))))
        return self._decode_live_cache[1]

    def decode_available(self) -> list[bool]:
        """Per flat decode rank: its instance is healthy (a list kept until the health changes: read only)."""
        key = tuple(self.decode_healthy)
        if self._decode_available[0] != key:
            healthy = zip(key, self.decode_specs, strict=True)
            available = list(chain.from_iterable(repeat(ok, spec.dp_size) for ok, spec in healthy))
            self._decode_available = (key, available)
        return self._decode_available[1]

    def prefill_ref(self, flat: int) -> RankRef:
        for i, st in enumerate(self.instances):
            if st.offset <= flat < st.offset + st.spec.dp_size:
                return RankRef(i, flat - st.offset)
        raise IndexError(flat)

    def queue_prefill(
        self,
        instance: int,
        ranks: Sequence[int],
        rids: Sequence[int],
        tokens: Sequence[int],
        chunked: Sequence[int],
        now: float,
    ) -> None:
        """Book prefills sent at `now` to ranks of `instance` in `queued` (each in `flights` too);
        `chunked[i]` is nonzero for a prompt planned to go on past its first step. Only `chunk_sync`
        reads them: without it nothing is booked (no work on the release path)."""
        if not self.chunk_sync:
            return
        queued, base = self.queued, self.prefill.offsets[instance]
        for rank, rid, n, more in zip(ranks, rids, tokens, chunked, strict=True):
            queued[base + rank][rid] = (n, now, more > 0)

    # -- reports ------------------------------------------------------------------------------------

    def on_step(self, ev: StepCompleted, now: float) -> None:
        """Tier 2: a prefill step ended; correct the instance's predicted free time and averages."""
        st = self.instances[ev.instance]
        st.last_heard_s = now
        st.suspect = False
        end = ev.started_s + ev.duration_s
        if ev.admission_s > 0:
            gain = 0.5 if ev.admission_s > st.admission_s else self.step_alpha
            st.admission_s += gain * (ev.admission_s - st.admission_s)
        if end <= st.reported_end_s + _SAME_END_S:  # more of a step already heard of (the service's
            self._prefilled(st, ev.instance, ev.finished_rids, now, end)  # answers come one by one)
            if st.planned and st.guessed_end_s == st.reported_end_s:
                engine_steps.guess_again(st, self.prefill, self.capacity)
            return
        st.reported_end_s = end
        st.guessed_end_s = -math.inf
        alpha = self.step_alpha
        matched = 0.0
        if ev.timed:
            st.step_ewma_s = (
                ev.duration_s
                if st.step_ewma_s == 0.0
                else ((1 - alpha) * st.step_ewma_s + alpha * ev.duration_s)
            )
            # sent before this step began: the last is this step, any earlier ran unreported
            while st.planned and st.planned[0][0] <= ev.started_s:
                matched = st.planned.popleft()[1]
        else:  # the start is unknown: done are the steps predicted to be at least half over by its end
            while st.planned and st.planned[0][0] + 0.5 * st.planned[0][1] <= end:
                st.planned.popleft()
        self._prefilled(st, ev.instance, ev.finished_rids, now, end)
        # A release split by the engine (its first requests ran alone) says nothing of the prediction.
        split = ev.next_step_queued and not st.planned and ev.duration_s < 0.5 * matched
        if matched > 0 and not (split and engine_steps.left_behind(st, self.prefill)):
            ratio = min(max(ev.duration_s * st.error_ewma / matched, 0.25), 4.0)
            st.error_ewma = (1 - alpha) * st.error_ewma + alpha * ratio
            st.step_dev += alpha * (abs(ev.duration_s / matched - 1.0) - st.step_dev)
        if not ev.next_step_queued:
            # The engine went idle. Steps sent after it ended (still in transit) will start on arrival.
            cutoff = end - self.transit_s
            while st.planned and st.planned[0][0] <= cutoff:
                st.planned.popleft()
            if not st.planned:
                st.carries.clear()
            st.busy_until_s = max(end, st.planned[0][0] if st.planned else end) + st.planned_total_s()
            return
        if not st.planned:
            # The engine started a step nobody released: chunked prompts continuing, or what a release
            # left behind (its requests became schedulable one by one, and the first few ran alone).
            st.planned.append((ev.started_s, engine_steps.next_step_s(st, self.prefill, self.capacity)))
            st.guessed_end_s = end  # the step's other answers may yet account for it
        st.busy_until_s = end + st.planned_total_s()

    def _prefilled(
        self, st: PrefillInstanceState, instance: int, rids: tuple[int, ...], now: float, end: float
    ) -> None:
        """The prefills of `rids` completed on `instance` in the step ending at `end`."""
        for rid in rids:
            flight = self.flights.get(rid)
            if flight is None or rid in self.prefilled:
                continue
            self.prefilled.add(rid)
            p, rank, tokens = flight[:3]
            if rank is None:
                st.unpinned_tokens -= tokens
            else:
                self.prefill.add(p, rank, -1, -tokens, now, seen_at=end)
                self.queued[self.prefill.offsets[p] + rank].pop(rid, None)
                carry = st.carries.get(rank)
                if carry is not None and carry.rid == rid:  # its last chunk ran, seen or not
                    del st.carries[rank]

    def on_loads(self, ev: LoadReported, now: float) -> None:
        """Tier 3: a per-rank snapshot replaces the counters (plus what it cannot have seen)."""
        if ev.role is Role.PREFILL:
            st = self.instances[ev.instance]
            st.last_heard_s = now
            if self.chunk_sync:
                if st.carries:  # first the steps the engine ran by itself up to the snapshot
                    engine_steps.roll_carries(st, ev.snapshot_s, self.capacity)
                base = st.offset
                queued = self.queued[base : base + st.spec.dp_size]
                cutoff = ev.snapshot_s - max(st.admission_s, self.transit_s)
                chunk_sync.resync(st, queued, ev.loads, cutoff)
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

    def on_finished(self, rid: int, now: float, at: float | None) -> None:
        """A dispatched request ended (done, aborted, cancelled): free what it holds."""
        flight = self.flights.pop(rid, None)
        if flight is None:
            return
        p, p_rank, p_tokens, d, d_rank, kv = flight
        if rid in self.prefilled:
            self.prefilled.discard(rid)
        elif p_rank is None:  # aborted before its prefill completed
            self.instances[p].unpinned_tokens -= p_tokens
        else:
            self.prefill.add(p, p_rank, -1, -p_tokens, now, seen_at=at)
            self.queued[self.prefill.offsets[p] + p_rank].pop(rid, None)
        if d_rank is not None:
            self.decode.add(d, d_rank, -1, -kv, now, seen_at=at)

    def set_health(self, role: Role, instance: int, healthy: bool) -> None:
        if role is Role.PREFILL:
            self.instances[instance].healthy = healthy
        else:
            self.decode_healthy[instance] = healthy
