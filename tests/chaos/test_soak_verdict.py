"""The soak's verdict: fds and tasks that follow the requests in flight are flat; a leak is not."""

from __future__ import annotations

from typing import Any

from sbs.bench.chaos.soak import verdict


def _row(t: float, in_flight: int | None, fds: int, tasks: int, rss: float = 100.0) -> dict[str, Any]:
    comp = {"rss_mib": rss, "fds": fds, "tasks": tasks, "threads": 5}
    return {"t": t, "scheduler": comp, "operator": {**comp, "fds": 17, "tasks": 50}, "outstanding": in_flight}


def _run(leak_per_min: int = 0, rss_growth: float = 0.0, end_fds: int = 12) -> list[dict[str, Any]]:
    rows = [_row(0, 0, 12, 7)]
    for minute in range(1, 31):
        n = 1000 + (300 if minute % 4 == 0 else 0)  # the trace's own ups and downs
        extra = leak_per_min * minute
        rss = 100.0 * (1 + rss_growth * minute / 30)
        rows.append(_row(minute * 60, n, 12 + n + extra, 7 + n + extra, rss))
    rows.append(_row(32 * 60, 0, end_fds, 7))
    return rows


def test_curves_that_follow_the_load_are_flat() -> None:
    ok, lines = verdict(_run(), warmup_s=300, errors=0)
    assert ok, lines


def test_a_slow_leak_of_tasks_and_fds_is_caught() -> None:
    ok, lines = verdict(_run(leak_per_min=10), warmup_s=300, errors=0)
    assert not ok, lines


def test_sockets_left_open_after_the_drain_are_caught() -> None:
    ok, lines = verdict(_run(end_fds=40), warmup_s=300, errors=0)
    assert not ok, lines


def test_rss_growth_and_errors_are_caught() -> None:
    assert not verdict(_run(rss_growth=0.2), warmup_s=300, errors=0)[0]
    assert not verdict(_run(), warmup_s=300, errors=1)[0]


def test_a_run_without_requests_in_flight_fails() -> None:
    rows = _run()
    for r in rows[1:-1]:
        r["outstanding"] = None
    assert not verdict(rows, warmup_s=300, errors=0)[0]
