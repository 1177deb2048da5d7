"""The dispatcher: accepted requests fed to the sans-IO cores, and the cores' decisions applied.

It feeds each pool's core (`pools`) the events the simulator feeds (`sim/simulator.py`):
`RequestArrived` when a request is accepted (or sent again after an engine failure),
`RequestFinished`/`RequestCancelled` when it ends, and `None` (the passage of time) from a single
timer task sleeping until the earliest `next_deadline()`. Load reports and engine health come from
`engine_watch`, inferred prefill steps from `step_inference`. Every call happens on the event loop
with `now` from the loop's monotonic clock, so the core's decisions are applied at once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from sbs.scheduler.core.events import Event, RequestArrived, RequestCancelled, RequestFinished
from sbs.scheduler.core.policies.immediate import PRIORITY_UNITS_PER_S
from sbs.scheduler.core.types import Decision, Dispatch, Request, Role
from sbs.scheduler.service import memory, protocol, replicas
from sbs.scheduler.service import metrics as svc_metrics
from sbs.scheduler.service.auth import SecretFile
from sbs.scheduler.service.discovery import EngineSource
from sbs.scheduler.service.engine_http import EngineClient
from sbs.scheduler.service.engine_registry import Engine, Registry
from sbs.scheduler.service.engine_watch import EngineWatcher
from sbs.scheduler.service.jobs import Job, JobState, Overloaded
from sbs.scheduler.service.pools import Pool, Pools
from sbs.scheduler.service.step_inference import StepInference
from sbs.settings.service import ServiceSettings

log = logging.getLogger(__name__)

_TIMER_FLOOR_S = 0.0005
_TIMER_BACKOFF_MAX_S = 0.05


def uuid4_hex(random_bytes: bytes | None = None) -> str:
    """`uuid.uuid4().hex` (of `random_bytes`, else 16 from `os.urandom`) without a `UUID` object."""
    n = int.from_bytes(os.urandom(16) if random_bytes is None else random_bytes, "big")
    n = n & ~(0xC000 << 48) | 0x8000 << 48  # the RFC 4122 variant
    return f"{n & ~(0xF000 << 64) | 0x4000 << 64:032x}"  # version 4


class Dispatcher:
    """Admission, the cores' inputs and outputs, and the timer; the request handlers call into it."""

    def __init__(self, settings: ServiceSettings, metrics: svc_metrics.Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = Registry()
        self.pools = Pools(self)
        self.watcher = EngineWatcher(self)
        self.steps = StepInference(self)
        self.jobs: dict[int, Job] = {}
        self.finished_count = 0
        """Jobs ended so far (completed or errored)."""
        self.rng = random.Random()
        self.session: EngineClient | None = None
        """The requests' engine calls (prefill and decode), pooled (`engine_http`: a leaner client than
        aiohttp's, which cost about a quarter of the CPU per request)."""
        self.poll_session: aiohttp.ClientSession | None = None
        """The engine watcher's polls and `/v1/models`. Its own pool: aiohttp reuses the oldest idle
        connection first, so polls every 0.5 s through the requests' pool would keep each engine's
        every idle connection from a load peak alive for good (about 30 per engine)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_rid = 0
        self._buffered = 0
        self._inbox: deque[tuple[Pool, Event | None]] = deque()
        self._feeding = False
        self._wake = asyncio.Event()
        self._timer_at = math.inf
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_release_s: float | None = None
        self.replicas: replicas.Replicas | None = None
        """Set with `settings.replicas`: this replica's peers and the prefill instances it owns."""
        self.peer_session: aiohttp.ClientSession | None = None
        """Requests forwarded to peer replicas (no engine key on it)."""
        self._priority_shift_us: int | None = None
        metrics.attach(self.snapshot)
        # Read when scraped, not set on every change (several times per request).
        metrics.buffered.set_function(lambda: self._buffered)
        metrics.outstanding.set_function(lambda: len(self.jobs))

    # -- lifecycle ------------------------------------------------------------------------------

    def new_request_id(self) -> str:
        return uuid4_hex()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def engine_priority(self, d: Dispatch) -> int | None:
        """The `priority` the engines get for `d`: the core's (SBS's release key in negated µs of the
        loop's clock) moved to the wall clock, so that the priorities of several replicas compare on
        an engine they share (to the hosts' clock sync). None when the policy sends none."""
        if d.priority is None:
            return None
        if self._priority_shift_us is None:
            shift_s = datetime.now(UTC).timestamp() - self.now()
            self._priority_shift_us = round(shift_s * PRIORITY_UNITS_PER_S)
        return d.priority - self._priority_shift_us

    def call_later(self, delay_s: float, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_later(delay_s, callback, *args)

    def wake(self) -> None:
        """Let the timer look at the cores' deadlines again."""
        self._wake.set()

    async def start(self, sources: Iterable[EngineSource]) -> None:
        self._loop = asyncio.get_running_loop()
        self.session = EngineClient(
            connect_timeout_s=self.settings.admission.connect_timeout_s,
            idle_s=self.settings.engines.idle_connection_s,
        )
        self.poll_session = self._engine_session()
        self._spawn(self._timer())
        self._spawn(memory.trim_when_idle(lambda: len(self.jobs), lambda: self.finished_count))
        if self.settings.engines.api_key_file is not None:
            key_file = SecretFile(self.settings.engines.api_key_file)
            self._use_engine_key(key_file)
            self._spawn(self._follow_engine_key(key_file))
        if self.settings.replicas is not None:
            self.replicas = await replicas.from_settings(self.settings, self.pools.rebuild_all)
            self.peer_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5.0))
            await self.replicas.step()  # know the peers before owning anything
            self._spawn(self.replicas.run())
        for source in sources:
            self._spawn(self.watcher.follow(source))

    def _engine_session(self) -> aiohttp.ClientSession:
        """A pooled aiohttp client for the polls (connect timeouts; idle connections closed)."""
        connect_s = self.settings.admission.connect_timeout_s
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s),
            connector=aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=60, keepalive_timeout=self.settings.engines.idle_connection_s
            ),
            raise_for_status=False,
        )

    def _use_engine_key(self, key_file: SecretFile) -> None:
        """Send the engines' API key (its file's first line) with every engine call."""
        lines = key_file.lines()
        for session in (self.session, self.poll_session):
            if lines and session is not None:
                session.headers["Authorization"] = f"Bearer {lines[0]}"

    async def _follow_engine_key(self, key_file: SecretFile) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._use_engine_key(key_file)

    async def close(self) -> None:
        tasks = list(self._tasks) + [e.poller for e in self.registry.engines.values() if e.poller]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.leave()
        for session in (self.session, self.poll_session, self.peer_session):
            if session is not None:
                await session.close()

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
        """At least one prefill and one decode of the same revision are usable, or a peer replica
        that owns prefill instances takes forwarded requests."""
        return self.pools.ready() or self.forward_url() is not None

    def owned_prefill(self, engines: list[Engine]) -> list[Engine]:
        """The prefill engines (of one revision) this replica decides for: all but with peers."""
        if self.replicas is None:
            return engines
        mine = self.replicas.owned([(e.key, e.record.dp_size or 1) for e in engines])
        return [e for e in engines if e.key in mine]

    def forward_url(self) -> str | None:
        """A peer to forward requests to, when this replica owns no usable pool and a peer does."""
        if self.replicas is None or self.pools.ready():
            return None
        for rev in self.registry.revisions():
            prefill = self.registry.members(rev, Role.PREFILL)
            if prefill and self.registry.usable(Role.DECODE, self.registry.members(rev, Role.DECODE)):
                url = self.replicas.owner_url([(e.key, e.record.dp_size or 1) for e in prefill])
                if url is not None:
                    return url
        return None

    def accept(
        self,
        endpoint: str,
        payload: bytes,
        parsed: protocol.Parsed,
        request_id: str,
        timeout_s: float | None,
    ) -> Job:
        """Admit a request (raises `Overloaded`) and hand it to a core. Nothing after it is registered
        may lose it: should handing it over fail, it is finished (`internal_error`) and the error
        re-raised."""
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
        pool = self.pools.choose()
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
            engine_rid=uuid4_hex(),
            endpoint=endpoint,
            payload=payload,
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
        try:
            self.metrics.prompt_tokens.observe(parsed.prompt_tokens)  # the workload's shape, for sizing
            self.metrics.output_tokens.observe(parsed.output_tokens)
            self.feed(pool, RequestArrived(job.request))
        except BaseException:
            self.finish(job, "internal_error")
            raise
        return job

    def length_limits(self) -> tuple[int | None, int | None]:
        """(longest prompt, context length) the engines accept: `limits.max_prompt_tokens`, else the
        smallest the resolved engines publish; None when unknown, or when an engine truncates."""
        engines = [e for e in self.registry.engines.values() if e.spec is not None]
        if any(e.truncates for e in engines):
            return self.settings.limits.max_prompt_tokens, None

        def smallest(values: list[int | None]) -> int | None:
            return None if not values or None in values else min(v for v in values if v is not None)

        prompt = self.settings.limits.max_prompt_tokens or smallest([e.max_input_tokens for e in engines])
        return prompt, smallest([e.context_length for e in engines])

    def engine_hung(self, engine: Engine) -> None:
        """`engine` stopped answering: the requests in flight on it end (`Relay.engine_lost`)."""
        for job in list(self.jobs.values()):
            on_it = job.state is JobState.DISPATCHED and engine in (job.prefill_engine, job.decode_engine)
            if on_it and job.on_engine_lost is not None:
                job.on_engine_lost(engine)

    def _refuse(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()

    # -- the cores ------------------------------------------------------------------------------

    def feed(self, pool: Pool, event: Event | None) -> None:
        """Hand one event to a pool's core and apply its decisions (re-entrant calls are queued)."""
        self._inbox.append((pool, event))
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._inbox:
                p, ev = self._inbox.popleft()
                if not self.pools.current(p):
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
                for e in (job.prefill_engine, job.decode_engine):
                    self.metrics.engine_dispatches.labels(e.role.value, e.key).inc()
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

    async def _timer(self) -> None:
        """Sleep until the earliest core deadline (or a wake-up), then let the due cores act."""
        backoff = _TIMER_FLOOR_S
        while True:
            now = self.now()
            progressed = False
            pools = self.pools.by_revision
            for pool in list(pools.values()):
                dl = pool.core.next_deadline()
                if dl is not None and dl <= now:
                    before = pool.last_release_s
                    self.feed(pool, None)
                    progressed |= pool.last_release_s != before or pool.core.next_deadline() != dl
            deadlines = [dl for p in pools.values() if (dl := p.core.next_deadline()) is not None]
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

    def redispatch(self, job: Job, failed: Engine | None) -> bool:
        """Send `job` again after its engines failed before its prefill completed; False when it
        may not (attempts used up, or no usable pool)."""
        if failed is not None:
            self.watcher.engine_failed(failed)
        if job.generation == job.pool.generation:
            self.feed(job.pool, RequestFinished(job.rid, self.now()))
        if job.attempts >= self.settings.admission.max_redispatches:
            return False
        pool = job.pool if job.pool.usable() and self.pools.current(job.pool) else self.pools.choose()
        if pool is None:
            return False
        job.attempts += 1
        if failed is not None:
            self.metrics.redispatched.labels(failed.role.value).inc()
        else:
            self.metrics.redispatched.labels("none").inc()
        self.move(job, pool)
        assert self._loop is not None
        job.decision = self._loop.create_future()
        self._set_state(job, JobState.BUFFERED)
        self.feed(pool, RequestArrived(job.request))
        return True

    def move(self, job: Job, pool: Pool) -> None:
        """Account `job` to `pool` (its current generation)."""
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
        self.finished_count += 1
        job.pool.outstanding -= 1
        job.on_engine_lost = None
        if not job.decision.done():
            job.decision.cancel()
        elapsed = self.now() - job.arrival_s
        if error_reason is None:
            self.metrics.completed.labels(job.endpoint).inc()
            self.metrics.e2e.labels("completed").observe(elapsed)
        else:
            self.metrics.errored.labels(job.endpoint, error_reason).inc()
            self.metrics.e2e.labels("errored").observe(elapsed)
        if job.generation != job.pool.generation:
            return
        try:
            if was is JobState.DISPATCHED:
                self.feed(job.pool, RequestFinished(job.rid, self.now()))
            elif was is JobState.BUFFERED:
                self.feed(job.pool, RequestCancelled(job.rid))  # leaves the buffer: no batch slot taken
        except Exception:  # the request is accounted for; a core that fails here is logged, not fatal
            log.exception("request %s: the scheduling core failed on its end", job.request_id)

    # -- state for metrics and /engines ---------------------------------------------------------------

    def snapshot(self) -> svc_metrics.StateSnapshot:
        ranks: list[svc_metrics.RankRow] = []
        imbalance: dict[tuple[str, str], float] = {}
        for pool in self.pools.by_revision.values():
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
        return svc_metrics.StateSnapshot(ranks, imbalance, engines, dict(self.pools.core_stats()))

    def _core_suspect(self, engine: Engine) -> bool:
        found = self.pools.of(engine)
        return engine.role is Role.PREFILL and found is not None and found[0].core.instances[found[1]].suspect

    def describe(self) -> dict[str, Any]:
        """The engines and pools, for `GET /engines`."""
        snap = {(r.role, r.engine): r.state for r in self.snapshot().engines}
        held: Counter[str] = Counter()  # a prefill engine holds a request until its prefill completes
        for job in self.jobs.values():
            if job.state is JobState.DISPATCHED:
                for e in (None if job.prefilled else job.prefill_engine, job.decode_engine):
                    if e is not None:
                        held[e.key] += 1
        return {
            "policy": self.settings.scheduler.policy.type,
            "ready": self.ready(),
            **replicas.describe(self.replicas),
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
                    "in_flight": held[e.key],
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
                for p in self.pools.by_revision.values()
            ],
        }
