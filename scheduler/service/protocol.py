"""The client-facing request bodies: validation, sizing and the OpenAI error shape.

Bodies are forwarded to the engines as they came (plus the PD fields), so the models below check only
what the scheduler relies on and let every other field through. A bad body is answered 400 with the
field named: ``{"error": {"message": "field 'messages': ...", "type": "invalid_request_error",
"param": "messages", "code": "invalid_field"}}``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from sbs.settings import service as service_settings

GENERATE = "/generate"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
ENDPOINTS = (CHAT, COMPLETIONS, GENERATE)

MAX_TOKENS = 2**31 - 1
"""Largest token count (`max_tokens`, ...) or token id accepted: beyond any model, and a float."""
TokenCount = Annotated[int, Strict(), Field(ge=1, le=MAX_TOKENS)]
TokenId = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKENS)]
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")


class InvalidRequest(Exception):
    """A client request the service refuses (`status`, 400 unless said); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message, param, status)  # all three, so it survives pickling (parse workers)
        self.message = message
        self.param = param
        self.status = status


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

    stream: Annotated[bool, Strict()] = False


class _SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_new_tokens: TokenCount | None = None


class GenerateBody(_Body):
    """SGLang `/generate` (one prompt: `text` or `input_ids`; batches are refused)."""

    text: str | None = None
    input_ids: list[TokenId] | None = None
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
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: TokenCount | None = 16
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
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
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
    """The client's `rid` (an id for logs and the answer's `X-Request-Id`; engines get their own)."""
    prompt_field: str
    """The field holding the prompt (`text`, `input_ids`, `prompt`, `messages`), for errors."""
    exact_prompt: bool
    """`prompt_tokens` was counted (token ids), not estimated from bytes."""
    prompt_bytes: int
    output_field: str | None = None
    """The field the client set the output limit with (None: the default applies)."""


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
        shown = "" if isinstance(got, dict | list) or got is None else f", got {_shown(got)}"
        where = f"field '{loc}': " if loc else ""
        raise InvalidRequest(f"{where}{first['msg']}{shown}", loc or None) from None
    text = ""
    ids: list[int] | None = None
    if isinstance(m, GenerateBody):
        text, ids = m.text or "", m.input_ids
        field = "text" if m.text is not None else "input_ids"
        out = m.sampling_params.max_new_tokens or 128
        out_field = "sampling_params.max_new_tokens" if m.sampling_params.max_new_tokens else None
    elif isinstance(m, CompletionBody):
        field = "prompt"
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
        out_field = "max_tokens" if m.max_tokens and "max_tokens" in m.model_fields_set else None
    else:
        assert isinstance(m, ChatBody)
        field = "messages"
        text = "\n".join(_message_text(msg) for msg in m.messages)
        out = m.max_completion_tokens or m.max_tokens or estimate.default_max_tokens
        given = "max_completion_tokens" if m.max_completion_tokens else "max_tokens" if m.max_tokens else None
        out_field = given
    if ids is not None:
        tokens, size = len(ids), 0
        hashes = _block_hashes_ids(ids, estimate.prefix_block_tokens)
    else:
        data = text.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates ("\\ud800")
        tokens, size = max(1, math.ceil(len(data) / estimate.chars_per_token)), len(data)
        block = int(estimate.prefix_block_tokens * estimate.chars_per_token)
        hashes = _block_hashes_bytes(data, block)
    return Parsed(m.stream, tokens, out, hashes, m.rid, field, ids is not None, size, out_field)


def check_prompt_length(
    parsed: Parsed,
    limit: int | None,
    estimate: service_settings.EstimateSettings,
    context: int | None = None,
) -> None:
    """Refuse what the engines would: a prompt longer than `limit` tokens, or (SGLang's total check)
    a prompt plus the client's output limit beyond `context` (None: unknown). A text prompt counts at
    least its bytes / `estimate.max_bytes_per_token` tokens; closer cases are the engine's to judge."""
    if parsed.exact_prompt:
        n, what = parsed.prompt_tokens, f"{parsed.prompt_tokens} tokens"
    else:
        n = math.ceil(parsed.prompt_bytes / estimate.max_bytes_per_token)
        what = f"{parsed.prompt_bytes} bytes, at least {n} tokens"
    if limit is not None and n > limit:
        raise InvalidRequest(
            f"field '{parsed.prompt_field}': the prompt ({what}) is longer than the model accepts "
            f"({limit} tokens)",
            parsed.prompt_field,
        )
    out = parsed.output_field
    if context is not None and out is not None and n + parsed.output_tokens > context:
        raise InvalidRequest(
            f"field '{out}': the prompt ({what}) and {parsed.output_tokens} new tokens exceed the model's "
            f"context length ({context} tokens)",
            out,
        )


def request_id(header: str | None, body: Any, max_length: int) -> str | None:
    """The client's request id (`X-Request-Id`, else the body's `rid`), or None. Raises
    `InvalidRequest` for one that is not 1..`max_length` visible ASCII characters (never echoed)."""
    if header:
        value, param = header, "X-Request-Id"
    elif isinstance(body, dict) and isinstance(body.get("rid"), str) and body["rid"]:
        value, param = body["rid"], "rid"
    else:
        return None
    if len(value) > max_length or not _REQUEST_ID.fullmatch(value):
        raise InvalidRequest(
            f"{'header' if param != 'rid' else 'field'} '{param}': a request id must be 1 to {max_length} "
            "visible ASCII characters",
            param,
        )
    return value


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "<a huge integer>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
