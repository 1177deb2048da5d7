"""Hostile and odd client input: refused before it is accepted, with a 4xx naming the field; never a
500, a leaked job or a dropped connection (issue 13, "Already found" 1 and 6, "Protocol abuse")."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sbs.scheduler.service import protocol
from sbs.scheduler.service.relay import Relay

from tests.scheduler.service.harness import (
    Cluster,
    Recorder,
    Service,
    raw_http,
    start_cluster,
    start_service,
)

GEN = {"text": "hello " * 40, "sampling_params": {"max_new_tokens": 6}}
CONTEXT = 4096
"""The test engines' context length (`/server_info` publishes `max_req_input_len` = 4095, and an
SGLang scheduler refuses prompts of that length or more: 4094 is the longest)."""


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await start_cluster(prefill=1, prefill_dp=2, decode=1, decode_dp=2, context_length=CONTEXT)
    yield c
    await c.close()


async def post_raw(svc: Service, path: str, data: bytes, **headers: str) -> tuple[int, Any, Any]:
    hdrs = {"Content-Type": "application/json", **headers}
    async with svc.client.post(svc.url + path, data=io.BytesIO(data), headers=hdrs) as r:
        return r.status, await r.json(content_type=None), r.headers


async def assert_nothing_accepted(svc: Service) -> None:
    assert svc.total("sbs_requests_accepted_total") == 0
    assert not svc.dispatcher.jobs and svc.dispatcher.describe()["buffered"] == 0


ABSURD = [
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 1%s}' % ("0" * 400), "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": -1}', "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": true}', "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 5.5}', "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": "16"}', "max_tokens"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}', None),
    ("/v1/chat/completions", '{"messages": [{"role": "user"}], "max_completion_tokens": 2147483648}',
     "max_completion_tokens"),
    ("/generate", '{"text": "x", "sampling_params": {"max_new_tokens": 10000000000000000000000}}',
     "sampling_params.max_new_tokens"),
    ("/generate", '{"input_ids": [1, true]}', "input_ids.1"),
    ("/generate", '{"input_ids": [-3]}', "input_ids.0"),
    ("/generate", '{"text": "x", "stream": "yes"}', "stream"),
    ("/generate", '{"text": "x", "temperature": NaN}', None),
    ("/generate", '{"text": "x", "temperature": -Infinity}', None),
    ("/generate", '{"text": "x", "temperature": 1e999}', None),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "param"), ABSURD)
async def test_absurd_numbers_are_refused_naming_the_field_before_acceptance(
    service: Service, path: str, raw: str, param: str | None
) -> None:
    for _ in range(3):  # repeated: a refusal takes no buffer slot (the old 10**400 leaked one each)
        status, body, _ = await post_raw(service, path, raw.encode())
        assert status == 400, body
        assert body["error"]["param"] == param
        if param is not None:
            assert f"field '{param}'" in body["error"]["message"]
    await assert_nothing_accepted(service)
    assert (await service.post("/generate", GEN))[0] == 200


@pytest.mark.parametrize("where", ["histogram", "relay"])
async def test_a_failure_after_acceptance_still_ends_the_request(
    service: Service, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "histogram":  # what 10**400 did: OverflowError after the job was registered
        monkeypatch.setattr(
            service.dispatcher.metrics.output_tokens,
            "observe",
            lambda _: (_ for _ in ()).throw(OverflowError),
        )
    else:

        async def broken(self: Relay) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(Relay, "run", broken)
    for _ in range(3):
        status, body, _ = await service.post("/generate", GEN)
        assert status == 500 and body["error"]["code"] == "internal_error"
        assert "boom" not in json.dumps(body)  # nothing of the exception is echoed
    await service.assert_accounted()
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="internal_error") == 3
    assert not service.dispatcher.jobs and service.dispatcher.describe()["buffered"] == 0
    assert all(p.outstanding == 0 for p in service.dispatcher.pools.by_revision.values())
    monkeypatch.undo()
    assert (await service.post("/generate", GEN))[0] == 200


@pytest.mark.parametrize(
    ("data", "headers", "status", "needle"),
    [
        (b'{"text": "x"}', {"Content-Type": "application/json; charset=bogus"}, 415, "charset"),
        (b'{"text": "x"}', {"Content-Type": "application/json; charset=latin-1"}, 415, "charset"),
        (b'{"text": "\xff\xfe"}', {}, 400, "not valid UTF-8"),
        (b"[" * 1000 + b"]" * 1000, {}, 400, "nested deeper than 64"),
        (b'{"text": "x", "a": ' + b"[" * 64 + b"]" * 64 + b"}", {}, 400, "nested deeper than 64"),
        (b'{"text": "x", "a": ' + b"{}" + b"}", {}, 200, ""),
        (b'{"text": "x"', {}, 400, "not valid JSON"),
        (b'{"text": "x", "temperature": NaN}', {}, 400, "NaN is not a JSON number"),
        (b'{"text": "x", "n": 1' + b"0" * 5000 + b"}", {}, 400, "not valid JSON"),
        (b"", {}, 400, "not valid JSON"),
        (b'"just a string"', {}, 400, "must be a JSON object"),
    ],
)
async def test_odd_bodies_are_4xx_naming_the_problem(
    service: Service, data: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    got, body, _ = await post_raw(service, "/generate", data, **headers)
    assert got == status, body
    if status != 200:
        assert needle in body["error"]["message"]
        await assert_nothing_accepted(service)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "a\\ud800"}]}',
        b'{"messages": [{"role": "user", "content": "a"}], "stop": ["\\udfff"]}',
        b'{"messages": [{"role": "user", "content": "a"}], "\\ud800": 1}',
    ],
)
async def test_lone_surrogates_are_refused_not_sent_to_crash_the_engines(
    service: Service, raw: bytes
) -> None:
    status, body, _ = await post_raw(service, "/v1/chat/completions", raw)
    assert status == 400 and "lone surrogate" in body["error"]["message"]
    await assert_nothing_accepted(service)
    ok = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 paired is fine"}], "max_tokens": 3}'
    assert (await post_raw(service, "/v1/chat/completions", ok))[0] == 200


async def test_bodies_over_the_limit_are_413_naming_it(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits={"max_body_bytes": 4096})
    try:
        big = json.dumps({"text": "x" * 5000}).encode()
        status, body, _ = await post_raw(svc, "/generate", big)
        assert status == 413 and "4096 bytes" in body["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"text": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        async with svc.client.post(svc.url + "/generate", data=chunks()) as r:
            assert r.status == 413 and "4096 bytes" in (await r.json())["error"]["message"]
        bomb = gzip.compress(json.dumps({"text": "x" * 10**6}).encode())  # 1 MB unpacked from ~1 kB
        status, body, _ = await post_raw(svc, "/generate", bomb, **{"Content-Encoding": "gzip"})
        assert status == 413
        await assert_nothing_accepted(svc)
        assert (await svc.post("/generate", GEN))[0] == 200
    finally:
        await svc.close()


@pytest.mark.parametrize(
    ("head", "param"),
    [
        ("X-Request-Id: a\x01b", "X-Request-Id"),
        ("X-Request-Id: " + "r" * 129, "X-Request-Id"),
        ("X-Request-Id: caf\xe9", "X-Request-Id"),
        ("X-Request-Id: two words", "X-Request-Id"),
    ],
)
async def test_bad_client_request_ids_are_refused_and_never_echoed(
    service: Service, head: str, param: str
) -> None:
    body = json.dumps(GEN).encode()
    answer = await raw_http(
        service.url,
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head.encode("latin-1")
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:200]  # aiohttp's parser refuses control characters
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"x-request-id" not in headers.lower()
    if b"application/json" in headers:
        assert json.loads(payload)["error"]["param"] == param
    await assert_nothing_accepted(service)


async def test_a_bad_body_rid_is_refused_and_a_good_one_echoed(service: Service) -> None:
    status, body, headers = await service.post("/generate", {**GEN, "rid": "a\nb"})
    assert status == 400 and body["error"]["param"] == "rid" and "X-Request-Id" not in headers
    status, body, headers = await service.post("/generate", {**GEN, "rid": "mine-1"})
    assert status == 200 and headers["X-Request-Id"] == "mine-1"


async def test_duplicate_client_request_ids_never_collide_at_the_engines(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    svc = await start_service(cluster)
    try:
        long = {**GEN, "sampling_params": {"max_new_tokens": 200}}
        results = await asyncio.gather(
            *(svc.post("/generate", long, headers={"X-Request-Id": "same"}) for _ in range(4))
        )
        assert [s for s, _, _ in results] == [200] * 4  # the engines saw 4 distinct rids
        assert all(h["X-Request-Id"] == "same" for _, _, h in results)
        engine_rids = [d["rid"] for _, d in rec.bodies]
        assert len(set(engine_rids)) == 4 and "same" not in engine_rids
    finally:
        await svc.close()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/generate", {"input_ids": [1] * CONTEXT}, "input_ids"),
        ("/v1/completions", {"prompt": [[7] * CONTEXT]}, "prompt"),
        ("/generate", {"text": "x" * (8 * CONTEXT)}, "text"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "y" * (8 * CONTEXT)}]},
            "messages",
        ),
    ],
)
async def test_a_prompt_longer_than_the_context_is_refused_before_buffering(
    service: Service, path: str, body: dict[str, Any], param: str
) -> None:
    status, answer, _ = await service.post(path, body)
    assert status == 400 and answer["error"]["param"] == param
    assert "longer than the model accepts (4094 tokens)" in answer["error"]["message"]
    await assert_nothing_accepted(service)


async def test_closer_text_prompts_are_left_to_the_engine_and_ids_at_the_limit_pass(service: Service) -> None:
    status, _, _ = await service.post(
        "/generate", {"input_ids": [1] * (CONTEXT - 1 - 6), "sampling_params": {"max_new_tokens": 6}}
    )
    assert status == 200
    # ~4.5 bytes per token estimated beyond the context, but under the 8-bytes-per-token bound: the
    # engine (whose tokenizer counts) decides, and refuses.
    status, answer, _ = await service.post("/generate", {"text": "x" * (5 * CONTEXT)})
    assert status == 400 and "context length" in json.dumps(answer)
    assert service.metric("sbs_requests_errored_total", endpoint="/generate", reason="upstream_rejected") == 1


async def test_a_configured_prompt_limit_wins(cluster: Cluster) -> None:
    svc = await start_service(cluster, limits={"max_prompt_tokens": 10})
    try:
        status, answer, _ = await svc.post("/generate", {"input_ids": list(range(11))})
        assert status == 400 and "(10 tokens)" in answer["error"]["message"]
        assert (await svc.post("/generate", {"input_ids": list(range(10))}))[0] == 200
    finally:
        await svc.close()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/generate", {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": CONTEXT - 99}},
         "sampling_params.max_new_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                  "max_completion_tokens": CONTEXT}, "max_completion_tokens"),
    ],
)  # fmt: skip
async def test_an_output_limit_beyond_the_context_is_refused_before_buffering(
    service: Service, path: str, body: dict[str, Any], param: str
) -> None:
    # SGLang refuses prompt + max_new_tokens > context (always, unless it truncates); so does the
    # service, before such a request takes a buffer slot (or, under sbs, holds up the next release).
    status, answer, _ = await service.post(path, body)
    assert status == 400 and answer["error"]["param"] == param
    assert f"exceed the model's context length ({CONTEXT} tokens)" in answer["error"]["message"]
    await assert_nothing_accepted(service)
    ok = {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 4}}
    assert (await service.post("/generate", ok))[0] == 200


def test_engines_that_truncate_or_say_nothing_leave_prompts_unchecked() -> None:
    from sbs.scheduler.service.engine_registry import context_length, input_limit

    assert input_limit({"max_req_input_len": 4090, "context_length": 4096}) == 4089
    assert input_limit({"context_length": 4096}) == 4095
    assert input_limit({"context_length": None}) is None and input_limit({"max_req_input_len": True}) is None
    assert context_length({"context_length": 4096}) == 4096 and context_length({}) is None


async def test_large_bodies_are_parsed_off_the_event_loop(cluster: Cluster) -> None:
    # 6 MiB of nested arrays: about a second of json + pydantic (and the GIL: a thread would not help).
    svc = await start_service(cluster, limits={"inline_parse_bytes": 1024})
    try:
        payload = b'{"nested": ' + b"[" + b"[[[1]]]," * (6 * 2**20 // 8) + b"[[[1]]]]}"  # no prompt: 400
        lags: list[float] = []
        loop = asyncio.get_running_loop()

        async def tick() -> None:
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - t - 0.01)

        assert (await post_raw(svc, "/generate", b'{"text": "warm the workers up"}'))[0] == 200
        ticker = asyncio.ensure_future(tick())
        try:
            status, body, _ = await post_raw(svc, "/generate", payload)
        finally:
            ticker.cancel()
        assert status == 400 and "exactly one of 'text' and 'input_ids'" in body["error"]["message"]
        assert max(lags) < 0.5, f"the event loop stalled {max(lags):.2f} s"
    finally:
        await svc.close()


def test_request_ids_are_checked_header_first() -> None:
    assert protocol.request_id("abc", {"rid": "\x00"}, 8) == "abc"
    assert protocol.request_id(None, {"rid": "r-1"}, 8) == "r-1"
    assert protocol.request_id(None, {"rid": 5}, 8) is None
    with pytest.raises(protocol.InvalidRequest, match="1 to 8 visible ASCII"):
        protocol.request_id("123456789", None, 8)
