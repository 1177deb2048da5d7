"""The generation routes: `/generate`, `/v1/completions`, `/v1/chat/completions`.

Each parses its body into a `GenRequest`, submits it to the `Runtime` and answers with the whole
response when the request is done, or streams server-sent events as tokens arrive. A client that
goes away aborts its request. A streamed request the engine refuses still gets a stream, whose one
event is the error, as SGLang's stream has started by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from sbs.sim.emulator import requests
from sbs.sim.emulator.completion_shapes import ResponseShapes
from sbs.sim.emulator.engine_runtime import Runtime
from sbs.sim.emulator.request_state import Req
from sbs.sim.emulator.requests import GenRequest, RequestError
from sbs.sim.emulator.sglang_responses import (
    generate_error,
    json_response,
    openai_error,
    read_body,
    sse,
    stream_error,
)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class GenerationRoutes:
    """The generation handlers of one engine."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.shapes = ResponseShapes(runtime)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        sh = self.shapes
        return await self._run(
            request, requests.parse_generate, generate_error, sh.generate_out, sh.generate_chunks
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        sh = self.shapes
        return await self._openai(request, requests.parse_completion, sh.completion_out, sh.completion_chunks)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        sh = self.shapes
        return await self._openai(request, requests.parse_chat, sh.chat_out, sh.chat_chunks)

    async def _openai(
        self,
        request: web.Request,
        parse: Callable[[Any], GenRequest],
        respond: Callable[[Req], dict[str, Any]],
        chunks: Callable[[Req, int, dict[str, Any]], Iterator[Any]],
    ) -> web.StreamResponse:
        bad = _require_json(request)
        if bad is not None:
            return bad
        return await self._run(request, parse, openai_error, respond, chunks)

    async def _run(
        self,
        request: web.Request,
        parse: Callable[[Any], GenRequest],
        on_error: Callable[[int, str], web.Response],
        respond: Callable[[Req], dict[str, Any]],
        chunks: Callable[[Req, int, dict[str, Any]], Iterator[Any]],
    ) -> web.StreamResponse:
        try:
            gen = parse(await read_body(request))
        except RequestError as err:
            return on_error(err.status, err.message)
        try:
            req = self.rt.submit(gen)
        except RequestError as err:
            if gen.stream:  # SGLang's stream has started: the error arrives as an event
                return await _stream_refusal(request, err)
            return on_error(err.status, err.message)
        if gen.stream:
            return await self._stream(request, req, chunks)
        try:
            await req.done.wait()
        except asyncio.CancelledError:
            self.rt.abort(req, "client disconnected")
            raise
        if req.error is not None:
            return on_error(req.error.status, req.error.message)
        return json_response(respond(req))

    async def _stream(
        self,
        request: web.Request,
        req: Req,
        chunks: Callable[[Req, int, dict[str, Any]], Iterator[Any]],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        state: dict[str, Any] = {}
        sent = 0
        try:
            await resp.prepare(request)
            while True:
                await req.changed.wait()
                req.changed.clear()
                if req.error is not None:
                    await resp.write(sse(stream_error(req.error)))
                    break
                if req.output_tokens != sent or req.finished:
                    for chunk in chunks(req, sent, state):
                        await resp.write(chunk if isinstance(chunk, bytes) else sse(chunk))
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


async def _stream_refusal(request: web.Request, err: RequestError) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(sse(stream_error(err)))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _require_json(request: web.Request) -> web.Response | None:
    if request.content_type != "application/json":
        return openai_error(
            400,
            "[{'loc': ['header', 'content-type'], 'msg': \"Unsupported Media Type: Only "
            "'application/json' is allowed\", 'type': 'value_error'}]",
        )
    return None
