"""Client bodies: what is accepted, how it is sized, and errors that name the field."""

from __future__ import annotations

import pytest
from sbs.scheduler.service import protocol
from sbs.settings.service import EstimateSettings

EST = EstimateSettings()


def test_generate_counts_input_ids_exactly_and_defaults_to_128_new_tokens() -> None:
    p = protocol.parse(protocol.GENERATE, {"input_ids": [1, 2, 3], "stream": True, "rid": "x"}, EST)
    assert (p.prompt_tokens, p.output_tokens, p.stream, p.rid) == (3, 128, True, "x")


def test_text_is_sized_by_bytes_per_token() -> None:
    p = protocol.parse(protocol.GENERATE, {"text": "a" * 41, "sampling_params": {"max_new_tokens": 7}}, EST)
    assert (p.prompt_tokens, p.output_tokens) == (11, 7)


def test_completions_and_chat_read_their_output_limits() -> None:
    c = protocol.parse(protocol.COMPLETIONS, {"prompt": ["hello there"], "max_tokens": 5}, EST)
    assert (c.prompt_tokens, c.output_tokens) == (3, 5)
    chat = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 9,
    }
    assert protocol.parse(protocol.CHAT, chat, EST).output_tokens == 9
    assert (
        protocol.parse(protocol.CHAT, {"messages": [{"role": "user", "content": "x"}]}, EST).output_tokens
        == 256
    )


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (protocol.CHAT, {"messages": []}, "messages"),
        (protocol.CHAT, {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (protocol.CHAT, {"messages": [{"role": "user"}], "max_tokens": 0}, "max_tokens"),
        (protocol.COMPLETIONS, {"max_tokens": 3}, "prompt"),
        (protocol.COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
        (
            protocol.GENERATE,
            {"text": "a", "sampling_params": {"max_new_tokens": -1}},
            "sampling_params.max_new_tokens",
        ),
        (protocol.GENERATE, {"text": "a", "stream": "sometimes"}, "stream"),
    ],
    ids=[
        "no_messages",
        "bad_role",
        "zero_max_tokens",
        "no_prompt",
        "batched_prompt",
        "negative_max_new",
        "bad_stream",
    ],
)
def test_invalid_bodies_name_the_field(endpoint: str, body: dict, param: str) -> None:
    with pytest.raises(protocol.InvalidRequest) as err:
        protocol.parse(endpoint, body, EST)
    assert err.value.param == param
    assert f"field '{param}'" in err.value.message


def test_generate_needs_exactly_one_prompt_and_a_json_object() -> None:
    with pytest.raises(protocol.InvalidRequest, match="exactly one of 'text' and 'input_ids'"):
        protocol.parse(protocol.GENERATE, {"text": "a", "input_ids": [1]}, EST)
    with pytest.raises(protocol.InvalidRequest, match="must be a JSON object, got list"):
        protocol.parse(protocol.GENERATE, [1], EST)


def test_prefix_hashes_are_chained_per_block_when_enabled() -> None:
    est = EstimateSettings(prefix_block_tokens=2, chars_per_token=1.0)
    a = protocol.parse(protocol.GENERATE, {"text": "abcdef"}, est).hash_ids
    b = protocol.parse(protocol.GENERATE, {"text": "abcdXY"}, est).hash_ids
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert protocol.parse(protocol.GENERATE, {"input_ids": [1, 2, 3, 4]}, est).hash_ids
    assert protocol.parse(protocol.GENERATE, {"text": "abcdef"}, EST).hash_ids == ()


def test_error_body_has_the_openai_shape() -> None:
    assert protocol.error_body("m", param="p", code="c") == {
        "error": {
            "message": "m",
            "type": "invalid_request_error",
            "param": "p",
            "code": "c",
            "retryable": False,
        }
    }
