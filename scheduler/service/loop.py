"""The driver: the sans-IO scheduling core run against live engines.

The driver owns one core (`Scheduler`) per engine revision ("pool": prefill and decode engines are
paired only within a revision) and feeds it the events the simulator feeds (`sim/simulator.py`):
- `RequestArrived` when a request is accepted (or sent again after an engine failure);
- `LoadReported` from each engine's `/v1/loads` poll, timed by the engine's snapshot clock;
- `StepCompleted`, inferred: prefill answers of one instance arriving within `step_merge_s` are one
  forward step that started when the previous one ended (or when its last request was sent);
- `RequestFinished` when a request ends (done, failed or cancelled);
- `EngineHealth` when an engine fails, recovers, goes stale or starts draining;
- `None` (the passage of time) from a single timer task sleeping until `next_deadline()`.
Every call happens on the event loop with `now` from the loop's monotonic clock, so the core's
decisions are applied at once and in order. A change of membership (an engine added, removed or
re-shaped) rebuilds the revision's core: buffered requests are fed to the new one, and the accounting
of requests in flight is restored by the next load polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import (
    Decision,
    Dispatch,
    EngineHealth,
    Event,
    LoadReported,
    Reject,
    Request,
    RequestArrived,
    RequestCancelled,
    RequestFinished,
    Role,
    StepCompleted,
)
from sbs.scheduler.service import engines as eng
from sbs.scheduler.service import metrics as svc_metrics
from sbs.scheduler.service import protocol, upstream
from sbs.scheduler.service.settings import ServiceSettings

log = logging.getLogger(__name__)

_TIMER_FLOOR_S = 0.0005
_TIMER_BACKOFF_MAX_S = 0.05


def wall_clock() -> float:
    """Wall-clock seconds, only to place engine snapshot timestamps on the monotonic clock."""
    return time.time()  # noqa: TID251 (the service is an IO edge)


class Overloaded(Exception):
    """Admission refused; `status` is 429 (overload) or 503 (no usable engines)."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


class JobState(enum.Enum):
    BUFFERED = "buffered"
    DISPATCHED = "dispatched"
    DONE = "done"


@dataclass(eq=False, slots=True)
class Job:
    """One accepted client request, from acceptance to its single completion or error."""

    rid: int
    request_id: str
    endpoint: str
    body: dict[str, Any]
    parsed: protocol.Parsed
    request: Request
    arrival_s: float
    deadline_s: float
    pool: Pool
    generation: int
    decision: asyncio.Future[Decision]
    state: JobState = JobState.BUFFERED
    attempts: int = 0
    dispatch: Dispatch | None = None
    prefill_engine: eng.Engine | None = None
    decode_engine: eng.Engine | None = None
    prefilled: bool = False
    """The current attempt's prefill completed (prefill answered or the decode produced output)."""
    dispatched_s: float = 0.0


@dataclass(eq=False, slots=True)
class Pool:
    """The engines of one revision and the core scheduling them."""

    revision: str
    prefill: list[eng.Engine]
    decode: list[eng.Engine]
    core: Scheduler
    generation: int
    index: dict[str, int] = field(default_factory=dict)
    """Engine key → instance index in its role's list."""
    outstanding: int = 0
    last_release_s: float | None = None

    def member(self, engine: eng.Engine) -> int | None:
        i = self.index.get(engine.key)
        role_list = self.prefill if engine.role is Role.PREFILL else self.decode
        return i if i is not None and i < len(role_list) and role_list[i] is engine else None

    def usable(self) -> bool:
        return any(e.usable for e in self.prefill) and any(e.usable for e in self.decode)

    def usable_prefill_ranks(self) -> int:
        return sum(e.spec.dp_size for e in self.prefill if e.usable and e.spec)


class Driver:
    """Runs the cores, the engine watchers and the timer; the request handlers call into it."""

    def __init__(self, settings: ServiceSettings, metrics: svc_metrics.Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = eng.Registry()
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[int, Job] = {}
        self.rng = random.Random()
        self.session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_rid = 0
        self._generation = 0
        self._buffered = 0
        self._inbox: deque[tuple[Pool, Event | None]] = deque()
        self._feeding = False
        self._wake = asyncio.Event()
        self._timer_at = math.inf
        self._tasks: set[asyncio.Task[Any]] = set()
        self._core_stats: Counter[str] = Counter()
        self._prefill_sent: dict[str, dict[tuple[int, int], tuple[float, int]]] = {}
        """Prefill engine key → (rid, attempt) → (send time, pool generation), until it answers."""
        self._step_done: dict[str, list[tuple[int, float, int]]] = {}
        self._step_end: dict[str, float] = {}
        self._last_release_s: float | None = None
        cap = settings.capacity
        self.capacity = PrefillCapacityModel(cap.fixed_s, cap.per_token_s, cap.per_pair_s)
        metrics.attach(self.snapshot)

    # -- lifecycle ------------------------------------------------------------------------------

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def start(self, sources: Iterable[eng.EngineSource]) -> None:
        self._loop = asyncio.get_running_loop()
        adm = self.settings.admission
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, connect=adm.connect_timeout_s, sock_connect=adm.connect_timeout_s
            ),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            raise_for_status=False,
        )
        self._spawn(self._timer())
        for source in sources:
            self._spawn(self._follow(source))

    async def close(self) -> None:
        tasks = list(self._tasks) + [e.poller for e in self.registry.engines.values() if e.poller]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- readiness and admission ------------------------------------------------------------------

    def ready(self) -> bool:
        """At least one prefill and one decode of the same revision are usable."""
        return any(p.usable() for p in self.pools.values())

    def _choose_pool(self, exclude: Pool | None = None) -> Pool | None:
        """The usable pool with the fewest outstanding requests per usable prefill rank."""
        best: tuple[float, str] | None = None
        chosen = None
        for rev, pool in self.pools.items():
            if pool is exclude or not pool.usable():
                continue
            key = ((pool.outstanding + 1) / max(pool.usable_prefill_ranks(), 1), rev)
            if best is None or key < best:
                best, chosen = key, pool
        return chosen

    def accept(
        self,
        endpoint: str,
        body: dict[str, Any],
        parsed: protocol.Parsed,
        request_id: str,
        timeout_s: float | None,
    ) -> Job:
        """Admit a request (raises `Overloaded`) and hand it to a core."""
        adm = self.settings.admission
        if len(self.jobs) >= adm.max_outstanding_requests:
            self._refuse("too_many_outstanding")
            raise Overloaded(
                "too_many_outstanding", 429, f"{len(self.jobs)} requests outstanding; retry later"
            )
        if self._buffered >= adm.max_buffered_requests:
            self._refuse("buffer_full")
            raise Overloaded(
                "buffer_full", 429, f"the scheduler's buffer is full ({self._buffered} requests)"
            )
        pool = self._choose_pool()
        if pool is None:
            self._refuse("not_ready")
            raise Overloaded("not_ready", 503, "no usable prefill and decode engines of one revision")
        now = self.now()
        self._next_rid += 1
        limit = adm.request_timeout_s if timeout_s is None else min(timeout_s, adm.request_timeout_s)
        assert self._loop is not None
        job = Job(
            rid=self._next_rid,
            request_id=request_id,
            endpoint=endpoint,
            body=body,
            parsed=parsed,
            request=Request(self._next_rid, now, parsed.prompt_tokens, parsed.output_tokens, parsed.hash_ids),
            arrival_s=now,
            deadline_s=now + limit,
            pool=pool,
            generation=pool.generation,
            decision=self._loop.create_future(),
        )
        self.jobs[job.rid] = job
        pool.outstanding += 1
        self._buffered += 1
        self.metrics.accepted.labels(endpoint).inc()
        self.metrics.prompt_tokens.observe(parsed.prompt_tokens)  # the workload's shape, for sizing
        self.metrics.output_tokens.observe(parsed.output_tokens)
        self._gauges()
        self.feed(pool, RequestArrived(job.request))
        return job

    def _refuse(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()

    def _gauges(self) -> None:
        self.metrics.buffered.set(self._buffered)
        self.metrics.outstanding.set(len(self.jobs))

    # -- the core -------------------------------------------------------------------------------

    def feed(self, pool: Pool, event: Event | None) -> None:
        """Hand one event to a pool's core and apply its decisions (re-entrant calls are queued)."""
        self._inbox.append((pool, event))
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._inbox:
                p, ev = self._inbox.popleft()
                if self.pools.get(p.revision) is not p:
                    continue  # the pool was retired meanwhile
                now = self.now()
                decisions = p.core.handle(ev, now)
                if decisions:
                    self._apply(p, decisions, now)
                dl = p.core.next_deadline()
                if dl is not None and dl < self._timer_at:
                    self._wake.set()
        finally:
            self._feeding = False

    def _apply(self, pool: Pool, decisions: list[Decision], now: float) -> None:
        batches: Counter[int] = Counter()
        for d in decisions:
            job = self.jobs.get(d.rid)
            current = job is not None and job.state is JobState.BUFFERED and job.pool is pool
            if isinstance(d, Dispatch):
                if not current or job is None or job.generation != pool.generation:
                    # Cancelled while buffered (deadline, disconnect): free what the core just booked.
                    self._inbox.append((pool, RequestFinished(d.rid, now)))
                    continue
                batches[d.prefill_instance] += 1
                self._set_state(job, JobState.DISPATCHED)
                job.dispatch = d
                job.prefill_engine = pool.prefill[d.prefill_instance]
                job.decode_engine = pool.decode[d.decode_instance]
                job.prefilled = False
                job.dispatched_s = now
                if job.attempts == 0:
                    self.metrics.queue_wait.observe(now - job.arrival_s)
                self.metrics.dispatched.labels(d.reason or "unknown").inc()
                if not job.decision.done():
                    job.decision.set_result(d)
            elif current and job is not None and not job.decision.done():
                job.decision.set_result(d)
        for n in batches.values():
            self.metrics.batch_size.observe(n)
        if batches:
            if self._last_release_s is not None:
                self.metrics.dispatch_interval.observe(now - self._last_release_s)
            self._last_release_s = now
            pool.last_release_s = now

    def _set_state(self, job: Job, state: JobState) -> None:
        if job.state is JobState.BUFFERED:
            self._buffered -= 1
        if state is JobState.BUFFERED:
            self._buffered += 1
        job.state = state
        self._gauges()

    async def _timer(self) -> None:
        """Sleep until the earliest core deadline (or a wake-up), then let the due cores act."""
        backoff = _TIMER_FLOOR_S
        while True:
            now = self.now()
            progressed = False
            for pool in list(self.pools.values()):
                dl = pool.core.next_deadline()
                if dl is not None and dl <= now:
                    before = pool.last_release_s
                    self.feed(pool, None)
                    progressed |= pool.last_release_s != before or pool.core.next_deadline() != dl
            deadlines = [dl for p in self.pools.values() if (dl := p.core.next_deadline()) is not None]
            nxt = min(deadlines, default=math.inf)
            # A deadline that stays in the past without progress backs off instead of spinning.
            backoff = _TIMER_FLOOR_S if progressed or nxt > now else min(backoff * 2, _TIMER_BACKOFF_MAX_S)
            self._timer_at = nxt
            self._wake.clear()
            if nxt == math.inf:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(nxt - self.now(), backoff)):
                    await self._wake.wait()

    # -- request lifecycle (called by the relay) -----------------------------------------------

    def prefill_sent(self, job: Job, engine: eng.Engine) -> None:
        """The prefill side of `job`'s current attempt was sent to `engine`."""
        sent = self._prefill_sent.setdefault(engine.key, {})
        sent[(job.rid, job.attempts)] = (self.now(), job.generation)

    def prefill_answered(self, job: Job, engine: eng.Engine, attempt: int, ok: bool) -> None:
        """The prefill side of one attempt ended: `ok` when the engine answered that its prefill is
        done (one more completion of an inferred step), else failed or cancelled."""
        entry = self._prefill_sent.get(engine.key, {}).pop((job.rid, attempt), None)
        if entry is None or not ok:
            return
        if job.attempts == attempt:
            job.prefilled = True
        pending = self._step_done.setdefault(engine.key, [])
        pending.append((job.rid, *entry))
        if len(pending) == 1:
            assert self._loop is not None
            self._loop.call_later(self.settings.engines.step_merge_s, self._flush_step, engine, self.now())

    def _flush_step(self, engine: eng.Engine, end: float) -> None:
        """Infer one prefill step of `engine` from the answers collected since `end`."""
        done = self._step_done.pop(engine.key, [])
        if not done:
            return
        started = max(self._step_end.get(engine.key, -math.inf), max(s for _, s, _ in done))
        self._step_end[engine.key] = end
        pool = self.pools.get(engine.record.revision)
        i = pool.member(engine) if pool is not None else None
        if pool is None or i is None:
            return
        queued = bool(self._prefill_sent.get(engine.key))
        rids = tuple(rid for rid, _, generation in done if generation == pool.generation)
        self.feed(pool, StepCompleted(i, started, max(end - started, 1e-6), rids, queued))

    def redispatch(self, job: Job, failed: eng.Engine | None) -> bool:
        """Send `job` again after its engines failed before its prefill completed; False when it
        may not (attempts used up, or no usable pool)."""
        if failed is not None:
            self.engine_failed(failed)
        if job.generation == job.pool.generation:
            self.feed(job.pool, RequestFinished(job.rid, self.now()))
        if job.attempts >= self.settings.admission.max_redispatches:
            return False
        pool = (
            job.pool
            if job.pool.usable() and self.pools.get(job.pool.revision) is job.pool
            else self._choose_pool()
        )
        if pool is None:
            return False
        job.attempts += 1
        if failed is not None:
            self.metrics.redispatched.labels(failed.role.value).inc()
        else:
            self.metrics.redispatched.labels("none").inc()
        self._move(job, pool)
        assert self._loop is not None
        job.decision = self._loop.create_future()
        self._set_state(job, JobState.BUFFERED)
        self.feed(pool, RequestArrived(job.request))
        return True

    def _move(self, job: Job, pool: Pool) -> None:
        if job.pool is not pool:
            job.pool.outstanding -= 1
            pool.outstanding += 1
            job.pool = pool
        job.generation = pool.generation

    def finish(self, job: Job, error_reason: str | None) -> None:
        """`job` ended: completed (`error_reason` None) or errored. Exactly once per accepted job."""
        if job.state is JobState.DONE:
            return
        was = job.state
        self._set_state(job, JobState.DONE)
        self.jobs.pop(job.rid, None)
        job.pool.outstanding -= 1
        if not job.decision.done():
            job.decision.cancel()
        if was is JobState.DISPATCHED and job.generation == job.pool.generation:
            self.feed(job.pool, RequestFinished(job.rid, self.now()))
        elif was is JobState.BUFFERED and job.generation == job.pool.generation:
            self.feed(job.pool, RequestCancelled(job.rid))  # leaves the buffer: no batch slot taken
        elapsed = self.now() - job.arrival_s
        if error_reason is None:
            self.metrics.completed.labels(job.endpoint).inc()
            self.metrics.e2e.labels("completed").observe(elapsed)
        else:
            self.metrics.errored.labels(job.endpoint, error_reason).inc()
            self.metrics.e2e.labels("errored").observe(elapsed)
        self._gauges()

    def engine_failed(self, engine: eng.Engine) -> None:
        """A request to `engine` failed at the connection or with a 5xx: skip it until a poll succeeds."""
        engine.failures = max(engine.failures, self.settings.engines.fail_threshold)
        self._set_health(engine, False)

    def _set_health(self, engine: eng.Engine, healthy: bool) -> None:
        was = engine.usable
        engine.healthy = healthy
        if engine.usable != was:
            log.warning(
                "engine %s (%s) is now %s",
                engine.key,
                engine.record.url,
                "usable" if engine.usable else "suspect",
            )
            self._tell_health(engine)

    def _tell_health(self, engine: eng.Engine) -> None:
        pool = self.pools.get(engine.record.revision)
        i = pool.member(engine) if pool is not None else None
        if pool is not None and i is not None:
            self.feed(pool, EngineHealth(engine.role, i, engine.usable))

    # -- discovery and engine watchers -------------------------------------------------------------

    async def _follow(self, source: eng.EngineSource) -> None:
        async for change in source.changes():
            self.apply_change(change)

    def apply_change(self, change: eng.EngineChange) -> None:
        """Apply one discovery change: start or stop the engine's watcher, rebuild what it touches."""
        old = self.registry.engines.get(change.engine.key)
        old_revision = old.record.revision if old is not None else None
        old_spec = old.spec if old is not None else None
        engine = self.registry.apply(change)
        if engine is None:
            return
        if change.kind is eng.ChangeKind.REMOVE:
            if engine.poller is not None:
                engine.poller.cancel()
            self._rebuild(engine.record.revision)
            return
        if engine.poller is None or (engine.spec is None and old_spec is not None):
            if engine.poller is not None:
                engine.poller.cancel()
            engine.poller = asyncio.ensure_future(self._watch(engine))
            for rev in {old_revision, engine.record.revision} - {None}:
                assert rev is not None
                self._rebuild(rev)
        else:
            self._tell_health(engine)  # e.g. the draining flag changed

    async def _watch(self, engine: eng.Engine) -> None:
        """Resolve the engine's shape, then poll its loads until it is removed."""
        assert self.session is not None
        es = self.settings.engines
        rec = engine.record
        while engine.spec is None:
            info = None
            needs_info = rec.dp_size is None or (rec.role is Role.PREFILL and rec.bootstrap_port is None)
            try:
                if needs_info or rec.chunk_tokens is None or rec.kv_capacity_tokens is None:
                    async with asyncio.timeout(es.poll_timeout_s):
                        info = await upstream.fetch_server_info(self.session, rec.url, rec.key)
            except (upstream.UpstreamError, TimeoutError) as exc:
                if needs_info:
                    log.info("engine %s: waiting for /server_info: %s", rec.key, exc)
                    await asyncio.sleep(es.resolve_retry_s)
                    continue
            try:
                engine.spec, engine.bootstrap_port = eng.resolve_spec(rec, info, es.instance_defaults)
            except eng.EngineRecordError as exc:
                log.warning("%s", exc)
                await asyncio.sleep(es.resolve_retry_s)
                continue
            engine.last_ok_s = self.now()
            log.info(
                "engine %s (%s %s, DP%d) resolved", rec.key, rec.role.value, rec.url, engine.spec.dp_size
            )
            self._rebuild(rec.revision)
        use_metrics = False
        while True:
            sent, wall = self.now(), wall_clock()
            try:
                async with asyncio.timeout(es.poll_timeout_s):
                    if use_metrics:
                        reply = await upstream.fetch_metrics_loads(self.session, rec.url, rec.key)
                    else:
                        reply = await upstream.fetch_loads(self.session, rec.url, rec.key)
            except upstream.LoadsUnavailable:
                use_metrics = es.metrics_fallback
                reply = None
                if not use_metrics:
                    self._poll_ok(engine)
            except (upstream.UpstreamError, TimeoutError) as exc:
                reply = None
                engine.failures += 1
                self.metrics.poll_failures.labels(rec.key).inc()
                if engine.failures >= es.fail_threshold:
                    if engine.healthy:
                        log.warning("engine %s: load poll failed %d times: %s", rec.key, engine.failures, exc)
                    self._set_health(engine, False)
            if reply is not None:
                self._poll_ok(engine)
                self._report_loads(engine, reply, sent, wall)
            if engine.healthy and self.now() - engine.last_ok_s > es.stale_after_s:
                self._set_health(engine, False)
            await asyncio.sleep(es.loads_period_s)

    def _poll_ok(self, engine: eng.Engine) -> None:
        engine.failures = 0
        engine.last_ok_s = self.now()
        self._set_health(engine, True)

    def _report_loads(self, engine: eng.Engine, reply: upstream.LoadsReply, sent: float, wall: float) -> None:
        pool = self.pools.get(engine.record.revision)
        i = pool.member(engine) if pool is not None else None
        if pool is None or i is None or engine.spec is None:
            return
        now = self.now()
        snapshot = sent
        if reply.engine_ts is not None:
            # The engine's wall-clock snapshot time on our monotonic clock (clocks assumed in sync,
            # bounded by when we asked and when it answered; a wild clock falls back to the ask time).
            at = sent + (reply.engine_ts - wall)
            snapshot = min(at, now) if at > sent - 60.0 else sent
        loads = tuple(load for load in reply.loads if 0 <= load.dp_rank < engine.spec.dp_size)
        self.feed(pool, LoadReported(engine.role, i, snapshot, loads))

    # -- pools ----------------------------------------------------------------------------------

    def _rebuild(self, revision: str) -> None:
        """(Re)build the core of one revision when its membership changed."""
        prefill = self.registry.members(revision, Role.PREFILL)
        decode = self.registry.members(revision, Role.DECODE)
        pool = self.pools.get(revision)
        if pool is not None and pool.prefill == prefill and pool.decode == decode:
            return
        if pool is not None:
            self._retire_stats(pool)
        if not prefill or not decode:
            if pool is not None:
                del self.pools[revision]
                self._rehome(pool)
            return
        self._generation += 1
        s = self.settings
        core = Scheduler(
            [e.spec for e in prefill if e.spec],
            [e.spec for e in decode if e.spec],
            settings=s.scheduler,
            capacity=self.capacity,
            block_tokens=s.estimate.prefix_block_tokens or None,
        )
        index = {e.key: i for i, e in enumerate(prefill)} | {e.key: i for i, e in enumerate(decode)}
        new = Pool(revision, prefill, decode, core, self._generation, index)
        if pool is not None:
            new.outstanding = pool.outstanding
            new.last_release_s = pool.last_release_s
        self.pools[revision] = new
        log.info(
            "pool %r: %d prefill, %d decode engines, policy %s (generation %d)",
            revision,
            len(prefill),
            len(decode),
            s.scheduler.policy.type,
            self._generation,
        )
        for role, members in ((Role.PREFILL, prefill), (Role.DECODE, decode)):
            for i, e in enumerate(members):
                if not e.usable:
                    core.handle(EngineHealth(role, i, False), self.now())
        for job in list(self.jobs.values()):
            if job.pool is pool:
                job.pool = new
                if job.state is JobState.BUFFERED:
                    job.generation = new.generation
                    self.feed(new, RequestArrived(job.request))
        self._wake.set()

    def _rehome(self, retired: Pool) -> None:
        """A pool lost its last prefill or decode: its buffered requests go to another pool, or fail."""
        for job in list(self.jobs.values()):
            if job.pool is not retired:
                continue
            target = self._choose_pool()
            if job.state is not JobState.BUFFERED:
                if target is not None:
                    self._move(job, target)
                    job.generation = -1  # its flight is not in the target's core
                continue
            if target is None:
                if not job.decision.done():
                    job.decision.set_result(
                        Reject(job.rid, "no usable engines of any revision", retryable=True)
                    )
                continue
            self._move(job, target)
            self.feed(target, RequestArrived(job.request))

    def _retire_stats(self, pool: Pool) -> None:
        st = pool.core.stats
        for k in st.__slots__:  # type: ignore[attr-defined]
            self._core_stats[k] += getattr(st, k)

    # -- metrics --------------------------------------------------------------------------------

    def snapshot(self) -> svc_metrics.StateSnapshot:
        ranks: list[svc_metrics.RankRow] = []
        imbalance: dict[tuple[str, str], float] = {}
        core = Counter(self._core_stats)
        for pool in self.pools.values():
            st = pool.core.stats
            for k in st.__slots__:  # type: ignore[attr-defined]
                core[k] += getattr(st, k)
            for role, members, counters in (
                (Role.PREFILL, pool.prefill, pool.core.prefill),
                (Role.DECODE, pool.decode, pool.core.decode),
            ):
                live: list[int] = []
                for i, e in enumerate(members):
                    assert e.spec is not None
                    base = counters.offsets[i]
                    for r in range(e.spec.dp_size):
                        n, t = counters.count[base + r], counters.tokens[base + r]
                        ranks.append(svc_metrics.RankRow(role.value, e.key, r, n, t))
                        if e.usable:
                            live.append(t)
                mean = sum(live) / len(live) if live else 0.0
                imbalance[(role.value, pool.revision)] = max(live) / mean if mean > 0 else 1.0
        engines = []
        for e in self.registry.engines.values():
            if e.spec is None:
                state = "resolving"
            elif e.record.draining:
                state = "draining"
            elif not e.healthy or self._core_suspect(e):
                state = "suspect"
            else:
                state = "usable"
            engines.append(svc_metrics.EngineRow(e.role.value, e.key, e.record.revision, state))
        return svc_metrics.StateSnapshot(ranks, imbalance, engines, dict(core))

    def _core_suspect(self, engine: eng.Engine) -> bool:
        pool = self.pools.get(engine.record.revision)
        i = pool.member(engine) if pool is not None else None
        return (
            engine.role is Role.PREFILL
            and pool is not None
            and i is not None
            and pool.core.instances[i].suspect
        )

    def describe(self) -> dict[str, Any]:
        """The engines and pools, for `GET /engines`."""
        snap = {(r.role, r.engine): r.state for r in self.snapshot().engines}
        return {
            "policy": self.settings.scheduler.policy.type,
            "ready": self.ready(),
            "buffered": self._buffered,
            "outstanding": len(self.jobs),
            "engines": [
                {
                    "key": e.key,
                    "role": e.role.value,
                    "url": e.record.url,
                    "revision": e.record.revision,
                    "group": e.record.group,
                    "dp_size": e.spec.dp_size if e.spec else e.record.dp_size,
                    "bootstrap_port": e.bootstrap_port,
                    "state": snap.get((e.role.value, e.key), "resolving"),
                }
                for e in sorted(self.registry.engines.values(), key=lambda e: e.key)
            ],
            "pools": [
                {
                    "revision": p.revision,
                    "prefill": [e.key for e in p.prefill],
                    "decode": [e.key for e in p.decode],
                    "usable": p.usable(),
                    "outstanding": p.outstanding,
                }
                for p in self.pools.values()
            ],
        }
