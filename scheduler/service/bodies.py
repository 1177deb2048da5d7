"""Client request bodies, from the socket to what the engines are sent, within the service's limits.

`read_body` reads the bytes (413 past `limits.max_body_bytes`, 408 past `limits.body_timeout_s`, 415
for a charset other than UTF-8); `decode` turns them into a JSON document (400 for invalid UTF-8,
invalid JSON, `NaN`/`Infinity`, nesting deeper than `limits.max_json_depth` or a number out of range),
validates and sizes it (`protocol.parse`) and serialises what the engines get (`engine_prefix`).
`BodyParser` runs `decode` on the event loop for small bodies and in worker processes for large ones:
json and pydantic hold the GIL, so a thread would stall the loop just the same (measured: 4 MiB of
nested arrays, about 1 s either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sbs.scheduler.service import protocol
from sbs.scheduler.service.upstream import engine_prefix
from sbs.settings.service import EstimateSettings, LimitsSettings

_UTF8 = frozenset({"utf-8", "utf8"})


class ParseUnavailable(Exception):
    """A parse worker died (its process was killed): the request may be sent again."""


@dataclass(frozen=True, slots=True)
class Body:
    """A valid client body: what the scheduler needs to know, and the engines' JSON (an open object)."""

    parsed: protocol.Parsed
    prefix: bytes
    """The client's JSON object without the PD fields and without its closing brace."""


async def read_body(request: web.Request, limits: LimitsSettings) -> bytes:
    """The request's body. Raises `InvalidRequest` (413, 408, 415) naming the limit or header."""
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise protocol.InvalidRequest(
            f"header 'Content-Type': charset {charset[:40]!r} is not supported; send UTF-8 JSON",
            "Content-Type",
            status=415,
        )
    size = request.content_length
    if size is not None and size > limits.max_body_bytes:
        raise _too_large(limits)
    try:
        if request.content.is_eof():  # the whole body is in already: nothing to time
            return await request.read()
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limits) from None
    except TimeoutError:
        raise protocol.InvalidRequest(
            f"the request body did not arrive within {limits.body_timeout_s:g} s", status=408
        ) from None


def _too_large(limits: LimitsSettings) -> protocol.InvalidRequest:
    return protocol.InvalidRequest(
        f"the request body is larger than the limit of {limits.max_body_bytes} bytes", status=413
    )


def decode(
    endpoint: str, raw: bytes, estimate: EstimateSettings, limits: LimitsSettings, own_priority: bool = False
) -> Body:
    """Bytes → a valid body (pure: runs in worker processes too). Raises `InvalidRequest`.
    `own_priority`: the service sends the engines its own `priority` (a `+prio` policy)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise protocol.InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        doc = _DECODER.decode(text)
    except RecursionError:
        raise _too_deep(limits.max_json_depth) from None
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise protocol.InvalidRequest(f"the request body is not valid JSON: {message}{where}") from None
    check_structure(doc, limits.max_json_depth)
    parsed = protocol.parse(endpoint, doc, estimate)
    return Body(parsed, engine_prefix(doc, own_priority=own_priority, raw=raw))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""What `json.loads(text, parse_constant=_no_constant)` builds on every call."""


def _too_deep(max_depth: int) -> protocol.InvalidRequest:
    return protocol.InvalidRequest(
        f"the request body is nested deeper than {max_depth} levels of arrays and objects"
    )


def check_structure(doc: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth`, numbers beyond a float (`1e400` reads as infinity) and
    strings that are not Unicode (a lone surrogate escape such as `"\\ud800"`: no engine can encode it)."""
    stack: list[tuple[Any, int]] = [([doc], -1)]
    while stack:
        node, depth = stack.pop()
        if depth >= max_depth:
            raise _too_deep(max_depth)
        if isinstance(node, dict):
            for key in node:
                _check_text(key)
            values: Any = node.values()
        else:
            values = node
        for v in values:
            if isinstance(v, dict | list):
                stack.append((v, depth + 1))
            elif isinstance(v, str):
                _check_text(v)
            elif isinstance(v, float) and not math.isfinite(v):
                raise protocol.InvalidRequest("the request body holds a number out of range")


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise protocol.InvalidRequest(
            "the request body holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
        ) from None


class BodyParser:
    """`decode` on the loop for bodies up to `limits.inline_parse_bytes`, in processes above."""

    def __init__(
        self, estimate: EstimateSettings, limits: LimitsSettings, own_priority: bool = False
    ) -> None:
        self._estimate = estimate
        self._limits = limits
        self._own_priority = own_priority
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, endpoint: str, raw: bytes) -> Body:
        if len(raw) <= self._limits.inline_parse_bytes:
            return decode(endpoint, raw, self._estimate, self._limits, self._own_priority)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self._limits.parse_workers, mp_context=multiprocessing.get_context("spawn")
            )
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                pool, decode, endpoint, raw, self._estimate, self._limits, self._own_priority
            )
        except BrokenProcessPool:
            if self._pool is pool:  # a worker was killed: start afresh for the next body
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ParseUnavailable() from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(RuntimeError):
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
