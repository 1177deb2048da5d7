"""The handler of the generation endpoints: read and check the request, admit it, relay it, and end
it exactly once.

Everything that can refuse a request runs before it is accepted (the body's limits and validity, the
request id, the prompt's length, admission), so a refused request takes no buffer slot; once
accepted, `Dispatcher.finish` runs whatever happens.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sbs.scheduler.service import forwarding, protocol
from sbs.scheduler.service.bodies import Body, BodyParser, ParseUnavailable, read_body
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.scheduler.service.jobs import Overloaded
from sbs.scheduler.service.relay import ClientGone, Relay

log = logging.getLogger(__name__)


async def serve(
    dispatcher: Dispatcher, parser: BodyParser, request: web.Request, endpoint: str
) -> web.StreamResponse:
    """One request to a generation endpoint, from its body to its answer."""
    settings = dispatcher.settings
    try:
        raw = await read_body(request, settings.limits)
        body = await parser.parse(endpoint, raw)
        client_id = protocol.request_id(
            request.headers.get("X-Request-Id"),
            {"rid": body.parsed.rid},
            settings.limits.max_request_id_length,
        )
        prompt_limit, context = dispatcher.length_limits()
        protocol.check_prompt_length(body.parsed, prompt_limit, settings.estimate, context)
        timeout = _timeout_header(request)
    except protocol.InvalidRequest as exc:
        dispatcher.metrics.rejected.labels("invalid_request").inc()
        return invalid(exc, _echoable(request, settings.limits.max_request_id_length))
    except ParseUnavailable:
        dispatcher.metrics.rejected.labels("parse_unavailable").inc()
        exc = Overloaded("parse_unavailable", 503, "the body parser restarted; send the request again")
        return _overloaded(dispatcher, exc, None)
    if dispatcher.replicas is not None and not forwarding.forwarded(request):
        peer = dispatcher.forward_url()
        if peer is not None and dispatcher.peer_session is not None:
            dispatcher.metrics.forwarded.inc()
            me = dispatcher.replicas.me
            return await forwarding.forward(dispatcher.peer_session, request, raw, peer, me)
    request_id = client_id or dispatcher.new_request_id()
    return await _run(dispatcher, request, endpoint, body, request_id, timeout)


async def _run(
    dispatcher: Dispatcher,
    request: web.Request,
    endpoint: str,
    body: Body,
    request_id: str,
    timeout: float | None,
) -> web.StreamResponse:
    try:
        job = dispatcher.accept(endpoint, body.prefix, body.parsed, request_id, timeout)
    except Overloaded as exc:
        return _overloaded(dispatcher, exc, request_id)
    reason: str | None = "internal_error"
    relay: Relay | None = None
    try:
        relay = Relay(dispatcher, job, request)
        try:
            async with asyncio.timeout_at(job.deadline_s):
                response = await relay.run()
        except TimeoutError:
            reason = "deadline"
            return await relay.deadline()
        reason = relay.error_reason
        return response
    except ClientGone:
        reason = "client_disconnect"
        assert relay is not None
        return relay.stream or web.Response(status=499)
    except asyncio.CancelledError:
        # The client hung up; after the whole answer (a client closing on `[DONE]`) it is no error.
        reason = None if relay is not None and relay.delivered else "client_disconnect"
        raise
    finally:
        if relay is not None:
            relay.close()
        dispatcher.finish(job, reason)


def _overloaded(dispatcher: Dispatcher, exc: Overloaded, request_id: str | None) -> web.Response:
    headers = {"Retry-After": str(dispatcher.settings.admission.retry_after_s)}
    if request_id:
        headers["X-Request-Id"] = request_id
    err = protocol.error_body(
        exc.message,
        type="rate_limit_error" if exc.status == 429 else "service_unavailable",
        code=exc.reason,
        retryable=True,
    )
    return web.json_response(err, status=exc.status, headers=headers)


def _timeout_header(request: web.Request) -> float | None:
    raw = request.headers.get("X-Request-Timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise protocol.InvalidRequest(
            f"header 'X-Request-Timeout' must be a positive number of seconds, got {raw[:40]!r}",
            "X-Request-Timeout",
        )
    return value


def _echoable(request: web.Request, max_length: int) -> str | None:
    """The client's `X-Request-Id` when it is valid (echoed on a refusal), else None."""
    try:
        return protocol.request_id(request.headers.get("X-Request-Id"), None, max_length)
    except protocol.InvalidRequest:
        return None


def invalid(exc: protocol.InvalidRequest, request_id: str | None) -> web.Response:
    """A refused request: `exc.status` with the OpenAI error object naming the field."""
    body = protocol.error_body(
        exc.message, param=exc.param, code="invalid_field" if exc.param else "invalid_body"
    )
    headers = {"X-Request-Id": request_id} if request_id else {}
    if exc.status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is not read
    return web.json_response(body, status=exc.status, headers=headers)
