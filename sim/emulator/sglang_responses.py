"""SGLang's wire encoding: compact JSON, server-sent events, request bodies and error bodies.

Error bodies follow SGLang's handlers: a bad `/generate` request (ValueError) is 400
`{"error": {"message"}}`; a request the engine aborts with a status (a PD failure: 500) is
`{"object": "error", "message", "type": "<status>", "param": null, "code": <status>}`; the OpenAI
routes answer `{"object": "error", "message", "type": "BadRequestError", "param": null, "code": 400}`.
A stream that fails after it started ends with `data: {"error": {...}}` and `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from sbs.sim.emulator.requests import RequestError


def unix_s() -> float:
    """Wall-clock seconds for response timestamps (this module is an IO edge)."""
    return time.time()  # noqa: TID251


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\n\n"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


async def read_body(request: web.Request) -> Any:
    """The request's JSON body (None when empty); RequestError 400 when it is not JSON."""
    raw = await request.read()
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None


def generate_error(status: int, message: str) -> web.Response:
    if status == 400:
        return json_response({"error": {"message": message}}, 400)
    return json_response(
        {"object": "error", "message": message, "type": str(status), "param": None, "code": status}, status
    )


def openai_error(status: int, message: str) -> web.Response:
    kind = "BadRequestError" if status == 400 else str(status)
    return json_response(
        {"object": "error", "message": message, "type": kind, "param": None, "code": status}, status
    )


def stream_error(err: RequestError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": HTTPStatus(err.status).phrase,
            "code": err.status,
            "retryable": err.status >= 500,
        }
    }
