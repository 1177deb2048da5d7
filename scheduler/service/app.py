"""The aiohttp application: routes, and the dispatcher's start and stop.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST|PUT /generate` (scheduled and
relayed), `GET /v1/models` (from a usable decode engine), `GET /health` (liveness), `GET /readyz`
(a prefill and a decode of one revision are usable), `GET /metrics`, `GET /openapi.json`,
`GET /engines` (what discovery and the health checks know).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import openapi, protocol, relay
from sbs.scheduler.service.discovery import EngineSource, StaticSource
from sbs.scheduler.service.dispatcher import Dispatcher
from sbs.scheduler.service.metrics import Metrics
from sbs.settings.service import ServiceSettings

DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def make_app(settings: ServiceSettings, *, sources: Iterable[EngineSource] | None = None) -> web.Application:
    """The service for `settings`; engines come from `sources` (default: the static list)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    dispatcher = Dispatcher(settings, Metrics())
    app[DISPATCHER] = dispatcher

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
        if k8s is not None:
            await k8s.client.close()

    app.cleanup_ctx.append(lifecycle)
    for endpoint in protocol.ENDPOINTS:
        app.router.add_post(endpoint, _generation_handler(endpoint))
    app.router.add_put(protocol.GENERATE, _generation_handler(protocol.GENERATE))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/engines", engines)
    return app


def _generation_handler(endpoint: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        return await relay.serve(request.app[DISPATCHER], request, endpoint)

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


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DISPATCHER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(_: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def engines(request: web.Request) -> web.Response:
    return web.json_response(request.app[DISPATCHER].describe())


async def models(request: web.Request) -> web.Response:
    """`/v1/models` of a usable decode engine (all engines of a deployment serve one model)."""
    dispatcher = request.app[DISPATCHER]
    assert dispatcher.session is not None
    for engine in dispatcher.registry.usable(Role.DECODE):
        try:
            async with dispatcher.session.get(f"{engine.record.url}/v1/models") as resp:
                if resp.status == 200:
                    return web.Response(body=await resp.read(), content_type="application/json")
        except (aiohttp.ClientError, OSError):
            continue
    body = protocol.error_body(
        "no usable decode engine", type="service_unavailable", code="not_ready", retryable=True
    )
    return web.json_response(
        body, status=503, headers={"Retry-After": str(dispatcher.settings.admission.retry_after_s)}
    )
