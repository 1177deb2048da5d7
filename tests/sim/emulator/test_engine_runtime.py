"""The real-time engine loop: chunked prefill, step time × time factor, KV capacity, load snapshots,
metrics, and aborts when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sbs.sim.costmodel import CostModel

from tests.sim.emulator.conftest import Start, get, post

COST = CostModel()


async def test_long_prompt_is_prefilled_in_chunks(start: Start, http) -> None:
    eng = await start(chunked_prefill_size=2048)  # 1024 tokens per rank per step
    status, out = await post(
        http,
        f"{eng.url}/generate",
        {"input_ids": [5] * 3000, "routed_dp_rank": 0, "sampling_params": {"max_new_tokens": 1}},
    )
    assert status == 200 and out["meta_info"]["prompt_tokens"] == 3000
    prefill = [s for s in eng.runtime.steps if s.kind == "prefill"]
    assert len(prefill) == 3
    loads = (await get(http, f"{eng.url}/v1/loads"))["loads"]
    assert loads[0]["total_prefill_uncached_tokens"] == 3000
    assert prefill[1].modelled_s > prefill[0].modelled_s  # the second chunk attends to the first


async def test_step_time_is_the_cost_model_times_the_time_factor(start: Start, http) -> None:
    body = {"input_ids": [1] * 16_384, "routed_dp_rank": 0, "sampling_params": {"max_new_tokens": 1}}
    modelled = COST.prefill_step_s([16_384, 0], [16_384.0**2, 0.0], ep_size=32)
    for factor in (0.1, 0.2):
        eng = await start(time_factor=factor)
        await post(http, f"{eng.url}/generate", body)
        (step,) = eng.runtime.steps
        assert step.modelled_s == modelled  # ≈ 2 s of an EP32 H800 group
        assert 0.9 * modelled * factor <= step.wall_s <= modelled * factor + 0.3
    eng = await start(time_factor=0.0)  # instant answers
    _, out = await post(http, f"{eng.url}/generate", {**body, "sampling_params": {"max_new_tokens": 50}})
    assert out["meta_info"]["completion_tokens"] == 50 and out["meta_info"]["e2e_latency"] < 0.25


async def test_decode_step_time_follows_batch_and_kv(start: Start, http) -> None:
    eng = await start(dp_size=1, time_factor=0.01)
    await post(
        http, f"{eng.url}/generate", {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 3}}
    )
    decode = [s for s in eng.runtime.steps if s.kind == "decode"]
    assert len(decode) == 2  # the prefill gives the first token
    assert decode[0].modelled_s == COST.decode_step_s(np.array([1]), np.array([101]), ep_size=32)


async def test_full_kv_makes_requests_wait(start: Start, http) -> None:
    # a request joins while held KV + its own prompt and output fit: with 1,800 tokens per rank two
    # requests of 601 + 49 join (601 + 650 <= 1800), the third waits (1202 + 650 > 1800)
    eng = await start(dp_size=1, max_total_tokens=1800, load_snapshot_publish_interval=1, time_factor=0.05)
    body = {"input_ids": [3] * 600, "sampling_params": {"max_new_tokens": 50}}
    tasks = [asyncio.create_task(post(http, f"{eng.url}/generate", body)) for _ in range(3)]
    seen = set()
    while not all(t.done() for t in tasks):
        rank = (await get(http, f"{eng.url}/v1/loads"))["loads"][0]
        seen.add((rank["num_running_reqs"], rank["num_waiting_reqs"]))
        await asyncio.sleep(0.01)
    assert (2, 1) in seen and all(running <= 2 for running, _ in seen)
    outs = [t.result()[1]["meta_info"] for t in tasks]
    assert [m["completion_tokens"] for m in outs] == [50, 50, 50]
    assert max(m["e2e_latency"] for m in outs) > 1.3 * min(m["e2e_latency"] for m in outs)


async def test_running_cap_is_split_over_the_ranks(start: Start, http) -> None:
    eng = await start(dp_size=2, max_running_requests=2, load_snapshot_publish_interval=1)  # 1 per rank
    body = {"input_ids": [3] * 50, "routed_dp_rank": 1, "sampling_params": {"max_new_tokens": 20}}
    tasks = [asyncio.create_task(post(http, f"{eng.url}/generate", body)) for _ in range(2)]
    peak = 0
    while not all(t.done() for t in tasks):
        peak = max(peak, int(eng.runtime.decode.batch[1]))
        await asyncio.sleep(0.002)
    assert peak == 1


async def test_loads_reflect_queued_work_per_rank_and_drain(start: Start, http) -> None:
    eng = await start(time_factor=0.05)
    url = f"{eng.url}/generate"
    tasks = [
        asyncio.create_task(
            post(
                http,
                url,
                {"input_ids": [7] * 16_384, "routed_dp_rank": r, "sampling_params": {"max_new_tokens": 1}},
            )
        )
        for r in (0, 0, 1)
    ]
    while eng.runtime.prefill_steps == 0 and not eng.runtime.prefill.busy():
        await asyncio.sleep(0.002)
    r0, r1 = (await get(http, f"{eng.url}/v1/loads"))["loads"]
    assert r0["num_waiting_reqs"] == 2 and r1["num_waiting_reqs"] == 1
    assert r0["num_waiting_uncached_tokens"] == 2 * 16_384 and r1["num_waiting_uncached_tokens"] == 16_384
    assert r0["num_total_tokens"] >= 2 * 16_384
    await asyncio.gather(*tasks)
    for rank in (await get(http, f"{eng.url}/v1/loads"))["loads"]:
        assert (
            rank["num_waiting_reqs"] == rank["num_running_reqs"] == rank["num_waiting_uncached_tokens"] == 0
        )
        assert rank["num_used_tokens"] == 0


async def test_metrics_use_sglang_names_with_dp_rank_labels(start: Start, http) -> None:
    eng = await start()
    await post(http, f"{eng.url}/generate", {"text": "x" * 40, "sampling_params": {"max_new_tokens": 3}})
    async with http.get(f"{eng.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    running = families["sglang:num_running_reqs"]
    assert sorted(s.labels["dp_rank"] for s in running.samples) == ["0", "1"]
    assert {s.labels["engine_type"] for s in running.samples} == {"unified"}
    for name in ("sglang:num_queue_reqs", "sglang:token_usage", "sglang:gen_throughput"):
        assert name in families
    assert families["sglang:prompt_tokens"].samples[0].value == 10
    assert families["sglang:generation_tokens"].samples[0].value == 3
    ttft = families["sglang:time_to_first_token_seconds"]
    assert any(s.name.endswith("_count") and s.value == 1 for s in ttft.samples)
    assert "dp_rank" not in ttft.samples[0].labels  # tokenizer metrics carry no rank, as in SGLang


async def test_client_disconnect_aborts_a_stream(start: Start, http) -> None:
    eng = await start(time_factor=0.05)
    body = {"text": "x", "stream": True, "sampling_params": {"max_new_tokens": 5000}}
    async with http.post(f"{eng.url}/generate", json=body) as resp:
        await resp.content.readline()  # the first token arrived; now hang up
    await _until(lambda: not eng.runtime.reqs)
    await _until(lambda: int(eng.runtime.decode.batch.sum()) == 0)  # left the batch at the step boundary
    metrics = await (await http.get(f"{eng.url}/metrics")).text()
    assert (
        "sglang:num_aborted_requests_total" in metrics
        and 'num_aborted_requests_total{engine_type="unified"' in metrics
    )


async def test_client_disconnect_aborts_a_queued_request(start: Start, http) -> None:
    eng = await start(time_factor=0.5, dp_size=1)  # a step long enough that a busy machine aborts in time
    url = f"{eng.url}/generate"
    first = asyncio.create_task(
        post(http, url, {"input_ids": [1] * 16_384, "sampling_params": {"max_new_tokens": 1}})
    )
    await _until(lambda: eng.runtime.prefill.busy())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as impatient:
        with contextlib.suppress(TimeoutError):
            await post(impatient, url, {"input_ids": [2] * 16_384, "sampling_params": {"max_new_tokens": 1}})
    await _until(lambda: len(eng.runtime.reqs) == 1)
    await first
    assert eng.runtime.prefill_steps == 1  # the abandoned prompt was never prefilled


async def _until(cond, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)
