"""SGLang 0.5.23's HTTP API over a `Runtime`: routes, response shapes, status codes, error bodies.

Error bodies follow SGLang's handlers: a bad `/generate` request (ValueError) is 400
`{"error": {"message"}}`; a request the engine aborts with a status (a PD failure: 500) is
`{"object": "error", "message", "type": "<status>", "param": null, "code": <status>}`; the OpenAI
routes answer `{"object": "error", "message", "type": "BadRequestError", "param": null, "code": 400}`.
A stream that fails after it started ends with `data: {"error": {...}}` and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sbs.sim.emulator import requests, tokens
from sbs.sim.emulator.requests import GenRequest, RequestError
from sbs.sim.emulator.runtime import Req, Runtime

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


def unix_s() -> float:
    """Wall-clock seconds for response timestamps (this module is an IO edge)."""
    return time.time()  # noqa: TID251


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj).encode() + b"\n\n"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def generate_error(status: int, message: str) -> web.Response:
    if status == 400:
        return _json({"error": {"message": message}}, 400)
    return _json(
        {"object": "error", "message": message, "type": str(status), "param": None, "code": status}, status
    )


def openai_error(status: int, message: str) -> web.Response:
    kind = "BadRequestError" if status == 400 else str(status)
    return _json({"object": "error", "message": message, "type": kind, "param": None, "code": status}, status)


def _stream_error(err: RequestError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": HTTPStatus(err.status).phrase,
            "code": err.status,
            "retryable": err.status >= 500,
        }
    }


class Api:
    """Route handlers of one engine; `app()` builds the aiohttp application."""

    def __init__(self, runtime: Runtime, *, launch_command: str = "") -> None:
        self.rt = runtime
        self.s = runtime.settings
        self.launch_command = launch_command
        self.startup_time = unix_s()

    # --- generation -------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}") from None

    def _meta(self, req: Req) -> dict[str, Any]:
        end = req.finished_s if req.finished_s is not None else self.rt.now()
        return {
            "id": req.rid,
            "finish_reason": req.finish_reason,
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": req.output_tokens,
            "cached_tokens": req.cached_tokens,
            "reasoning_tokens": 0,
            "weight_version": "default",
            "num_retractions": 0,
            "e2e_latency": end - req.arrival_s,
            "dp_rank": req.rank,
        }

    def _generate_out(self, req: Req) -> dict[str, Any]:
        n = req.output_tokens
        return {
            "text": tokens.output_text(n),
            "output_ids": tokens.output_ids(n),
            "meta_info": self._meta(req),
        }

    async def _run(
        self,
        request: web.Request,
        parse: Callable[[Any], GenRequest],
        on_error: Callable[[int, str], web.Response],
        respond: Callable[[Req], dict[str, Any]],
        chunks: Callable[[Req, int, dict[str, Any]], Iterator[Any]],
    ) -> web.StreamResponse:
        try:
            gen = parse(await self._body(request))
        except RequestError as err:
            return on_error(err.status, err.message)
        try:
            req = self.rt.submit(gen)
        except RequestError as err:
            if gen.stream:  # SGLang's stream has started: the error arrives as an event
                return await self._stream_refusal(request, err)
            return on_error(err.status, err.message)
        if gen.stream:
            return await self._stream(request, req, chunks, on_error)
        try:
            await req.done.wait()
        except asyncio.CancelledError:
            self.rt.abort(req, "client disconnected")
            raise
        if req.error is not None:
            return on_error(req.error.status, req.error.message)
        return _json(respond(req))

    async def _stream(
        self,
        request: web.Request,
        req: Req,
        chunks: Callable[[Req, int, dict[str, Any]], Iterator[Any]],
        on_error: Callable[[int, str], web.Response],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        state: dict[str, Any] = {}
        sent = 0
        try:
            await resp.prepare(request)
            while True:
                await req.changed.wait()
                req.changed.clear()
                if req.error is not None:
                    await resp.write(_sse(_stream_error(req.error)))
                    break
                if req.output_tokens != sent or req.finished:
                    for chunk in chunks(req, sent, state):
                        await resp.write(chunk if isinstance(chunk, bytes) else _sse(chunk))
                    sent = req.output_tokens
                if req.finished:
                    break
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:  # the client went away between two chunks
            self.rt.abort(req, "client disconnected")
        except asyncio.CancelledError:  # ... or while we waited for the next one
            self.rt.abort(req, "client disconnected")
            raise
        return resp

    async def _stream_refusal(self, request: web.Request, err: RequestError) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(_sse(_stream_error(err)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _generate_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[bytes]:
        # cumulative text and ids (SGLang's default), encoded without re-encoding the whole output
        meta = _dumps(self._meta(req))
        yield f'data: {{{tokens.output_json(req.output_tokens)},"meta_info":{meta}}}\n\n'.encode()

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._run(
            request, requests.parse_generate, generate_error, self._generate_out, self._generate_chunks
        )

    def _model(self, req: Req) -> str:
        return req.gen.model or self.s.served_name

    def _usage(self, req: Req) -> dict[str, Any]:
        return {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": req.output_tokens,
            "total_tokens": req.prompt_tokens + req.output_tokens,
            "prompt_tokens_details": {"cached_tokens": req.cached_tokens} if req.cached_tokens else None,
        }

    @staticmethod
    def _openai_finish(req: Req) -> str | None:
        if req.finish_reason is None:
            return None
        return "length" if req.finish_reason.get("type") == "length" else "abort"

    def _completion_out(self, req: Req) -> dict[str, Any]:
        return {
            "id": req.rid,
            "object": "text_completion",
            "created": int(unix_s()),
            "model": self._model(req),
            "choices": [
                {
                    "index": 0,
                    "text": tokens.output_text(req.output_tokens),
                    "logprobs": None,
                    "finish_reason": self._openai_finish(req),
                    "matched_stop": None,
                }
            ],
            "usage": self._usage(req),
        }

    def _completion_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        head = {
            "id": req.rid,
            "object": "text_completion",
            "created": int(unix_s()),
            "model": self._model(req),
        }
        yield {
            **head,
            "choices": [
                {
                    "index": 0,
                    "text": tokens.output_text(req.output_tokens, sent),
                    "logprobs": None,
                    "finish_reason": self._openai_finish(req),
                    "matched_stop": None,
                }
            ],
        }
        if req.finished and req.gen.include_usage:
            yield {**head, "choices": [], "usage": self._usage(req)}

    def _chat_out(self, req: Req) -> dict[str, Any]:
        return {
            "id": req.rid,
            "object": "chat.completion",
            "created": int(unix_s()),
            "model": self._model(req),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": tokens.output_text(req.output_tokens),
                        "reasoning_content": None,
                        "tool_calls": None,
                    },
                    "logprobs": None,
                    "finish_reason": self._openai_finish(req),
                    "matched_stop": None,
                }
            ],
            "usage": self._usage(req),
        }

    def _chat_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        head = {
            "id": req.rid,
            "object": "chat.completion.chunk",
            "created": int(unix_s()),
            "model": self._model(req),
        }
        if not state.get("role_sent"):
            state["role_sent"] = True
            yield {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        delta = {"content": tokens.output_text(req.output_tokens, sent)} if req.output_tokens > sent else {}
        yield {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": self._openai_finish(req),
                    "matched_stop": None,
                }
            ],
        }
        if req.finished and req.gen.include_usage:
            yield {**head, "choices": [], "usage": self._usage(req)}

    def _require_json(self, request: web.Request) -> web.Response | None:
        if request.content_type != "application/json":
            return openai_error(
                400,
                "[{'loc': ['header', 'content-type'], 'msg': \"Unsupported Media Type: Only "
                "'application/json' is allowed\", 'type': 'value_error'}]",
            )
        return None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        bad = self._require_json(request)
        if bad is not None:
            return bad
        return await self._run(
            request, requests.parse_completion, openai_error, self._completion_out, self._completion_chunks
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        bad = self._require_json(request)
        if bad is not None:
            return bad
        return await self._run(request, requests.parse_chat, openai_error, self._chat_out, self._chat_chunks)

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
        return _json(
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
        return _json(
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
        return _json({"object": "list", "data": [self._card(self.s.served_name)]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.s.served_name:
            return _json(
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
        return _json(self._card(name))

    async def flush_cache(self, _: web.Request) -> web.Response:
        return web.Response(text=_FLUSH_TEXT, status=200 if self.rt.flush_cache() else 400)

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
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
        return _json(
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
        app = web.Application(client_max_size=64 * 2**20)
        r = app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat)
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
