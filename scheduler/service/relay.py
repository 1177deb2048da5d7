"""Serving one accepted request: wait for the core's decision, send the PD pair, relay the decode.

Fault semantics (docs/service.md):
- an engine failure (connection refused or reset, 5xx, a stream that breaks) **before the request's
  prefill completed** (no prefill answer and no decode output yet) is invisible to the client: both
  upstream requests are closed, the failed engine is marked suspect and the core places the request
  again (at most `max_redispatches` times);
- a failure **after** it is an explicit, retryable error: 503 with `Retry-After`, or an SSE error
  event when the stream has started;
- an engine's 4xx is the request's fault and is passed through (401/403 excepted: our API key);
- a hung engine (no good poll for `engines.hung_after_s`) counts as failed for the requests in flight
  on it, as does a stream silent for `engines.stream_idle_timeout_s` after its first output;
- the deadline gives 504 (or an SSE error event); a client disconnect closes both upstream requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web
from sbs.scheduler.core.types import Dispatch, Reject
from sbs.scheduler.service import protocol, upstream
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.scheduler.service.engine_http import EngineResponse
from sbs.scheduler.service.engine_registry import Engine
from sbs.scheduler.service.jobs import Job
from sbs.scheduler.service.output_timing import OutputTiming

log = logging.getLogger(__name__)

_PREFILL_GRACE_S = 30.0
"""Once the decode has answered, how long the prefill's own answer may still take (it is normally in
already; it only times the inferred prefill step)."""


class ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


class _Redispatch(Exception):
    def __init__(self, failed: upstream.UpstreamError | None, engine: Any) -> None:
        super().__init__(str(failed) if failed else "engine not usable")
        self.failed = failed
        self.engine = engine


class Relay:
    """The upstream side of one job; `run()` returns the client's response."""

    def __init__(self, dispatcher: Dispatcher, job: Job, request: web.Request) -> None:
        self.dispatcher = dispatcher
        self.job = job
        self.request = request
        self.error_reason: str | None = None
        """Set when the answer is an error: the `reason` label the job is counted under."""
        self.stream: web.StreamResponse | None = None
        self.delivered = False
        """The client has the engine's whole stream, up to its `[DONE]` and with no error event: a
        client that hangs up after it (cancelling the handler) has its answer, not an error."""
        self._tasks: list[asyncio.Task[Any]] = []
        self._decode_resp: EngineResponse | None = None
        self._tail = b""
        self._ended = False
        """The client's stream has its end (`write_eof`)."""
        self._lost: asyncio.Future[Engine] | None = None
        """Resolved with an engine of the current attempt found hung (`engine_lost`)."""
        self._hung: Engine | None = None
        job.on_engine_lost = self.engine_lost

    def engine_lost(self, engine: Engine) -> None:
        """`engine` is hung: end what this request waits for from it."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(engine)
        if self.stream is not None and engine is self.job.decode_engine and self._decode_resp is not None:
            self._hung = engine
            self._decode_resp.close()  # the relay loop sees the stream break

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Request-Id": self.job.request_id, **extra}

    # -- the attempt loop -----------------------------------------------------------------------

    async def run(self) -> web.StreamResponse:
        job = self.job
        while True:
            decision = await job.decision
            if isinstance(decision, Reject):
                status = 503 if decision.retryable else 400
                return self.error(
                    status,
                    decision.reason,
                    reason="rejected",
                    type="service_unavailable" if decision.retryable else "invalid_request_error",
                    code="scheduler_rejected",
                    retryable=decision.retryable,
                )
            try:
                return await self._attempt(decision)
            except _Redispatch as r:
                self.close()
                failed_msg = str(r)
                log.info("request %s: %s; sending it again", job.request_id, failed_msg)
                if not self.dispatcher.redispatch(job, r.engine):
                    return self.error(
                        503,
                        f"engine failure before the prefill completed ({failed_msg}); no engine to retry on",
                        reason="engine_failed",
                        type="service_unavailable",
                        code="engine_failed",
                        retryable=True,
                    )

    async def _attempt(self, d: Dispatch) -> web.StreamResponse:
        job, dispatcher = self.job, self.dispatcher
        pe, de = job.prefill_engine, job.decode_engine
        assert pe is not None and de is not None and pe.spec is not None and dispatcher.session is not None
        if not pe.usable:
            raise _Redispatch(None, None)
        if not de.usable:
            raise _Redispatch(None, None)
        rid = job.engine_rid if job.attempts == 0 else f"{job.engine_rid}-{job.attempts}"
        room = upstream.choose_room(dispatcher.rng, pe.spec.dp_size, d.prefill_rank)
        pbody, dbody = upstream.pd_payloads(
            job.payload,
            rid=rid,
            bootstrap_host=pe.record.host,
            bootstrap_port=pe.bootstrap_port,
            room=room,
            prefill_rank=d.prefill_rank,
            decode_rank=d.decode_rank,
            priority=dispatcher.engine_priority(d),
        )
        attempt = job.attempts
        dispatcher.steps.prefill_sent(job, pe)
        loop = asyncio.get_running_loop()
        prefill = loop.create_task(
            upstream.call_prefill(dispatcher.session, pe.record.url + job.endpoint, pbody, pe.key)
        )
        prefill.add_done_callback(
            lambda t: dispatcher.steps.prefill_answered(job, pe, attempt, _ok(t), _result(t))
        )
        decode = loop.create_task(self._decode_head(de.record.url + job.endpoint, dbody, de.key))
        decode.add_done_callback(_retrieve)
        prefill.add_done_callback(_retrieve)
        self._tasks = [prefill, decode]
        lost = self._lost = loop.create_future()
        pending: set[asyncio.Future[Any]] = {prefill, decode, lost}
        while decode in pending:
            done, pending = await _first_done(pending)
            if lost in done:
                hung = lost.result()
                if hung is pe and (job.prefilled or prefill.done()):
                    prefill.cancel()  # its prefill is over: only the step timing is lost
                    lost = self._lost = asyncio.get_running_loop().create_future()  # the decode may hang yet
                    pending.add(lost)
                    continue
                exc = upstream.UpstreamError(hung.key, self._hung_message())
                if not job.prefilled:
                    raise _Redispatch(exc, hung)
                return self._failed_after_prefill(exc)
            if prefill in done and not prefill.cancelled() and not job.prefilled:
                exc = prefill.exception()
                if isinstance(exc, upstream.UpstreamError):
                    if exc.engine_failed:
                        raise _Redispatch(exc, pe)
                    return self.passthrough(exc)
                if exc is not None:
                    raise exc
        exc = decode.exception()
        if isinstance(exc, upstream.UpstreamError):
            if not exc.engine_failed:
                return self.passthrough(exc)
            if not (job.prefilled or (prefill.done() and _ok(prefill))):
                raise _Redispatch(exc, de)
            dispatcher.watcher.engine_failed(de)
            return self._failed_after_prefill(exc)
        if exc is not None:
            raise exc
        job.prefilled = True
        result = decode.result()
        if not prefill.done():
            # Its answer (due any moment: the decode has the KV) still times the prefill step, so it
            # outlives this request for a while instead of being closed with it.
            self._tasks.remove(prefill)
            asyncio.get_running_loop().call_later(_PREFILL_GRACE_S, prefill.cancel)
        if job.parsed.stream:
            resp, first = result
            return await self._relay_stream(resp, first)
        status, body, content_type = result
        return web.Response(status=status, body=body, content_type=content_type, headers=self.headers())

    def _hung_message(self) -> str:
        return f"no answer to the health polls for {self.dispatcher.settings.engines.hung_after_s:g} s (hung)"

    def _failed_after_prefill(self, exc: upstream.UpstreamError) -> web.Response:
        return self.error(
            503,
            f"decode engine failed after the prefill completed: {exc}",
            reason="engine_failed_after_prefill",
            type="service_unavailable",
            code="engine_failed",
            retryable=True,
        )

    async def _decode_head(self, url: str, body: bytes, engine: str) -> Any:
        """Non-stream: (status, body, content type). Stream: (open response, first bytes)."""
        session = self.dispatcher.session
        assert session is not None
        resp = await upstream.open_decode(session, url, body, engine)
        self._decode_resp = resp
        try:
            if not self.job.parsed.stream:
                data = await resp.read()
                resp.release()
                return resp.status, data, resp.content_type or "application/json"
            first = await resp.readany()
        except (TimeoutError, OSError) as exc:
            resp.close()
            raise upstream.UpstreamError(engine, f"decode stream broke before any output: {exc!r}") from None
        if not first:
            resp.close()
            raise upstream.UpstreamError(engine, "decode stream ended before any output", status=502)
        if first.startswith(b'data: {"error"'):
            # A refusal or a failure before any token (SGLang streams those as an error event).
            rest = b""
            with contextlib.suppress(OSError, TimeoutError):
                rest = await resp.read()
            resp.close()
            err = upstream.stream_error(first + rest) or {}
            raise upstream.UpstreamError(
                engine,
                f"decode stream reported an error: {err.get('message')}",
                status=upstream.error_status(err),
                body=first + rest,
                content_type="text/event-stream",
            )
        return resp, first

    async def _relay_stream(self, resp: EngineResponse, first: bytes) -> web.StreamResponse:
        job, dispatcher = self.job, self.dispatcher
        out = _EventStream(
            status=200,
            headers=self.headers(**{"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}),
        )
        try:
            await out.prepare(self.request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc
        self.stream = out
        dispatcher.metrics.ttft.observe(dispatcher.now() - job.arrival_s)
        timing = OutputTiming()
        timing.chunk(first, dispatcher.now())
        broke: str | None = None
        relayed: dict[str, Any] | None = None
        idle = dispatcher.settings.engines.stream_idle_timeout_s
        chunk, later = first, False
        try:
            while True:
                if later and relayed is None and b'"error"' in chunk:
                    relayed = upstream.stream_error(self._tail + chunk)
                # The engine's whole answer is in and ends the stream: the end goes with it (one write).
                last = resp.at_eof() and (relayed is not None or b"[DONE]" in (self._tail + chunk)[-64:])
                await self._write(chunk, last=last)
                self.delivered = relayed is None and self._tail.rstrip().endswith(b"data: [DONE]")
                later = True
                try:
                    chunk = await resp.readany(timeout_s=idle)
                except TimeoutError:
                    broke = f"decode stream sent nothing for {idle:g} s"
                    break
                if not chunk:
                    break
                if (itl := timing.chunk(chunk, dispatcher.now())) is not None:
                    dispatcher.metrics.itl.observe(itl)
        except OSError as exc:
            broke = f"decode stream broke: {exc!r}"
        finally:
            resp.close()
        if self._hung is not None:
            broke = f"decode engine {self._hung.key}: {self._hung_message()}"
        if relayed is not None:
            # The engine ended the stream with its own error event (relayed as is).
            status = upstream.error_status(relayed)
            self.error_reason = "engine_failed_after_prefill" if status >= 500 else "upstream_rejected"
        elif broke is None and b"[DONE]" not in self._tail:
            broke = "decode stream ended without [DONE]"
        tpot = timing.tpot_s()
        if relayed is None and broke is None and tpot is not None:
            dispatcher.metrics.tpot.observe(tpot)
        if broke is not None:
            assert job.decode_engine is not None
            dispatcher.watcher.engine_failed(job.decode_engine)
            await self._stream_error(broke, code="engine_failed", type="service_unavailable", retryable=True)
            self.error_reason = "engine_failed_after_prefill"
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await out.write_eof()
        return out

    async def _write(self, data: bytes, *, last: bool = False) -> None:
        """Relay `data` to the client; `last`: it ends the stream (the end is sent with it)."""
        assert self.stream is not None
        try:
            if last:
                self._ended = True
                await self.stream.write_eof(data)
            else:
                await self.stream.write(data)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc
        self._tail = (self._tail + data)[-64:]

    async def _stream_error(self, message: str, *, code: str, type: str, retryable: bool) -> None:
        """An SGLang-style error event ending a started stream (after any partial event); none once
        the stream has ended."""
        if self._ended:
            return
        event = json.dumps(protocol.error_body(message, type=type, code=code, retryable=retryable))
        sep = b"" if self._tail.endswith(b"\n\n") or not self._tail else b"\n\n"
        with contextlib.suppress(ClientGone):
            await self._write(sep + f"data: {event}\n\n".encode() + b"data: [DONE]\n\n")

    # -- answers --------------------------------------------------------------------------------

    def error(
        self, status: int, message: str, *, reason: str, type: str, code: str, retryable: bool = False
    ) -> web.Response:
        self.error_reason = reason
        headers = self.headers()
        if retryable or status in (429, 503):
            headers["Retry-After"] = str(self.dispatcher.settings.admission.retry_after_s)
        body = protocol.error_body(message, type=type, code=code, retryable=retryable)
        return web.json_response(body, status=status, headers=headers)

    def passthrough(self, exc: upstream.UpstreamError) -> web.Response:
        """An engine refused the request itself (4xx): the client gets the engine's answer (a stream
        refusal stays a 200 event stream with the error event, as SGLang sends it)."""
        self.error_reason = "upstream_rejected"
        assert exc.status is not None
        if exc.content_type == "text/event-stream":
            return web.Response(
                status=200, body=exc.body, content_type=exc.content_type, headers=self.headers()
            )
        return web.Response(
            status=exc.status,
            body=exc.body,
            content_type=exc.content_type or "application/json",
            headers=self.headers(),
        )

    async def deadline(self) -> web.StreamResponse:
        """The request's deadline passed."""
        message = "the request's deadline passed before it completed"
        if self.stream is not None:
            await self._stream_error(message, code="deadline_exceeded", type="timeout_error", retryable=True)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await self.stream.write_eof()
            return self.stream
        return self.error(
            504, message, reason="deadline", type="timeout_error", code="deadline_exceeded", retryable=True
        )

    def close(self) -> None:
        """Close both upstream requests (cancels work the engines would otherwise finish)."""
        for t in self._tasks:
            if not t.done():
                t.cancel()
        self._tasks = []
        if self._decode_resp is not None:
            self._decode_resp.close()
            self._decode_resp = None


class _EventStream(web.StreamResponse):
    """A streamed answer whose head goes out with its first bytes (one write instead of two).
    `_send_headers_immediately` is aiohttp's switch for it (3.12+; `web.Response` sets it too)."""

    _send_headers_immediately = False


async def _first_done(
    futures: set[asyncio.Future[Any]],
) -> tuple[set[asyncio.Future[Any]], set[asyncio.Future[Any]]]:
    """(done, pending) once one of `futures` is done: `asyncio.wait(FIRST_COMPLETED)` without its
    checks and bookkeeping (it runs once or twice per request)."""
    if not any(f.done() for f in futures):
        waiter = asyncio.get_running_loop().create_future()

        def wake(_: asyncio.Future[Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)

        for f in futures:
            f.add_done_callback(wake)
        try:
            await waiter
        finally:
            for f in futures:
                f.remove_done_callback(wake)
    done = {f for f in futures if f.done()}
    return done, futures - done


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a side's outcome as seen: after a re-dispatch or an error, one side's failure is moot."""
    if not task.cancelled():
        task.exception()


def _ok(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def _result(task: asyncio.Task[Any]) -> Any:
    return task.result() if _ok(task) else None
