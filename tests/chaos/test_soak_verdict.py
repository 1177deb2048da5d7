"""The soak's verdict: fds and tasks that follow the requests in flight are flat, and RSS idle at
the end equals RSS idle after the warm-up; a leak is not; the trace is split at the warm-up."""

from __future__ import annotations

from typing import Any

from sbs.bench.chaos.soak import split, verdict
from sbs.sim.trace import build_trace


def _row(
    t: float, in_flight: int | None, fds: int, tasks: int, rss: float = 100.0, **tags: str
) -> dict[str, Any]:
    comp = {"rss_mib": rss, "fds": fds, "tasks": tasks, "threads": 5}
    return {"t": t, "scheduler": comp, "operator": {**comp, "fds": 17, "tasks": 50}, "outstanding": in_flight,
            **tags}  # fmt: skip


def _run(leak_per_min: int = 0, rss_growth: float = 0.0, end_fds: int = 23) -> list[dict[str, Any]]:
    """Idle (12 fds), a warm-up that starts the body parser (+11 fds for good), idle again, 30 min of
    load that rises and falls with the trace, idle at the end."""
    rows = [_row(0, 0, 12, 7, 80.0, idle="before")]
    rows += [_row(m * 60, 1000, 23 + 1000, 7 + 1000, 140.0, phase="warm-up") for m in range(1, 5)]
    rows.append(_row(6 * 60, 0, 23, 7, 100.0, idle="warm"))
    for minute in range(7, 37):
        n = 1000 + (300 if minute % 4 == 0 else 0)  # the trace's own ups and downs
        extra = leak_per_min * (minute - 6)
        rss = 140.0 + 0.05 * n + 100.0 * rss_growth * (minute - 6) / 30
        rows.append(_row(minute * 60, n, 23 + n + extra, 7 + n + extra, rss, phase="load"))
    rows.append(_row(37 * 60, 0, 20, 7, phase="settle"))
    rows.append(_row(38 * 60, 0, end_fds + leak_per_min * 30, 7, 100.0 * (1 + rss_growth), idle="end"))
    return rows


def test_curves_that_follow_the_load_are_flat() -> None:
    ok, lines = verdict(_run(), errors=0)
    assert ok, lines


def test_a_slow_leak_of_tasks_and_fds_is_caught() -> None:
    ok, lines = verdict(_run(leak_per_min=10), errors=0)
    assert not ok, lines


def test_sockets_left_open_after_the_drain_are_caught() -> None:
    ok, lines = verdict(_run(end_fds=140), errors=0)
    assert not ok, lines


def test_rss_retained_after_the_load_and_errors_are_caught() -> None:
    assert not verdict(_run(rss_growth=0.2), errors=0)[0]
    assert not verdict(_run(), errors=1)[0]


def test_a_run_without_requests_in_flight_or_idle_samples_fails() -> None:
    rows = _run()
    for r in rows:
        if r.get("phase") == "load":
            r["outstanding"] = None
    assert not verdict(rows, errors=0)[0]
    assert not verdict([r for r in _run() if r.get("idle") != "warm"], errors=0)[0]


def test_the_trace_is_split_at_the_warm_up_each_part_from_zero() -> None:
    trace = build_trace("t", [0.0, 1.0, 2.5, 4.0], [10, 20, 30, 40], [1, 2, 3, 4])
    warm, rest = split(trace, 2.0)
    assert [r.prompt_tokens for r in warm.requests] == [10, 20]
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in rest.requests] == [
        (0.0, 30, 3),
        (1.5, 40, 4),
    ]
