"""Prefill/decode pairs: the bootstrap handshake, SGLang 0.5.23's DP rank rules, and PD failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sbs.sim.emulator import RunningEngine, bootstrap, requests, tokens

from tests.sim.emulator.conftest import Start, get, post


def pd_body(prefill: RunningEngine, room: int, **extra: Any) -> dict[str, Any]:
    return {
        "text": "q" * 2000,
        "sampling_params": {"max_new_tokens": 4},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": room,
        **extra,
    }


async def test_pair_with_the_same_room_completes(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    body = pd_body(p, room=7)
    (ps, pout), (ds, dout) = await asyncio.gather(
        post(http, f"{p.url}/generate", body), post(http, f"{d.url}/generate", body)
    )
    assert (ps, ds) == (200, 200)
    # the prefill answers as SGLang's does: one token, finished by length 0, on rank room % dp
    assert pout["meta_info"]["completion_tokens"] == 1
    assert pout["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert pout["meta_info"]["dp_rank"] == 7 % 2
    assert dout["text"] == tokens.output_text(4)
    assert dout["meta_info"]["completion_tokens"] == 4 and dout["meta_info"]["prompt_tokens"] == 500
    assert dout["meta_info"]["e2e_latency"] >= pout["meta_info"]["e2e_latency"]
    # the scheduler's time stats (SGLang with --enable-metrics): the step that ran it, Unix seconds
    meta = pout["meta_info"]
    assert 0 < meta["forward_entry_time"] < meta["prefill_finished_time"] <= datetime.now(UTC).timestamp()
    assert 0 <= meta["queue_time"] <= meta["prefill_finished_time"] - meta["forward_entry_time"] + 1


async def test_decode_waits_for_its_prefill_and_prefill_for_its_decode(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode", load_snapshot_publish_interval=1)
    body = pd_body(p, room=4)
    decode = asyncio.create_task(post(http, f"{d.url}/generate", body))
    await asyncio.sleep(0.2)
    assert not decode.done()  # no KV yet
    loads = await get(http, f"{d.url}/v1/loads")
    assert sum(e["disaggregation"]["decode_transfer_queue_reqs"] for e in loads["loads"]) == 1
    status, _ = await post(http, f"{p.url}/generate", body)
    assert status == 200
    status, out = await decode
    assert status == 200 and out["meta_info"]["completion_tokens"] == 4

    # the other way round: a prefill waits in the bootstrap queue (visible in its loads) for its decode
    body = pd_body(p, room=5)
    prefill = asyncio.create_task(post(http, f"{p.url}/generate", body))
    await asyncio.sleep(0.1)
    assert not prefill.done()
    rank1 = (await get(http, f"{p.url}/v1/loads"))["loads"][1]
    assert rank1["num_waiting_reqs"] == 1 and rank1["disaggregation"]["prefill_bootstrap_queue_reqs"] == 1
    # counted in its total tokens, not in the uncached tokens (SGLang counts the waiting queue there)
    assert rank1["num_total_tokens"] == 500 and rank1["num_waiting_uncached_tokens"] == 0
    assert (await post(http, f"{d.url}/generate", body))[0] == 200
    assert (await prefill)[0] == 200


async def test_routed_rank_against_the_room_fails_like_sglang(start: Start, http) -> None:
    p = await start(mode="prefill")
    status, out = await post(http, f"{p.url}/generate", pd_body(p, room=8, routed_dp_rank=1))
    assert status == 500
    assert out["object"] == "error" and out["code"] == 500
    assert out["message"].startswith("Prefill bootstrap failed for request rank=1 req.rid=")
    assert (
        "follow_bootstrap_room conflict: dispatched to dp_rank 1 but bootstrap_room 8 implies dp_rank 0. "
        "Set SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK=1 to allow mixed routing."
    ) in out["message"]
    metrics = await (await http.get(f"{p.url}/metrics")).text()
    assert 'sglang:num_bootstrap_failed_reqs_total{dp_rank="1"' in metrics


async def test_disagg_prefill_dp_rank_skips_the_room_check(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    body = pd_body(p, room=8, routed_dp_rank=1, disagg_prefill_dp_rank=1)
    (ps, pout), (ds, dout) = await asyncio.gather(
        post(http, f"{p.url}/generate", body),
        post(http, f"{d.url}/generate", {**body, "routed_dp_rank": 0}),
    )
    assert (ps, ds) == (200, 200)
    assert pout["meta_info"]["dp_rank"] == 1 and dout["meta_info"]["dp_rank"] == 0


async def test_prefill_that_does_not_follow_the_room_is_queried(start: Start, http) -> None:
    p = await start(mode="prefill", load_balance_method="round_robin")
    d = await start(mode="decode")
    results = await asyncio.gather(
        *(post(http, f"{e.url}/generate", pd_body(p, room=room)) for room in (10, 12) for e in (p, d))
    )
    assert [s for s, _ in results] == [200] * 4
    assert sorted(out["meta_info"]["dp_rank"] for _, out in results[0::2]) == [0, 1]  # not room % 2


async def test_forced_query_lets_a_pinned_rank_disagree_with_the_room(start: Start, http) -> None:
    p = await start(mode="prefill", force_query_prefill_dp_rank=True)
    d = await start(mode="decode")
    body = pd_body(p, room=8, routed_dp_rank=1)
    (ps, pout), (ds, _) = await asyncio.gather(
        post(http, f"{p.url}/generate", body), post(http, f"{d.url}/generate", body)
    )
    assert (ps, ds) == (200, 200) and pout["meta_info"]["dp_rank"] == 1


async def test_decode_without_a_prefill_times_out(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode", waiting_timeout_s=0.3)
    status, out = await post(http, f"{d.url}/generate", pd_body(p, room=3))
    assert status == 500
    assert "Decode transfer failed for request rank=" in out["message"]
    assert (
        "decode_req.req.bootstrap_room=3 with exception KVTransferError(bootstrap_room=3): " in out["message"]
    )
    assert "in KVPoll.WaitingForInput" in out["message"]
    assert not d.runtime.reqs and d.runtime.decode.reserved == [0, 0]


async def test_prefill_without_a_decode_times_out(start: Start, http) -> None:
    p = await start(mode="prefill", bootstrap_timeout_s=0.3)
    status, out = await post(http, f"{p.url}/generate", pd_body(p, room=3))
    assert status == 500
    assert "Prefill bootstrap failed" in out["message"] and "in KVPoll.Bootstrapping" in out["message"]


async def test_aborted_prefill_fails_its_decode_at_once(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    body = pd_body(p, room=9, rid="r9")
    prefill = asyncio.create_task(post(http, f"{p.url}/generate", body))
    while "r9" not in p.runtime.reqs:
        await asyncio.sleep(0.005)
    async with http.post(f"{p.url}/abort_request", json={"rid": "r9"}) as resp:
        assert resp.status == 200
    status, out = await post(http, f"{d.url}/generate", body)
    assert status == 500 and "Aborted by AbortReq." in out["message"]
    assert (await prefill)[1]["meta_info"]["finish_reason"]["type"] == "abort"


async def test_pd_requests_need_a_room(start: Start, http) -> None:
    for mode in ("prefill", "decode"):
        eng = await start(mode=mode)
        status, out = await post(http, f"{eng.url}/generate", {"text": "x"})
        assert status == 400
        assert out == {"error": {"message": "Disaggregated request received without bootstrap room id"}}


async def test_fake_bootstrap_host_needs_no_peer(start: Start, http) -> None:
    body = {
        "input_ids": [0],
        "sampling_params": {"max_new_tokens": 1},
        "bootstrap_host": "2.2.2.2",
        "bootstrap_room": 0,
    }
    for mode in ("prefill", "decode"):
        eng = await start(mode=mode)
        status, out = await post(http, f"{eng.url}/generate", body)
        assert status == 200 and out["meta_info"]["completion_tokens"] == 1


async def test_pd_over_the_openai_route(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": False,
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": p.bootstrap_port,
        "bootstrap_room": 21,
    }
    (_, _), (ds, dout) = await asyncio.gather(
        post(http, f"{p.url}/v1/chat/completions", body), post(http, f"{d.url}/v1/chat/completions", body)
    )
    assert ds == 200 and dout["usage"]["completion_tokens"] == 3


async def test_abort_right_after_submit_releases_reservations(start: Start) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    for eng in (p, d):
        req = eng.runtime.submit(requests.parse_generate(pd_body(p, room=11)))
        eng.runtime.abort(req)  # before its handshake/KV task ever ran
        await asyncio.sleep(0.01)
        (r0, r1) = eng.runtime.loads()
        assert r0["num_waiting_reqs"] == r1["num_waiting_reqs"] == 0
        assert r0["num_used_tokens"] == r1["num_used_tokens"] == 0
    assert d.runtime.decode.reserved == [0, 0] and d.runtime.decode.reserved_kv == [0, 0]


async def test_an_abort_as_the_handshake_lands_leaves_the_bootstrap_queue_once(start: Start) -> None:
    """The decode connects and the request is aborted in the same tick, before the waiting task
    resumes: the abort and the handshake both took the request off the bootstrap queue, and
    `/v1/loads` reported -1 waiting (schemathesis' tiny deadlines found it; the scheduler refuses a
    negative count and marks the engine suspect)."""
    p = await start(mode="prefill")
    room = 12
    req = p.runtime.submit(requests.parse_generate(pd_body(p, room=room)))
    await asyncio.sleep(0)  # the handshake wait starts
    assert p.runtime.registry is not None
    p.runtime.registry.connect(room, req.rank)  # the decode's handshake lands ...
    p.runtime.abort(req)  # ... and the client goes away, before the wait resumes
    await asyncio.sleep(0.01)
    assert p.runtime.book.boot_reqs == [0, 0]
    assert all(r["num_waiting_reqs"] == 0 for r in p.runtime.loads())


async def test_a_sweep_never_drops_a_room_whose_handshake_has_not_run() -> None:
    """Issue 12: every 256th new room sweeps the registry. It used to drop the rank of a room the
    prefill had just placed (no handshake entry yet) and the event a decode's rank query waited on,
    so that pair failed with a bootstrap timeout SGLang does not have (0.2-0.4 % of the routers'
    requests in every h2h). Only what stayed unfinished for `stale_after_s` goes."""
    registry = bootstrap.RoomRegistry(dp_size=8, follow_room=False, stale_after_s=60.0)
    registry.record_rank(7, 3)  # the prefill placed room 7; its handshake has not run yet
    asking = asyncio.create_task(registry.resolve_rank(8, 5.0))  # a decode asks before room 8 is placed
    await asyncio.sleep(0)
    for room in range(1000, 1256):  # other pairs' handshakes: the 256th new room sweeps
        registry.connect(room, 0)
    assert await registry.resolve_rank(7, 0.1) == 3
    registry.record_rank(8, 5)
    assert await asyncio.wait_for(asking, 1.0) == 5

    stale = bootstrap.RoomRegistry(dp_size=8, follow_room=False, stale_after_s=0.01)
    stale.record_rank(9, 1)
    await asyncio.sleep(0.05)
    for room in range(256):
        stale.connect(room, 0)
    assert await stale.resolve_rank(9, 0.01) is None  # never handshaken, swept by age


async def test_prompts_of_one_prefill_step_share_its_stamps(start: Start, http) -> None:
    p = await start(mode="prefill")
    d = await start(mode="decode")
    bodies = [pd_body(p, room=r) for r in (10, 11)]  # ranks 0 and 1, sent together: one step
    outs = await asyncio.gather(*(post(http, f"{e.url}/generate", b) for b in bodies for e in (p, d)))
    (s0, p0), _, (s1, p1), _ = outs
    assert s0 == s1 == 200
    m0, m1 = p0["meta_info"], p1["meta_info"]
    assert m0["prefill_finished_time"] == m1["prefill_finished_time"]
    assert m0["forward_entry_time"] == m1["forward_entry_time"]
