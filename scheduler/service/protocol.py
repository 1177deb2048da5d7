"""The client-facing request bodies: validation, sizing and the OpenAI error shape.

Bodies are forwarded to the engines as they came (plus the PD fields), so the models below check only
what the scheduler relies on and let every other field through. A bad body is answered 400 with the
field named: ``{"error": {"message": "field 'messages': ...", "type": "invalid_request_error",
"param": "messages", "code": "invalid_field"}}``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sbs.settings import service as service_settings

GENERATE = "/generate"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
ENDPOINTS = (CHAT, COMPLETIONS, GENERATE)


class InvalidRequest(Exception):
    """A client body the service refuses (400); `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    retryable: bool = False,
) -> dict[str, Any]:
    """An OpenAI-style error object (plus SGLang's `retryable`)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, "retryable": retryable}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    stream: bool = False


class _SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_new_tokens: int | None = Field(None, ge=1)


class GenerateBody(_Body):
    """SGLang `/generate` (one prompt: `text` or `input_ids`; batches are refused)."""

    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: _SamplingParams = _SamplingParams()
    rid: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateBody:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'text' and 'input_ids' (batched prompts are not supported)")
        if self.input_ids is not None and not self.input_ids:
            raise ValueError("'input_ids' must not be empty")
        return self


class CompletionBody(_Body):
    """OpenAI `/v1/completions` (one prompt: a string or a list of token ids)."""

    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    rid: str | None = None


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[_ContentPart] | None = None


class ChatBody(_Body):
    """OpenAI `/v1/chat/completions`."""

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    rid: str | None = None


_MODELS: dict[str, type[_Body]] = {GENERATE: GenerateBody, COMPLETIONS: CompletionBody, CHAT: ChatBody}


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the scheduler needs to know about a client request."""

    stream: bool
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]
    rid: str | None


def parse(endpoint: str, body: Any, estimate: service_settings.EstimateSettings) -> Parsed:
    """Validate `body` for `endpoint` and size it. Raises `InvalidRequest` naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        m = _MODELS[endpoint].model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-")))
        got = first.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f", got {got!r}"
        where = f"field '{loc}': " if loc else ""
        raise InvalidRequest(f"{where}{first['msg']}{shown}", loc or None) from None
    text = ""
    ids: list[int] | None = None
    if isinstance(m, GenerateBody):
        text, ids = m.text or "", m.input_ids
        out = m.sampling_params.max_new_tokens or 128
    elif isinstance(m, CompletionBody):
        prompt = m.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise InvalidRequest(
                    "field 'prompt': batched prompts are not supported; send one per request", "prompt"
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            text = prompt
        else:
            ids = list(prompt)  # type: ignore[arg-type]
            if not ids:
                raise InvalidRequest("field 'prompt': must not be empty", "prompt")
        out = m.max_tokens or 16
    else:
        assert isinstance(m, ChatBody)
        text = "\n".join(_message_text(msg) for msg in m.messages)
        out = m.max_completion_tokens or m.max_tokens or estimate.default_max_tokens
    if ids is not None:
        tokens = len(ids)
        hashes = _block_hashes_ids(ids, estimate.prefix_block_tokens)
    else:
        data = text.encode()
        tokens = max(1, math.ceil(len(data) / estimate.chars_per_token))
        block = int(estimate.prefix_block_tokens * estimate.chars_per_token)
        hashes = _block_hashes_bytes(data, block)
    return Parsed(m.stream, tokens, out, hashes, m.rid)


def _message_text(msg: _Message) -> str:
    if isinstance(msg.content, str):
        return f"{msg.role}: {msg.content}"
    parts = [p.text for p in msg.content or () if p.text]
    return f"{msg.role}: " + " ".join(parts)


def _block_hashes_bytes(data: bytes, block: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full blocks (a block's hash covers everything before it)."""
    if block <= 0 or len(data) < block:
        return ()
    out: list[int] = []
    h = hashlib.blake2b(digest_size=8)
    for i in range(len(data) // block):
        h.update(data[i * block : (i + 1) * block])
        out.append(int.from_bytes(h.copy().digest(), "big") >> 1)
    return tuple(out)


def _block_hashes_ids(ids: list[int], block: int) -> tuple[int, ...]:
    if block <= 0 or len(ids) < block:
        return ()
    data = b"".join((i & 0xFFFFFFFF).to_bytes(4, "little") for i in ids[: len(ids) // block * block])
    return _block_hashes_bytes(data, block * 4)
