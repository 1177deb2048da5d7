"""Response bodies and stream chunks of `/generate`, `/v1/completions` and `/v1/chat/completions`.

`ResponseShapes` turns one `Req` into what SGLang 0.5.23 answers for it: the whole body when the
request is done, or the stream's chunks since `sent` tokens. `/generate` streams cumulative text and
ids (SGLang's default); the OpenAI routes stream deltas, the chat route a role chunk first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sbs.sim.emulator import tokens
from sbs.sim.emulator.engine_runtime import Runtime
from sbs.sim.emulator.request_state import Req
from sbs.sim.emulator.sglang_responses import dumps, unix_s


class ResponseShapes:
    """The response shapes of one engine (its clock for latencies, its served model name)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.served_name = runtime.settings.served_name
        self._wall_shift_s: float | None = None

    def _wall(self, t: float) -> float:
        """The engine clock's `t` as Unix seconds (SGLang's `convert_time_to_realtime`)."""
        if self._wall_shift_s is None:
            self._wall_shift_s = unix_s() - self.rt.now()
        return t + self._wall_shift_s

    # --- /generate --------------------------------------------------------------------------------
    def meta(self, req: Req) -> dict[str, Any]:
        end = req.finished_s if req.finished_s is not None else self.rt.now()
        meta = {
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
        if req.forward_entry_s:  # the scheduler's time stats (SGLang sends them with --enable-metrics)
            meta["forward_entry_time"] = self._wall(req.forward_entry_s)
            meta["prefill_finished_time"] = self._wall(req.prefill_finished_s)
            meta["queue_time"] = max(0.0, req.forward_entry_s - req.waiting_s)
        return meta

    def generate_out(self, req: Req) -> dict[str, Any]:
        n = req.output_tokens
        return {
            "text": tokens.output_text(n),
            "output_ids": tokens.output_ids(n),
            "meta_info": self.meta(req),
        }

    def generate_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[bytes]:
        # cumulative text and ids (SGLang's default), encoded without re-encoding the whole output
        meta = dumps(self.meta(req))
        yield f'data: {{{tokens.output_json(req.output_tokens)},"meta_info":{meta}}}\n\n'.encode()

    # --- OpenAI routes ----------------------------------------------------------------------------
    def _head(self, req: Req, obj: str) -> dict[str, Any]:
        return {
            "id": req.rid,
            "object": obj,
            "created": int(unix_s()),
            "model": req.gen.model or self.served_name,
        }

    @staticmethod
    def _usage(req: Req) -> dict[str, Any]:
        return {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": req.output_tokens,
            "total_tokens": req.prompt_tokens + req.output_tokens,
            "prompt_tokens_details": {"cached_tokens": req.cached_tokens} if req.cached_tokens else None,
        }

    @staticmethod
    def _choice(req: Req, key: str, value: Any) -> dict[str, Any]:
        """The one choice: `key` (text, message or delta), then the finish reason."""
        finish = None
        if req.finish_reason is not None:
            finish = "length" if req.finish_reason.get("type") == "length" else "abort"
        return {"index": 0, key: value, "logprobs": None, "finish_reason": finish, "matched_stop": None}

    def completion_out(self, req: Req) -> dict[str, Any]:
        return {
            **self._head(req, "text_completion"),
            "choices": [self._choice(req, "text", tokens.output_text(req.output_tokens))],
            "usage": self._usage(req),
        }

    def completion_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        head = self._head(req, "text_completion")
        yield {**head, "choices": [self._choice(req, "text", tokens.output_text(req.output_tokens, sent))]}
        if req.finished and req.gen.include_usage:
            yield {**head, "choices": [], "usage": self._usage(req)}

    def chat_out(self, req: Req) -> dict[str, Any]:
        head = self._head(req, "chat.completion")
        message = {
            "role": "assistant",
            "content": tokens.output_text(req.output_tokens),
            "reasoning_content": None,
            "tool_calls": None,
        }
        return {
            **head,
            "choices": [self._choice(req, "message", message)],
            "usage": self._usage(req),
        }

    def chat_chunks(self, req: Req, sent: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        head = self._head(req, "chat.completion.chunk")
        if not state.get("role_sent"):
            state["role_sent"] = True
            role = {"role": "assistant", "content": ""}
            yield {
                **head,
                "choices": [{"index": 0, "delta": role, "logprobs": None, "finish_reason": None}],
            }
        delta = {"content": tokens.output_text(req.output_tokens, sent)} if req.output_tokens > sent else {}
        yield {**head, "choices": [self._choice(req, "delta", delta)]}
        if req.finished and req.gen.include_usage:
            yield {**head, "choices": [], "usage": self._usage(req)}
