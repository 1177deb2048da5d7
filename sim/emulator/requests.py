"""Request bodies → `GenRequest`, the part of a request the emulated engine acts on.

Parses SGLang's `GenerateReqInput` (`/generate`) and the OpenAI completion and chat requests
(`/v1/completions`, `/v1/chat/completions`, which carry the same PD routing fields and `priority`).
Unknown keys are ignored, as SGLang ignores what it does not use; what is read is type-checked, and a
bad value raises `RequestError(400, ...)` with a message naming the field, as SGLang answers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sbs.sim.emulator import tokens
from sbs.sim.engine_priority import INT64_MAX, INT64_MIN

Api = Literal["generate", "completions", "chat"]

DEFAULT_MAX_NEW_TOKENS = 128
"""SGLang's `SamplingParams.max_new_tokens` default (also used for chat requests without a limit)."""
DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's (and SGLang's `CompletionRequest`) `max_tokens` default."""


class RequestError(Exception):
    """The engine refuses or fails a request: `status` is the HTTP status SGLang would answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class GenRequest:
    api: Api
    rid: str | None
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stream: bool
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None
    routed_dp_rank: int | None = None
    """`routed_dp_rank`, or its deprecated alias `data_parallel_rank`."""
    disagg_prefill_dp_rank: int | None = None
    model: str | None = None
    """OpenAI requests: the `model` asked for, echoed back."""
    include_usage: bool = False
    """OpenAI streams: `stream_options.include_usage`."""
    priority: int | None = None
    """SGLang's request `priority` (a signed 64-bit integer; used with `--enable-priority-scheduling`)."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"field '{key}' must be an integer, got {v!r}")
    return v


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise _bad(f"field '{key}' must be a string, got {v!r}")
    return v


def _token_list(value: object, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _bad(f"field '{key}' must be a list of integer token ids")
    if not value:
        raise _bad(f"field '{key}' must not be empty")
    return tuple(value)


def _max_new(value: object, key: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"field '{key}' must be an integer, got {value!r}")
    if value < 0:
        raise _bad(f"field '{key}' must be at least 0, got {value}")
    return max(1, value)  # no EOS is modelled: a request always yields at least the prefill's token


def _priority(body: Mapping[str, Any]) -> int | None:
    """`priority`, on `/generate` and the OpenAI requests alike; SGLang refuses values outside int64."""
    p = _opt_int(body, "priority")
    if p is not None and not INT64_MIN <= p <= INT64_MAX:
        raise _bad(f"priority must be a signed 64-bit integer between {INT64_MIN} and {INT64_MAX}")
    return p


def _pd_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    routed = _opt_int(body, "routed_dp_rank")
    if routed is None:
        routed = _opt_int(body, "data_parallel_rank")
    port = body.get("bootstrap_port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise _bad(f"field 'bootstrap_port' must be an integer, got {port!r}")
    return {
        "bootstrap_host": _opt_str(body, "bootstrap_host"),
        "bootstrap_port": port,
        "bootstrap_room": _opt_int(body, "bootstrap_room"),
        "routed_dp_rank": routed,
        "disagg_prefill_dp_rank": _opt_int(body, "disagg_prefill_dp_rank"),
    }


def _rid(body: Mapping[str, Any]) -> str | None:
    rid = body.get("rid")
    if rid is None:
        return None
    if isinstance(rid, list):
        raise _bad("batched requests are not supported by the emulator; send one request per prompt")
    return str(rid)


def parse_generate(body: object) -> GenRequest:
    """SGLang `GenerateReqInput` (one prompt; batches are refused with 400)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    given = [k for k in ("text", "input_ids", "input_embeds") if body.get(k) is not None]
    if not given:
        raise _bad("Either text, input_ids or input_embeds should be provided.")
    if len(given) > 1:
        raise _bad(f"Only one of text, input_ids or input_embeds should be provided, got {', '.join(given)}.")
    if given[0] == "input_embeds":
        raise _bad("input_embeds is not supported by the emulator; send text or input_ids")
    if given[0] == "text":
        text = body["text"]
        if isinstance(text, list):
            raise _bad("batched requests are not supported by the emulator; send one request per prompt")
        if not isinstance(text, str):
            raise _bad(f"field 'text' must be a string, got {type(text).__name__}")
        ids = tuple(tokens.encode(text))
    else:
        raw = body["input_ids"]
        if isinstance(raw, list) and raw and isinstance(raw[0], list):
            raise _bad("batched requests are not supported by the emulator; send one request per prompt")
        ids = _token_list(raw, "input_ids")
    sp = body.get("sampling_params") or {}
    if isinstance(sp, list):
        raise _bad("batched requests are not supported by the emulator; send one request per prompt")
    if not isinstance(sp, dict):
        raise _bad(f"field 'sampling_params' must be an object, got {sp!r}")
    return GenRequest(
        api="generate",
        rid=_rid(body),
        prompt_ids=ids,
        max_new_tokens=_max_new(
            sp.get("max_new_tokens"), "sampling_params.max_new_tokens", DEFAULT_MAX_NEW_TOKENS
        ),
        stream=bool(body.get("stream", False)),
        priority=_priority(body),
        **_pd_fields(body),
    )


def _openai_common(body: Mapping[str, Any]) -> dict[str, Any]:
    n = body.get("n", 1)
    if n not in (None, 1):
        raise _bad(f"field 'n' must be 1 in the emulator, got {n!r}")
    opts = body.get("stream_options") or {}
    return {
        "rid": _rid(body),
        "stream": bool(body.get("stream", False)),
        "model": _opt_str(body, "model"),
        "include_usage": bool(isinstance(opts, dict) and opts.get("include_usage")),
        "priority": _priority(body),
        **_pd_fields(body),
    }


def parse_completion(body: object) -> GenRequest:
    """OpenAI `CompletionRequest`: `prompt` is a string or a list of token ids (or a one-item list)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tuple(tokens.encode(prompt))
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        ids = _token_list(prompt, "prompt")
    elif isinstance(prompt, list) and prompt:
        raise _bad("batched prompts are not supported by the emulator; send one request per prompt")
    else:
        raise _bad(f"field 'prompt' must be a string or a list of token ids, got {prompt!r}")
    return GenRequest(
        api="completions",
        prompt_ids=ids,
        max_new_tokens=_max_new(body.get("max_tokens"), "max_tokens", DEFAULT_COMPLETION_MAX_TOKENS),
        **_openai_common(body),
    )


def parse_chat(body: object) -> GenRequest:
    """OpenAI `ChatCompletionRequest`: the messages go through the emulator's fixed chat template."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("field 'messages' must be a non-empty list")
    try:
        text = tokens.chat_prompt(messages)
    except ValueError as exc:
        raise _bad(f"field 'messages': {exc}") from None
    limit = body.get("max_completion_tokens")
    key = "max_completion_tokens"
    if limit is None:
        limit, key = body.get("max_tokens"), "max_tokens"
    return GenRequest(
        api="chat",
        prompt_ids=tuple(tokens.encode(text)),
        max_new_tokens=_max_new(limit, key, DEFAULT_MAX_NEW_TOKENS),
        **_openai_common(body),
    )


def check_length(req: GenRequest, context_length: int) -> None:
    """SGLang's context-length checks (400)."""
    n = req.prompt_tokens
    if n >= context_length:
        raise _bad(
            f"The input ({n} tokens) is longer than the model's context length ({context_length} tokens)."
        )
    total = n + req.max_new_tokens
    if total > context_length:
        raise _bad(
            f"Requested token count exceeds the model's maximum context length of {context_length} tokens. "
            f"You requested a total of {total} tokens: {n} tokens from the input messages and "
            f"{req.max_new_tokens} tokens for the completion. Please reduce the number of tokens in the "
            f"input messages or the completion to fit within the limit."
        )
