"""Watching engines: discovery changes, each engine's shape, its `/v1/loads` polls and its health.

Each known engine gets one watcher task: it resolves the engine's shape (`/server_info` where the
record does not say), then polls its per-rank loads every `loads_period_s` and feeds them to its
pool's core as `LoadReported`, timed by the engine's own snapshot clock. Failed polls (no answer, an
error, a malformed reply), a refused request or a stale engine make it suspect (`EngineHealth`); a
successful poll makes it usable again. An engine with no successful poll for `hung_after_s` is hung:
the requests in flight on it are ended (`Dispatcher.engine_hung`). A watcher that dies all the same
is logged and started again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from sbs.scheduler.core.events import EngineHealth, LoadReported
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import upstream
from sbs.scheduler.service.discovery import ChangeKind, EngineChange, EngineRecordError, EngineSource
from sbs.scheduler.service.engine_registry import Engine, context_length, input_limit, resolve_spec

if TYPE_CHECKING:
    from sbs.scheduler.service.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def wall_clock() -> float:
    """Wall-clock seconds, only to place engine snapshot timestamps on the monotonic clock."""
    return time.time()  # noqa: TID251 (the service is an IO edge)


class EngineWatcher:
    """Follows discovery sources and runs one watcher task per engine."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    async def follow(self, source: EngineSource) -> None:
        async for change in source.changes():
            self.apply_change(change)

    def apply_change(self, change: EngineChange) -> None:
        """Apply one discovery change: start or stop the engine's watcher, rebuild what it touches."""
        d = self._d
        old = d.registry.engines.get(change.engine.key)
        old_revision = old.record.revision if old is not None else None
        old_spec = old.spec if old is not None else None
        engine = d.registry.apply(change)
        if engine is None:
            return
        if change.kind is ChangeKind.REMOVE:
            if engine.poller is not None:
                engine.poller.cancel()
            d.pools.rebuild(engine.record.revision)
            return
        if engine.poller is None or (engine.spec is None and old_spec is not None):
            if engine.poller is not None:
                engine.poller.cancel()
            self._start(engine)
            for rev in {old_revision, engine.record.revision} - {None}:
                assert rev is not None
                d.pools.rebuild(rev)
        else:
            self.tell_health(engine)  # e.g. the draining flag changed

    def engine_failed(self, engine: Engine) -> None:
        """A request to `engine` failed at the connection or with a 5xx: skip it until a poll succeeds."""
        engine.failures = max(engine.failures, self._d.settings.engines.fail_threshold)
        self._set_health(engine, False)

    def tell_health(self, engine: Engine) -> None:
        """Tell the engine's pool whether it is usable."""
        found = self._d.pools.of(engine)
        if found is not None:
            pool, i = found
            self._d.feed(pool, EngineHealth(engine.role, i, engine.usable))

    def _set_health(self, engine: Engine, healthy: bool) -> None:
        was = engine.usable
        engine.healthy = healthy
        if engine.usable != was:
            log.warning(
                "engine %s (%s) is now %s",
                engine.key,
                engine.record.url,
                "usable" if engine.usable else "suspect",
            )
            self.tell_health(engine)

    def _start(self, engine: Engine) -> None:
        task = asyncio.ensure_future(self._watch(engine))
        engine.poller = task
        task.add_done_callback(lambda t: self._ended(engine, t))

    def _ended(self, engine: Engine, task: asyncio.Task[None]) -> None:
        """A watcher ended: cancelled (removed, replaced, closing) is normal; dying is logged and it
        is started again."""
        if task.cancelled():
            return
        log.error("engine %s: its watcher died; starting it again", engine.key, exc_info=task.exception())
        self._d.metrics.watcher_restarts.inc()
        self._d.call_later(self._d.settings.engines.resolve_retry_s, self._restart, engine, task)

    def _restart(self, engine: Engine, dead: asyncio.Task[None]) -> None:
        if engine.poller is dead and self._d.registry.engines.get(engine.key) is engine:
            self._start(engine)

    async def _watch(self, engine: Engine) -> None:
        """Resolve the engine's shape, then poll its loads until it is removed."""
        es = self._d.settings.engines
        while engine.spec is None:
            if not await self._resolve(engine):
                await asyncio.sleep(es.resolve_retry_s)
        use_metrics = False
        while True:
            try:
                use_metrics = await self._poll(engine, use_metrics)
            except Exception as exc:  # a malformed reply, or a bug: a failed poll, never a dead watcher
                self._poll_failed(engine, exc)
                if not isinstance(exc, upstream.UpstreamError | TimeoutError):
                    log.warning("engine %s: load poll failed", engine.key, exc_info=exc)
            self._check_silence(engine)
            await asyncio.sleep(es.loads_period_s)

    async def _resolve(self, engine: Engine) -> bool:
        """One try at the engine's shape (its record, else `/server_info`, else the defaults)."""
        d, rec, es = self._d, engine.record, self._d.settings.engines
        assert d.poll_session is not None
        info = None
        needs_info = rec.dp_size is None or (rec.role is Role.PREFILL and rec.bootstrap_port is None)
        try:
            async with asyncio.timeout(es.poll_timeout_s):
                info = await upstream.fetch_server_info(d.poll_session, rec.url, rec.key)
        except (upstream.UpstreamError, TimeoutError) as exc:
            if needs_info:
                log.info("engine %s: waiting for /server_info: %s", rec.key, exc)
                return False
        try:
            engine.spec, engine.bootstrap_port = resolve_spec(rec, info, es.instance_defaults)
        except (EngineRecordError, ValueError, TypeError) as exc:  # also a malformed /server_info
            log.warning("engine %s: %s", rec.key, exc)
            return False
        engine.max_input_tokens = input_limit(info) if info else None
        engine.context_length = context_length(info) if info else None
        engine.truncates = bool(info and info.get("allow_auto_truncate") is True)
        engine.last_ok_s = d.now()
        log.info("engine %s (%s %s, DP%d) resolved", rec.key, rec.role.value, rec.url, engine.spec.dp_size)
        d.pools.rebuild(rec.revision)
        return True

    async def _poll(self, engine: Engine, use_metrics: bool) -> bool:
        """One load poll (`/v1/loads`, or `/metrics` once it proved missing); returns `use_metrics`."""
        d, rec, es = self._d, engine.record, self._d.settings.engines
        assert d.poll_session is not None
        sent, wall = d.now(), wall_clock()
        try:
            async with asyncio.timeout(es.poll_timeout_s):
                if use_metrics:
                    reply = await upstream.fetch_metrics_loads(d.poll_session, rec.url, rec.key)
                else:
                    reply = await upstream.fetch_loads(d.poll_session, rec.url, rec.key)
        except upstream.LoadsUnavailable:
            if not es.metrics_fallback:
                self._poll_ok(engine)
            return es.metrics_fallback
        self._poll_ok(engine)
        self._report_loads(engine, reply, sent, wall)
        return use_metrics

    def _poll_failed(self, engine: Engine, exc: BaseException) -> None:
        es = self._d.settings.engines
        engine.failures += 1
        self._d.metrics.poll_failures.labels(engine.key).inc()
        if engine.failures >= es.fail_threshold:
            if engine.healthy:
                log.warning("engine %s: load poll failed %d times: %s", engine.key, engine.failures, exc)
            self._set_health(engine, False)

    def _check_silence(self, engine: Engine) -> None:
        """Suspect after `stale_after_s` without a good poll; hung after `hung_after_s`."""
        d, es = self._d, self._d.settings.engines
        silent = d.now() - engine.last_ok_s
        if engine.healthy and silent > es.stale_after_s:
            self._set_health(engine, False)
        if not engine.hung and silent > es.hung_after_s:
            engine.hung = True
            log.warning(
                "engine %s (%s): no answer for %.1f s; ending the requests in flight on it",
                engine.key,
                engine.record.url,
                silent,
            )
            d.engine_hung(engine)

    def _poll_ok(self, engine: Engine) -> None:
        engine.failures = 0
        engine.hung = False
        engine.last_ok_s = self._d.now()
        self._set_health(engine, True)

    def _report_loads(self, engine: Engine, reply: upstream.LoadsReply, sent: float, wall: float) -> None:
        found = self._d.pools.of(engine)
        if found is None or engine.spec is None:
            return
        pool, i = found
        now = self._d.now()
        snapshot = sent
        if reply.engine_ts is not None:
            # The engine's wall-clock snapshot time on our monotonic clock (clocks assumed in sync,
            # bounded by when we asked and when it answered; a wild clock falls back to the ask time).
            at = sent + (reply.engine_ts - wall)
            snapshot = min(at, now) if at > sent - 60.0 else sent
        loads = tuple(load for load in reply.loads if 0 <= load.dp_rank < engine.spec.dp_size)
        self._d.feed(pool, LoadReported(engine.role, i, snapshot, loads))
