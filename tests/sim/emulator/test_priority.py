"""SGLang's priority scheduling in the emulator: the `priority` field, `--enable-priority-scheduling`,
`--schedule-low-priority-values-first`, and what a priority does without the flag."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sbs.sim.emulator import requests
from sbs.sim.emulator.engine_runtime import PRIORITY_DISABLED
from sbs.sim.engine_priority import PriorityOrder

from tests.sim.emulator.conftest import Start, post
from tests.sim.emulator.test_cli import settings

CHUNK = 1024


def body(tokens: int, priority: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"input_ids": [7] * tokens, "sampling_params": {"max_new_tokens": 1}, **extra}
    if priority is not None:
        out["priority"] = priority
    return out


async def finish_order(start: Start, http, **flags: Any) -> list[str]:
    """A 6-chunk prompt runs; then `low` (priority 1) and `high` (priority 9) arrive, a chunk each, one
    after the other is in the engine (so a busy machine cannot reorder them). Returns the order the two
    finish in."""
    eng = await start(dp_size=1, chunked_prefill_size=CHUNK, time_factor=0.5, **flags)  # ~65 ms a step
    url = f"{eng.url}/generate"
    order: list[str] = []

    async def send(name: str, b: dict[str, Any]) -> None:
        status, out = await post(http, url, b)
        assert status == 200, out
        order.append(name)

    first = asyncio.create_task(send("first", body(6 * CHUNK, priority=0)))
    await _until(
        lambda: eng.runtime.prefill is not None and eng.runtime.prefill.busy()
    )  # its first chunk runs
    low = asyncio.create_task(send("low", body(CHUNK, priority=1)))
    await _until(lambda: len(eng.runtime.reqs) == 2)
    high = asyncio.create_task(send("high", body(CHUNK, priority=9)))
    await _until(lambda: len(eng.runtime.reqs) == 3)
    assert eng.runtime.prefill.busy()  # both queued behind the running prompt
    await asyncio.gather(first, low, high)
    assert order[0] == "first"  # its chunks go on: a started prompt is never passed
    return order[1:]


async def test_priority_orders_the_prefill_queue(start: Start, http) -> None:
    assert await finish_order(start, http, enable_priority_scheduling=True) == ["high", "low"]


async def test_low_values_first(start: Start, http) -> None:
    flags = {"enable_priority_scheduling": True, "schedule_low_priority_values_first": True}
    assert await finish_order(start, http, **flags) == ["low", "high"]


async def test_without_the_flag_priority_is_ignored(start: Start, http) -> None:
    assert await finish_order(start, http) == ["low", "high"]


async def test_abort_on_priority_when_disabled(start: Start, http) -> None:
    eng = await start(dp_size=1, time_factor=0.0, abort_on_priority_when_disabled=True)
    status, out = await post(http, f"{eng.url}/generate", body(10, priority=3))
    assert status == 503 and PRIORITY_DISABLED in str(out)
    status, _ = await post(http, f"{eng.url}/generate", body(10))  # no priority: served
    assert status == 200
    on = await start(
        dp_size=1, time_factor=0.0, enable_priority_scheduling=True, abort_on_priority_when_disabled=True
    )
    status, _ = await post(http, f"{on.url}/generate", body(10, priority=3))  # used, not refused
    assert status == 200


@pytest.mark.parametrize(
    ("value", "why"),
    [(True, "must be an integer"), ("3", "must be an integer"), (1.5, "must be an integer"),
     (1 << 63, "signed 64-bit"), (-(1 << 63) - 1, "signed 64-bit")],
)  # fmt: skip
async def test_bad_priority_is_400_naming_the_field(start: Start, http, value: object, why: str) -> None:
    eng = await start(dp_size=1, time_factor=0.0, enable_priority_scheduling=True)
    for route, b in (
        ("/generate", body(10)),
        ("/v1/completions", {"prompt": [7] * 10, "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ):
        status, out = await post(http, f"{eng.url}{route}", {**b, "priority": value})
        assert status == 400 and "priority" in str(out) and why in str(out), (route, out)


def test_every_route_reads_priority() -> None:
    assert requests.parse_generate(body(10, priority=-5)).priority == -5
    assert requests.parse_completion({"prompt": "hi", "priority": (1 << 63) - 1}).priority == (1 << 63) - 1
    chat = {"messages": [{"role": "user", "content": "hi"}], "priority": 2}
    assert requests.parse_chat(chat).priority == 2
    assert requests.parse_chat({**chat, "priority": None}).priority is None


def test_cli_flags() -> None:
    s = settings(
        "--enable-priority-scheduling",
        "--schedule-low-priority-values-first",
        "--default-priority-value",
        "4",
        "--abort-on-priority-when-disabled",
        "--priority-scheduling-preemption-threshold",
        "10",
    )
    assert s.priority_order == PriorityOrder(low_values_first=True, default=4)
    assert s.abort_on_priority_when_disabled
    assert settings().priority_order is None


async def _until(cond: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)
