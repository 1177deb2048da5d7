"""The idle trim: freed heap goes back to the OS after load, never during it."""

from __future__ import annotations

import asyncio

from sbs.scheduler.service import memory


async def test_the_heap_is_trimmed_once_per_idle_spell_after_requests_and_never_under_load() -> None:
    state = {"in_flight": 0, "finished": 0}
    trims: list[tuple[int, int]] = []
    task = asyncio.create_task(
        memory.trim_when_idle(
            lambda: state["in_flight"], lambda: state["finished"], period_s=0.01,
            trim=lambda: trims.append((state["in_flight"], state["finished"])),
        )
    )  # fmt: skip
    try:
        await asyncio.sleep(0.1)
        assert trims == []  # idle from the start: nothing was freed
        state.update(in_flight=5, finished=3)
        await asyncio.sleep(0.1)
        assert trims == []  # under load
        state.update(in_flight=0, finished=8)
        await asyncio.sleep(0.1)
        assert trims == [(0, 8)]  # once, when the load ended
    finally:
        task.cancel()


def test_glibc_trim_is_found_here_and_runs() -> None:
    trim = memory.glibc_trim()
    assert trim is not None  # the CI and dev machines are glibc Linux
    trim()
