"""Deterministic token counting, filler output and prompt block hashes."""

from __future__ import annotations

from sbs.sim.emulator import requests, tokens


def test_text_is_one_token_per_four_characters() -> None:
    assert len(tokens.encode("abcd" * 10)) == 10
    assert len(tokens.encode("abcde")) == 2
    assert tokens.encode("") == [tokens.BOS_ID]
    assert tokens.encode("same prefix, then A")[:3] == tokens.encode("same prefix, then B")[:3]


def test_filler_output_round_trips_its_token_count() -> None:
    text = tokens.output_text(25)
    assert len(tokens.encode(text)) == 25
    assert tokens.output_text(25, 20) == text[80:]
    assert len(tokens.output_ids(25)) == 25


def test_block_hashes_cover_whole_blocks_and_chain() -> None:
    a = tokens.block_hashes(list(range(100)), 16)
    b = tokens.block_hashes([*range(50), 999, *range(51, 100)], 16)
    assert len(a) == 6  # the last 4 tokens are no whole block
    assert a[:3] == b[:3] and a[3:] != b[3:]


def test_chat_template_and_limits() -> None:
    req = requests.parse_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7})
    assert req.max_new_tokens == 7 and req.prompt_tokens == len(tokens.encode("<|user|>hi<|assistant|>"))
    assert requests.parse_completion({"prompt": "x"}).max_new_tokens == 16  # OpenAI's default
    assert requests.parse_generate({"text": "x"}).max_new_tokens == 128  # SGLang's default
