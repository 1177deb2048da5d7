"""The aiohttp application: routes, middlewares, and the dispatcher's start and stop.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST|PUT /generate` (scheduled and
relayed), `GET /v1/models` (from a usable decode engine), `GET /health` (liveness), `GET /readyz`
(a prefill and a decode of one revision are usable), `GET /metrics`, `GET /openapi.json`,
`GET /engines` (what discovery and the health checks know).

One middleware (`_front`, one coroutine frame per request where three took one each) does, in this
order: the connection is busy while its request is handled (`connections.ConnectionGuard`), the
token check when `auth` is set (`auth.TokenAuth`), and a last resort that turns an unexpected
exception into a JSON 500 (logged, never echoing it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import generation, openapi, protocol
from sbs.scheduler.service.auth import TokenAuth
from sbs.scheduler.service.bodies import BodyParser
from sbs.scheduler.service.connections import GUARD, ConnectionGuard
from sbs.scheduler.service.discovery import EngineSource, StaticSource
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.scheduler.service.metrics import Metrics
from sbs.settings import scheduling
from sbs.settings.service import ServiceSettings

log = logging.getLogger(__name__)

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
PARSER = web.AppKey("parser", BodyParser)


def make_app(settings: ServiceSettings, *, sources: Iterable[EngineSource] | None = None) -> web.Application:
    """The service for `settings`; engines come from `sources` (default: the static list)."""
    metrics = Metrics()
    dispatcher = Dispatcher(settings, metrics)

    def connections_changed(open_now: int, refused: bool) -> None:
        metrics.connections.set(open_now)
        if refused:
            metrics.rejected.labels("too_many_connections").inc()

    guard = ConnectionGuard(settings.limits, on_change=connections_changed)
    auth = TokenAuth(settings.auth.tokens_file) if settings.auth is not None else None
    front = _front(guard, auth, metrics.rejected.labels("unauthorized").inc)
    app = web.Application(client_max_size=settings.limits.max_body_bytes, middlewares=[front])
    app[DISPATCHER] = dispatcher
    policy = settings.scheduler.policy
    own_priority = isinstance(policy, scheduling.ImmediatePolicy) and policy.engine_priority
    app[PARSER] = parser = BodyParser(settings.estimate, settings.limits, own_priority)
    app[GUARD] = guard

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        chosen = list(sources) if sources is not None else [StaticSource(settings.engines)]
        k8s = None
        if sources is None and settings.engines.kubernetes is not None:
            from sbs.scheduler.service import kube_discovery

            k8s = await kube_discovery.from_settings(settings.engines.kubernetes)
            chosen.append(k8s)
        await dispatcher.start(chosen)
        yield
        await dispatcher.close()
        await parser.close()
        if k8s is not None:
            await k8s.client.close()

    app.cleanup_ctx.append(lifecycle)
    for endpoint in protocol.ENDPOINTS:
        app.router.add_post(endpoint, _generation_handler(endpoint))
    app.router.add_put(protocol.GENERATE, _generation_handler(protocol.GENERATE))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/engines", engines)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _front(
    guard: ConnectionGuard, auth: TokenAuth | None, on_refused: Callable[[], None]
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The app's middleware: connection tracking, the token check, the last resort."""

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = guard.lookup(request.transport)
        if conn is not None:
            guard.request_started(conn)
        try:
            if auth is not None and not auth.admits(request):
                on_refused()
                return auth.refusal()
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                body = protocol.error_body("internal error", type="internal_error", code="internal_error")
                return web.json_response(body, status=500)
        finally:
            if conn is not None:
                guard.request_done(conn)

    return front


def _generation_handler(endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await generation.serve(request.app[DISPATCHER], request.app[PARSER], request, endpoint)

    handler.__name__ = f"generation_{endpoint.strip('/').replace('/', '_')}"
    return handler


async def health(_: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: at least one prefill and one decode engine of the same revision are usable."""
    dispatcher = request.app[DISPATCHER]
    ready = dispatcher.ready()
    pools = [
        {"revision": p.revision, "usable": p.usable()}
        for p in sorted(dispatcher.pools.by_revision.values(), key=lambda p: p.revision)
    ]
    return web.json_response({"ready": ready, "pools": pools}, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[DISPATCHER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(auth=request.app[DISPATCHER].settings.auth is not None))


async def engines(request: web.Request) -> web.Response:
    return web.json_response(request.app[DISPATCHER].describe())


async def models(request: web.Request) -> web.Response:
    """`/v1/models` of a usable decode engine (all engines of a deployment serve one model)."""
    dispatcher = request.app[DISPATCHER]
    assert dispatcher.poll_session is not None
    for engine in dispatcher.registry.usable(Role.DECODE):
        try:
            async with asyncio.timeout(dispatcher.settings.engines.poll_timeout_s):
                async with dispatcher.poll_session.get(f"{engine.record.url}/v1/models") as resp:
                    if resp.status == 200:
                        return web.Response(body=await resp.read(), content_type="application/json")
        except (TimeoutError, aiohttp.ClientError, OSError):
            continue
    body = protocol.error_body(
        "no usable decode engine", type="service_unavailable", code="not_ready", retryable=True
    )
    return web.json_response(
        body, status=503, headers={"Retry-After": str(dispatcher.settings.admission.retry_after_s)}
    )
