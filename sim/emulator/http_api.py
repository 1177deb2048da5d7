"""SGLang 0.5.23's HTTP API over a `Runtime`: the routes, and the health, info, load and metrics handlers.

The generation routes are `GenerationRoutes` (generation_routes.py), their bodies `ResponseShapes`
(completion_shapes.py), the wire encoding and error bodies sglang_responses.py.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sbs.sim.emulator.engine_runtime import Runtime
from sbs.sim.emulator.generation_routes import GenerationRoutes
from sbs.sim.emulator.requests import RequestError
from sbs.sim.emulator.sglang_responses import generate_error, json_response, openai_error, read_body, unix_s

SGLANG_VERSION = "0.5.23"
LOAD_SECTIONS = {
    "core": None,
    "memory": "memory",
    "spec": "speculative",
    "lora": "lora",
    "disagg": "disaggregation",
    "queues": "queues",
    "all": None,
}
_SECTION_KEYS = ("memory", "speculative", "lora", "disaggregation", "queues")
_FLUSH_TEXT = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)\n"
)


class Api:
    """Route handlers of one engine; `app()` builds the aiohttp application."""

    def __init__(self, runtime: Runtime, *, launch_command: str = "") -> None:
        self.rt = runtime
        self.s = runtime.settings
        self.launch_command = launch_command
        self.startup_time = unix_s()
        self.generation = GenerationRoutes(runtime)

    # --- health and info --------------------------------------------------------------------------
    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.rt.healthy else 503)

    async def ping(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    def server_args(self) -> dict[str, Any]:
        s, rt = self.s, self.rt
        return {
            "model_path": s.model_name,
            "tokenizer_path": s.model_name,
            "served_model_name": s.served_name,
            "host": s.host,
            "port": s.port,
            "tp_size": s.dp_size,
            "dp_size": s.server_info_dp_size or s.dp_size,
            "attn_dp_size": s.dp_size,
            "enable_dp_attention": s.dp_size > 1,
            "ep_size": rt.ep_size,
            "pp_size": 1,
            "nnodes": s.nnodes,
            "node_rank": s.node_rank,
            "disaggregation_mode": s.mode,
            "disaggregation_bootstrap_port": s.bootstrap_port,
            "disaggregation_transfer_backend": "mooncake",
            "load_balance_method": s.resolved_balance,
            "chunked_prefill_size": s.chunked_prefill_size or s.chunk_tokens_per_rank * s.dp_size,
            "max_running_requests": s.max_running_requests,
            "max_total_tokens": s.max_total_tokens,
            "context_length": s.context_length,
            "page_size": 1,
            "disable_radix_cache": s.disable_radix_cache,
            "enable_metrics": True,
            "load_snapshot_publish_interval": s.load_snapshot_publish_interval,
            "decode_log_interval": s.decode_log_interval,
            "stream_interval": s.stream_interval,
            "incremental_streaming_output": False,
        }

    async def server_info(self, _: web.Request) -> web.Response:
        s, rt = self.s, self.rt
        sched = {"max_total_num_tokens": rt.kv_capacity, "max_req_input_len": s.context_length - 1}
        loads = rt.loads()
        states = [
            {
                "dp_rank": r,
                "max_total_num_tokens": rt.kv_capacity,
                "max_running_requests": s.max_running_per_rank,
                "last_gen_throughput": loads[r]["gen_throughput"],
                "avg_spec_accept_length": None,
            }
            for r in range(s.dp_size)
        ]
        return json_response(
            {
                **self.server_args(),
                **sched,
                "scheduler_info": sched,
                "internal_states": states,
                "version": SGLANG_VERSION,
                "frontend": "python",
                "launch_command": self.launch_command,
                "startup_time": self.startup_time,
                "kv_events": None,
                "emulator": {
                    "time_factor": s.time_factor,
                    "hardware": s.hardware,
                    "ep_size": rt.ep_size,
                    "chunk_tokens_per_rank": s.chunk_tokens_per_rank,
                    "max_running_requests_per_rank": s.max_running_per_rank,
                    "lag_s": rt.lag_s,
                    "lagged_steps": rt.lagged_steps,
                },
            }
        )

    async def model_info(self, _: web.Request) -> web.Response:
        s = self.s
        return json_response(
            {
                "model_path": s.model_name,
                "tokenizer_path": s.model_name,
                "served_model_name": s.served_name,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "deepseek_v3",
                "architectures": ["DeepseekV3ForCausalLM"],
                "disaggregation_mode": s.mode,
            }
        )

    def _card(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(self.startup_time),
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.s.context_length,
        }

    async def models(self, _: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [self._card(self.s.served_name)]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.s.served_name:
            return json_response(
                {
                    "error": {
                        "message": f"The model '{name}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                404,
            )
        return json_response(self._card(name))

    async def flush_cache(self, _: web.Request) -> web.Response:
        return web.Response(text=_FLUSH_TEXT, status=200 if self.rt.flush_cache() else 400)

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request)
        except RequestError as err:
            return generate_error(err.status, err.message)
        body = body if isinstance(body, dict) else {}
        self.rt.abort_rid(body.get("rid"), abort_all=bool(body.get("abort_all")))
        return web.Response(status=200)

    # --- load and metrics -------------------------------------------------------------------------
    async def loads(self, request: web.Request) -> web.Response:
        q = request.query
        include = [p.strip() for p in q["include"].split(",")] if q.get("include") else None
        unknown = [p for p in include or () if p not in LOAD_SECTIONS]
        if unknown:
            return openai_error(
                400, f"unknown include section(s) {unknown}; valid: {', '.join(LOAD_SECTIONS)}"
            )
        entries = self.rt.loads()
        if q.get("dp_rank") is not None:
            try:
                rank = int(q["dp_rank"])
            except ValueError:
                return openai_error(400, f"dp_rank must be an integer, got {q['dp_rank']!r}")
            if not 0 <= rank < len(entries):
                return openai_error(400, f"dp_rank {rank} is out of range [0, {len(entries)})")
            entries = [entries[rank]]
        keep = set(_SECTION_KEYS)
        if include is not None and "all" not in include:
            keep = {LOAD_SECTIONS[p] for p in include if LOAD_SECTIONS[p]}
        shaped = [{k: v for k, v in e.items() if k not in _SECTION_KEYS or k in keep} for e in entries]
        if q.get("format") == "prometheus":
            return web.Response(text=_loads_prometheus(shaped), content_type="text/plain", charset="utf-8")
        return json_response(
            {
                "timestamp": datetime.now(UTC).isoformat(),
                "version": SGLANG_VERSION,
                "accelerator": f"NVIDIA {self.s.hardware.upper()} (emulated)",
                "num_accelerators": 1,
                "loads": shaped,
            }
        )

    async def metrics(self, _: web.Request) -> web.Response:
        body = self.rt.render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        middlewares = [api_key_check(self.s.api_key)] if self.s.api_key else []
        app = web.Application(client_max_size=64 * 2**20, middlewares=middlewares)
        r = app.router
        g = self.generation
        r.add_route("POST", "/generate", g.generate)
        r.add_route("PUT", "/generate", g.generate)
        r.add_post("/v1/completions", g.completions)
        r.add_post("/v1/chat/completions", g.chat)
        for path in ("/health", "/health_generate", "/ready"):
            r.add_get(path, self.health)
        r.add_get("/ping", self.ping)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.model_info)
        r.add_get("/v1/models", self.models)
        r.add_get("/v1/models/{model:.+}", self.model)
        r.add_get("/v1/loads", self.loads)
        r.add_get("/metrics", self.metrics)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_post("/abort_request", self.abort_request)
        return app


_OPEN_PREFIXES = ("/health", "/ready", "/metrics")
"""Always reachable, key or not: SGLang matches them by prefix (`decide_request_auth`)."""


def api_key_check(api_key: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """SGLang 0.5.23's `--api-key` middleware (`api_key` only, no `--admin-api-key`): OPTIONS and the
    open prefixes pass; anything else needs `Authorization: Bearer <key>` (scheme in any case,
    constant-time comparison), else 401 `{"error": "Unauthorized"}`."""
    expected = api_key.encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "OPTIONS" or request.path.startswith(_OPEN_PREFIXES):
            return await handler(request)
        scheme, sep, token = request.headers.get("Authorization", "").partition(" ")
        given = token.encode("utf-8", "surrogateescape")
        if sep and scheme.lower() == "bearer" and hmac.compare_digest(given, expected):
            return await handler(request)
        return web.json_response({"error": "Unauthorized"}, status=401)

    return check


def _loads_prometheus(entries: list[dict[str, Any]]) -> str:
    prefixes = {"speculative": "spec", "disaggregation": "disagg"}
    samples: dict[str, list[tuple[int, Any]]] = {}
    for e in entries:
        rank = e["dp_rank"]
        for key, value in e.items():
            if key == "dp_rank":
                continue
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        samples.setdefault(f"sglang_{prefixes.get(key, key)}_{sub}", []).append((rank, v))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                samples.setdefault(f"sglang_{key}", []).append((rank, value))
    lines = []
    for name, values in samples.items():
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f'{name}{{dp_rank="{rank}"}} {v}' for rank, v in values)
    return "\n".join(lines) + "\n"


def worker_app() -> web.Application:
    """A non-leader node of an engine group (`--node-rank` > 0): it only answers `/health`."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/health", health)
    return app
