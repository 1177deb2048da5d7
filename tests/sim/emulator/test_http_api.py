"""The SGLang HTTP surface of a non-disaggregated engine: /generate, OpenAI routes, info routes."""

from __future__ import annotations

import asyncio
import time

from sbs.sim.emulator import tokens

from tests.sim.emulator.conftest import Start, get, post, sse


async def test_generate_returns_max_new_tokens_of_filler_with_meta_info(start: Start, http) -> None:
    eng = await start()
    status, out = await post(
        http, f"{eng.url}/generate", {"text": "a" * 400, "sampling_params": {"max_new_tokens": 5}}
    )
    assert status == 200
    assert out["text"] == tokens.output_text(5)
    assert out["output_ids"] == tokens.output_ids(5)
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == 100  # 4 characters per token
    assert meta["completion_tokens"] == 5
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["cached_tokens"] == 0
    assert meta["e2e_latency"] > 0
    assert meta["id"] and meta["dp_rank"] in (0, 1)


async def test_generate_accepts_input_ids_put_and_a_given_rid(start: Start, http) -> None:
    eng = await start()
    body = {"input_ids": list(range(64)), "rid": "abc", "sampling_params": {"max_new_tokens": 2}}
    async with http.put(f"{eng.url}/generate", json=body) as resp:
        out = await resp.json()
    assert out["meta_info"]["id"] == "abc"
    assert out["meta_info"]["prompt_tokens"] == 64


async def test_stream_sends_cumulative_text_per_token_and_done(start: Start, http) -> None:
    eng = await start()
    events = await sse(
        http,
        f"{eng.url}/generate",
        {"text": "hello", "stream": True, "sampling_params": {"max_new_tokens": 4}},
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["text"] for c in chunks] == [tokens.output_text(n) for n in range(1, 5)]
    assert [c["meta_info"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4]
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * 3
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}


async def test_stream_interval_thins_the_chunks(start: Start, http) -> None:
    eng = await start(stream_interval=3)
    body = {"text": "hello", "stream": True, "sampling_params": {"max_new_tokens": 7}}
    events = await sse(http, f"{eng.url}/generate", body)
    assert [c["meta_info"]["completion_tokens"] for c in events[:-1]] == [1, 3, 6, 7]


async def test_bad_generate_bodies_get_400_with_sglang_error_shape(start: Start, http) -> None:
    eng = await start()
    status, out = await post(http, f"{eng.url}/generate", {"sampling_params": {}})
    assert status == 400
    assert out == {"error": {"message": "Either text, input_ids or input_embeds should be provided."}}
    status, out = await post(
        http, f"{eng.url}/generate", {"text": "x", "sampling_params": {"max_new_tokens": "many"}}
    )
    assert status == 400 and "sampling_params.max_new_tokens" in out["error"]["message"]
    status, out = await post(http, f"{eng.url}/generate", {"text": "x", "routed_dp_rank": 7})
    assert status == 400 and "routed_dp_rank 7 is out of range [0, 2)" in out["error"]["message"]
    status, out = await post(http, f"{eng.url}/generate", {"input_ids": [1] * 200_000})
    assert status == 400 and "longer than the model's context length" in out["error"]["message"]


async def test_routed_dp_rank_pins_and_round_robin_spreads(start: Start, http) -> None:
    eng = await start()
    body = {"text": "x", "sampling_params": {"max_new_tokens": 1}}
    ranks = [(await post(http, f"{eng.url}/generate", body))[1]["meta_info"]["dp_rank"] for _ in range(4)]
    assert sorted(ranks) == [0, 0, 1, 1]
    _, out = await post(http, f"{eng.url}/generate", {**body, "routed_dp_rank": 1})
    assert out["meta_info"]["dp_rank"] == 1
    _, out = await post(http, f"{eng.url}/generate", {**body, "data_parallel_rank": 0})  # deprecated alias
    assert out["meta_info"]["dp_rank"] == 0


async def test_repeated_prompt_hits_the_prefix_cache(start: Start, http) -> None:
    eng = await start(prefix_block_tokens=16)
    body = {"text": "z" * 4000, "routed_dp_rank": 0, "sampling_params": {"max_new_tokens": 1}}
    _, first = await post(http, f"{eng.url}/generate", body)
    _, second = await post(http, f"{eng.url}/generate", body)
    assert first["meta_info"]["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] == 992  # 62 whole blocks of 16 of the 1000 tokens
    assert (await http.get(f"{eng.url}/flush_cache")).status == 200
    _, third = await post(http, f"{eng.url}/generate", body)
    assert third["meta_info"]["cached_tokens"] == 0


async def test_openai_completion_and_stream(start: Start, http) -> None:
    eng = await start(served_model_name="ds3")
    body = {"model": "ds3", "prompt": "hi there", "max_tokens": 3}
    status, out = await post(http, f"{eng.url}/v1/completions", body)
    assert status == 200
    assert out["object"] == "text_completion" and out["model"] == "ds3"
    assert out["choices"][0]["text"] == tokens.output_text(3)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": None,
    }
    events = await sse(
        http, f"{eng.url}/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in events[:-1] if c["choices"])  # deltas, not cumulative
    assert text == tokens.output_text(3)
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3


async def test_openai_chat_and_stream(start: Start, http) -> None:
    eng = await start()
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 4}
    status, out = await post(http, f"{eng.url}/v1/chat/completions", body)
    assert status == 200 and out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": tokens.output_text(4),
        "reasoning_content": None,
        "tool_calls": None,
    }
    assert out["usage"]["completion_tokens"] == 4
    events = await sse(http, f"{eng.url}/v1/chat/completions", {**body, "stream": True})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1]) == tokens.output_text(4)
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1] == "[DONE]"


async def test_chat_content_parts_need_string_text(start: Start, http) -> None:
    # Found by schemathesis through the scheduler: a null `text` part was a 500 (and made the engine
    # look failed); SGLang's request model refuses it with a 400.
    eng = await start()
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": None}]
    status, out = await post(
        http, f"{eng.url}/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]}
    )
    assert status == 400 and "'text' content part" in out["message"]
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 2}
    assert (await post(http, f"{eng.url}/v1/chat/completions", body))[0] == 200


async def test_openai_routes_require_json_content_type(start: Start, http) -> None:
    eng = await start()
    async with http.post(f"{eng.url}/v1/completions", data="prompt=hi") as resp:
        out = await resp.json()
    assert resp.status == 400
    assert out["object"] == "error" and out["code"] == 400 and "application/json" in out["message"]


async def test_info_routes(start: Start, http) -> None:
    eng = await start(dp_size=4, max_running_requests=64, chunked_prefill_size=8192)
    assert (await http.get(f"{eng.url}/health")).status == 200
    assert (await http.get(f"{eng.url}/health_generate")).status == 200
    info = await get(http, f"{eng.url}/server_info")
    assert info == await get(http, f"{eng.url}/get_server_info")
    assert len(info["internal_states"]) == 4 and info["attn_dp_size"] == 4
    assert info["chunked_prefill_size"] == 8192 and info["max_running_requests"] == 64
    assert info["max_total_num_tokens"] == eng.runtime.kv_capacity
    assert info["version"] == "0.5.23" and info["disaggregation_mode"] == "null"
    model = await get(http, f"{eng.url}/model_info")
    assert model["model_path"] == "deepseek-ai/DeepSeek-V3" and model["is_generation"] is True
    models = await get(http, f"{eng.url}/v1/models")
    assert [m["id"] for m in models["data"]] == ["deepseek-ai/DeepSeek-V3"]
    assert (await http.get(f"{eng.url}/v1/models/nope")).status == 404


async def test_v1_loads_sections_rank_filter_and_prometheus_format(start: Start, http) -> None:
    eng = await start()
    full = await get(http, f"{eng.url}/v1/loads")
    assert full["version"] == "0.5.23" and [e["dp_rank"] for e in full["loads"]] == [0, 1]
    assert {"memory", "disaggregation", "queues", "decode_moments"} <= set(full["loads"][0])
    stamps = {e["timestamp"] for e in full["loads"]}  # per-rank snapshot time, as SGLang publishes
    assert len(stamps) == 1 and abs(stamps.pop() - time.time()) < 60  # noqa: TID251
    core = await get(http, f"{eng.url}/v1/loads?include=core&dp_rank=1")
    assert [e["dp_rank"] for e in core["loads"]] == [1] and "memory" not in core["loads"][0]
    async with http.get(f"{eng.url}/v1/loads?include=bogus") as resp:
        assert resp.status == 400
    async with http.get(f"{eng.url}/v1/loads?format=prometheus") as resp:
        text = await resp.text()
    assert 'sglang_num_waiting_reqs{dp_rank="1"} 0' in text
    assert 'sglang_disagg_prefill_bootstrap_queue_reqs{dp_rank="0"} 0' in text


async def test_abort_request_ends_the_request_with_an_abort_reason(start: Start, http) -> None:
    eng = await start(time_factor=0.05)
    body = {"text": "x", "rid": "long", "sampling_params": {"max_new_tokens": 10_000}}
    pending = asyncio.create_task(post(http, f"{eng.url}/generate", body))
    while eng.runtime.decode_steps < 3:
        await asyncio.sleep(0.005)
    async with http.post(f"{eng.url}/abort_request", json={"rid": "long"}) as resp:
        assert resp.status == 200
    status, out = await pending
    assert status == 200
    assert out["meta_info"]["finish_reason"] == {"type": "abort", "message": "Abort by AbortReq."}
    assert 3 <= out["meta_info"]["completion_tokens"] < 10_000
    assert not eng.runtime.reqs
