"""The bodies the scheduler service sends to prefill and decode engines are valid requests for
SGLang 0.5.23's own request classes (`GenerateReqInput` with its API contract and normalisation, the
OpenAI `CompletionRequest` / `ChatCompletionRequest`), for every front endpoint, with and without
pinned ranks."""

from __future__ import annotations

import random

import pytest
from sbs.scheduler.service import protocol, upstream
from sbs.settings.service import EstimateSettings

from tests.contract import sglang_env

M = "deepseek-v3"
CLIENT_BODIES = {
    "generate": [
        {"text": "Hello", "sampling_params": {"max_new_tokens": 16, "temperature": 0.0}, "stream": True},
        {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}},
    ],
    "completion": [
        {"model": M, "prompt": "Once upon a time", "max_tokens": 32, "stream": True},
        {"model": M, "prompt": "Q: 2+2?\nA:", "max_tokens": 4, "temperature": 0, "ignore_eos": True},
    ],
    "chat": [
        {"model": M, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 8},
        {"model": M, "max_tokens": 64, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "x"}]},
        ]},
    ],
}  # fmt: skip
ENDPOINT = {"generate": protocol.GENERATE, "completion": "/v1/completions", "chat": "/v1/chat/completions"}


def dispatched(kind: str, pinned: bool) -> list[dict]:
    """Prefill and decode bodies of every client body, as the relay builds them."""
    rng = random.Random(7)
    out = []
    for i, body in enumerate(CLIENT_BODIES[kind]):
        protocol.parse(ENDPOINT[kind], body, EstimateSettings())  # the service accepts it
        p_rank, d_rank = (3, 11) if pinned else (None, None)
        room = upstream.choose_room(rng, 8, p_rank)
        if pinned:
            assert room % 8 == p_rank
        out += upstream.pd_bodies(
            body, rid=f"req-{kind}-{i}", bootstrap_host="10.1.2.3", bootstrap_port=8998, room=room,
            prefill_rank=p_rank, decode_rank=d_rank,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("pinned", [True, False], ids=["sbs-pinned", "sglang-unpinned"])
def test_every_upstream_body_is_a_valid_sglang_request(sglang: sglang_env.Probe, pinned: bool) -> None:
    items = [(kind, body) for kind in CLIENT_BODIES for body in dispatched(kind, pinned)]
    verdicts = sglang.mixed_requests(items)
    for (kind, body), verdict in zip(items, verdicts, strict=True):
        assert verdict.error is None, f"{kind}: {verdict.error}\n{body}"


def test_the_contract_can_fail(sglang: sglang_env.Probe) -> None:
    _, decode = dispatched("generate", True)[:2]
    bad = {**decode, "bootstrap_room": str(decode["bootstrap_room"])}  # SGLang's contract wants an int
    assert sglang.validate_requests("generate", [bad])[0] is not None
