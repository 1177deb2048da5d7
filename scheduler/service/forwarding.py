"""Forwarding a request to a peer scheduler replica, for a replica that owns no prefill instance.

The body goes as the client sent it, with its id, timeout and credentials, marked `X-SBS-Forwarded`
so the peer serves it itself whatever it owns (a request is forwarded at most once). The peer's
answer (JSON or SSE) is streamed back unchanged. A peer that cannot be reached, or breaks off before
answering, gives the client an explicit retryable 503.
"""

from __future__ import annotations

import contextlib
import json
import logging

import aiohttp
from aiohttp import web
from sbs.scheduler.service import protocol

log = logging.getLogger(__name__)

FORWARDED = "X-SBS-Forwarded"
_PASS_IN = ("Content-Type", "Authorization", "X-API-Key", "X-Request-Id", "X-Request-Timeout")
_PASS_OUT = ("Content-Type", "X-Request-Id", "Retry-After", "Cache-Control")


def forwarded(request: web.Request) -> bool:
    return FORWARDED in request.headers


async def forward(
    session: aiohttp.ClientSession, request: web.Request, raw: bytes, peer_url: str, me: str
) -> web.StreamResponse:
    """Send the request to `peer_url` and relay its answer."""
    headers = {k: request.headers[k] for k in _PASS_IN if k in request.headers}
    headers[FORWARDED] = me
    stream: web.StreamResponse | None = None
    try:
        async with session.request(
            request.method, peer_url + request.path_qs, data=raw, headers=headers
        ) as resp:
            out = {k: resp.headers[k] for k in _PASS_OUT if k in resp.headers}
            stream = web.StreamResponse(status=resp.status, headers=out)
            await stream.prepare(request)
            async for chunk in resp.content.iter_any():
                await stream.write(chunk)
            await stream.write_eof()
            return stream
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        msg = f"scheduler replica {peer_url} failed while serving a forwarded request ({why})"
        log.warning("%s", msg)
        if stream is None:
            err = protocol.error_body(msg, type="service_unavailable", code="replica_failed", retryable=True)
            return web.json_response(err, status=503, headers={"Retry-After": "1"})
        if stream.content_type == "text/event-stream":
            err = protocol.error_body(msg, type="service_unavailable", code="replica_failed", retryable=True)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await stream.write(f"\n\ndata: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode())
        return stream
