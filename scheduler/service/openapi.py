"""The OpenAPI 3.1 description of the service's own API (hand-written; a test checks it lists every
route the app serves). Generation bodies are described by the fields the scheduler reads; everything
else is passed to the engines as sent."""

from __future__ import annotations

from typing import Any

from sbs.scheduler.service import protocol

_ERROR = {"$ref": "#/components/schemas/Error"}
_REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "Request id (echoed in the answer; generated when absent; the engines see it as `rid`).",
    "schema": {"type": "string"},
}
_TIMEOUT = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "Seconds this request may take end to end (at most the configured deadline).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"schema": {"type": "string"}}}
    if retry_after:
        headers["Retry-After"] = {
            "schema": {"type": "integer"},
            "description": "Seconds to wait before retrying.",
        }
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": _ERROR}},
    }


def _generation(summary: str, schema: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "parameters": [_REQUEST_ID, _TIMEOUT],
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
            "400": _error("Invalid body; `error.param` names the field."),
            "429": _error(
                "Overloaded: the buffer or the outstanding-request limit is full.", retry_after=True
            ),
            "503": _error(
                "No usable engines, or an engine failed after the prefill completed (retryable).",
                retry_after=True,
            ),
            "504": _error("The request's deadline passed.", retry_after=True),
        },
    }


_SAMPLING = {"type": "object", "properties": {"max_new_tokens": {"type": "integer", "minimum": 1}}}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool", "developer", "function"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "properties": {"type": {}, "text": {}}}},
                {"type": "null"},
            ]
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document served at `/openapi.json`."""
    simple = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SBS scheduler",
            "version": "0.1.0",
            "description": "Staggered Batch Scheduling in front of SGLang prefill/decode engines. "
            "OpenAI- and SGLang-compatible generation endpoints; each request is sent to a prefill and "
            "a decode engine as a PD pair with pinned DP ranks.",
        },
        "paths": {
            protocol.CHAT: {
                "post": _generation(
                    "OpenAI chat completion", "ChatRequest", "One chat; `n` > 1 is engine-defined."
                )
            },
            protocol.COMPLETIONS: {
                "post": _generation(
                    "OpenAI completion", "CompletionRequest", "One prompt (batches are refused)."
                )
            },
            protocol.GENERATE: {
                "post": _generation("SGLang generate", "GenerateRequest", "SGLang's native API, one prompt."),
                "put": _generation("SGLang generate", "GenerateRequest", "Same as POST, as SGLang allows."),
            },
            "/v1/models": {
                "get": {
                    "summary": "Models served (from a usable decode engine)",
                    "responses": {"200": simple},
                }
            },
            "/health": {"get": {"summary": "Liveness", "responses": {"200": simple}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: a prefill and a decode engine of one revision are usable",
                    "responses": {"200": simple, "503": {"description": "Not ready"}},
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
        },
        "components": {
            "schemas": {
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
                "GenerateRequest": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "Exactly one of `text` and `input_ids`.",
                    "properties": {
                        "text": {"type": "string"},
                        "input_ids": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                        "sampling_params": _SAMPLING,
                        "stream": {"type": "boolean", "default": False},
                        "rid": {"type": "string"},
                    },
                },
                "CompletionRequest": {
                    "type": "object",
                    "additionalProperties": True,
                    "required": ["prompt"],
                    "properties": {
                        "model": {"type": "string"},
                        "prompt": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                                {"type": "array", "items": {"type": "string"}, "maxItems": 1},
                            ]
                        },
                        "max_tokens": {"type": "integer", "minimum": 1, "default": 16},
                        "stream": {"type": "boolean", "default": False},
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "additionalProperties": True,
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                        "max_tokens": {"type": "integer", "minimum": 1},
                        "max_completion_tokens": {"type": "integer", "minimum": 1},
                        "stream": {"type": "boolean", "default": False},
                    },
                },
            }
        },
    }
