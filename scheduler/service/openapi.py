"""The OpenAPI 3.1 description of the service's own API (hand-written; a test checks it lists every
route the app serves). Generation bodies are described by the fields the scheduler reads; everything
else is passed to the engines as sent."""

from __future__ import annotations

from typing import Any

from sbs.scheduler.service import protocol
from sbs.scheduler.service.auth import OPEN_PATHS
from sbs.settings.service import LimitsSettings

_ERROR = {"$ref": "#/components/schemas/Error"}
_ENGINE_ERROR = {"$ref": "#/components/schemas/EngineError"}
_TIMEOUT = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "Seconds this request may take end to end (at most the configured deadline).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
_NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 1, "maximum": protocol.MAX_TOKENS}
_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": protocol.MAX_TOKENS}
_STREAM = {"type": "boolean", "default": False}


def _request_id(limits: LimitsSettings) -> dict[str, Any]:
    return {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "The client's request id: echoed in the answer and logged (else the body's `rid`, "
        "else a generated one; empty counts as absent); the engines get the service's own ids.",
        "schema": {"type": "string", "pattern": f"^[!-~]{{0,{limits.max_request_id_length}}}$"},
    }


def _error(description: str, *, retry_after: bool = False, engine: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"schema": {"type": "string"}}}
    if retry_after:
        headers["Retry-After"] = {
            "schema": {"type": "integer"},
            "description": "Seconds to wait before retrying.",
        }
    schema = {"anyOf": [_ERROR, _ENGINE_ERROR]} if engine else _ERROR
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": schema}},
    }


_UNAUTHORIZED = {
    "description": "No valid API token (`Authorization: Bearer <token>` or `X-API-Key: <token>`).",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": _ERROR}},
}


def _generation(summary: str, schema: str, description: str, limits: LimitsSettings) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "parameters": [_request_id(limits), _TIMEOUT],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
        "responses": {
            "200": {
                "description": "The decode engine's answer: JSON, or `text/event-stream` when `stream` is "
                "true (ended by `data: [DONE]`; a failure after the stream started arrives as an "
                "`error` event).",
                "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            "400": _error(
                "Invalid body or header (`error.param` names the field), or the engine's own refusal "
                "(passed through as the engine sent it).",
                engine=True,
            ),
            "408": _error(
                f"The body did not arrive within `limits.body_timeout_s` ({limits.body_timeout_s:g} s)."
            ),
            "413": _error(
                f"The body is larger than `limits.max_body_bytes` ({limits.max_body_bytes} bytes)."
            ),
            "415": _error("The body's charset is not UTF-8."),
            "429": _error(
                "Overloaded: the buffer or the outstanding-request limit is full.", retry_after=True
            ),
            "4XX": _error(
                "The engine refused the request (passed through as the engine sent it).", engine=True
            ),
            "503": _error(
                "No usable engines, or an engine failed after the prefill completed (retryable).",
                retry_after=True,
            ),
            "504": _error("The request's deadline passed.", retry_after=True),
        },
    }


_SAMPLING = {"type": "object", "properties": {"max_new_tokens": _NULLABLE_COUNT}}
_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "text": {"type": ["string", "null"]}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool", "developer", "function"]},
        "content": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}]
        },
    },
}
_RID = {"type": ["string", "null"], "description": "The client's id, as `X-Request-Id` (which wins)."}


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                        "retryable": {"type": "boolean"},
                    },
                }
            },
        },
        "EngineError": {
            "description": 'An SGLang engine\'s error body, passed through: `{"error": {"message"}}` '
            '(`/generate`) or `{"object": "error", "message", "type", "param", "code"}`.',
            "anyOf": [
                {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message"],
                            "properties": {"message": {"type": "string"}},
                        }
                    },
                },
                {
                    "type": "object",
                    "required": ["object", "message"],
                    "properties": {"object": {"const": "error"}, "message": {"type": "string"}},
                },
            ],
        },
        "GenerateRequest": {
            "type": "object",
            "additionalProperties": True,
            "description": "Exactly one of `text` and `input_ids` (null counts as absent).",
            "properties": {
                "text": {"type": ["string", "null"]},
                "input_ids": {"type": ["array", "null"], "items": _TOKEN_ID, "minItems": 1},
                "sampling_params": _SAMPLING,
                "stream": _STREAM,
                "rid": _RID,
            },
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["input_ids"], "properties": {"input_ids": {"type": "array"}}},
            ],
        },
        "CompletionRequest": {
            "type": "object",
            "additionalProperties": True,
            "required": ["prompt"],
            "properties": {
                "model": {"type": ["string", "null"]},
                "prompt": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": _TOKEN_ID, "minItems": 1},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                        {
                            "type": "array",
                            "items": {"type": "array", "items": _TOKEN_ID, "minItems": 1},
                            "minItems": 1,
                            "maxItems": 1,
                        },
                    ]
                },
                "max_tokens": {**_NULLABLE_COUNT, "default": 16},
                "stream": _STREAM,
                "rid": _RID,
            },
        },
        "ChatRequest": {
            "type": "object",
            "additionalProperties": True,
            "required": ["messages"],
            "properties": {
                "model": {"type": ["string", "null"]},
                "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                "max_tokens": _NULLABLE_COUNT,
                "max_completion_tokens": _NULLABLE_COUNT,
                "stream": _STREAM,
                "rid": _RID,
            },
        },
    }


def document(*, auth: bool = False, limits: LimitsSettings | None = None) -> dict[str, Any]:
    """The OpenAPI document served at `/openapi.json` (`auth`: the service requires a token)."""
    limits = limits or LimitsSettings()
    simple = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    unavailable = _error("No usable decode engine (retryable).", retry_after=True)
    paths: dict[str, Any] = {
        protocol.CHAT: {
            "post": _generation(
                "OpenAI chat completion", "ChatRequest", "One chat; `n` > 1 is engine-defined.", limits
            )
        },
        protocol.COMPLETIONS: {
            "post": _generation(
                "OpenAI completion", "CompletionRequest", "One prompt (batches are refused).", limits
            )
        },
        protocol.GENERATE: {
            "post": _generation(
                "SGLang generate", "GenerateRequest", "SGLang's native API, one prompt.", limits
            ),
            "put": _generation(
                "SGLang generate", "GenerateRequest", "Same as POST, as SGLang allows.", limits
            ),
        },
        "/v1/models": {
            "get": {
                "summary": "Models served (from a usable decode engine)",
                "responses": {"200": simple, "503": unavailable},
            }
        },
        "/health": {"get": {"summary": "Liveness", "responses": {"200": simple}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: a prefill and a decode engine of one revision are usable",
                "responses": {"200": simple, "503": {**simple, "description": "Not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": simple}}},
        "/engines": {
            "get": {"summary": "Known engines, their state and the pools", "responses": {"200": simple}}
        },
    }
    components: dict[str, Any] = {"schemas": _schemas()}
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, ops in paths.items():
            if path in OPEN_PATHS:
                continue
            for op in ops.values():
                op["security"] = [{"bearer": []}, {"apiKey": []}]
                op["responses"]["401"] = _UNAUTHORIZED
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SBS scheduler",
            "version": "0.1.0",
            "description": "Staggered Batch Scheduling in front of SGLang prefill/decode engines. "
            "OpenAI- and SGLang-compatible generation endpoints; each request is sent to a prefill and "
            "a decode engine as a PD pair with pinned DP ranks.",
        },
        "paths": paths,
        "components": components,
    }
