"""The chaos table and its summary line."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sbs.bench.chaos.runner import Result

HEADER = (
    "| scenario | kind | accepted | completed | retryable | rejected | lost | hung "
    "| TTFT p90 before / during / after (s) | recovery (s) | targets |"
)


def _s(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def row(r: Result) -> str:
    t = r.tally
    held = ", ".join(
        f"{name}: {'ok' if ok else 'MISSED'} ({detail})" for name, (ok, detail) in r.targets.items()
    )
    ttft = f"{_s(r.ttft_before)} / {_s(r.ttft_during)} / {_s(r.ttft_after)}"
    rec = "not within the run" if r.recovery_s is None else f"{r.recovery_s:.1f}"
    return (
        f"| {r.name} | {r.kind} | {t.accepted} | {t.completed} | {t.retryable} | {t.rejected} | {t.lost} "
        f"| {t.hung} | {ttft} | {rec} | {held or '-'} |"
    )


def table(results: Sequence[Result]) -> str:
    lines = [HEADER, "|" + "---|" * 11]
    lines += [row(r) for r in results]
    return "\n".join(lines)


def details(results: Sequence[Result]) -> str:
    """Notes and the non-completed outcomes of each scenario, one block each."""
    out = []
    for r in results:
        out.append(
            f"- {r.name}: " + "; ".join([*r.notes, *(f"{k} x{n}" for k, n in r.tally.details.items())])
        )
    return "\n".join(out)


def summary(results: Sequence[Result]) -> str:
    tot = [
        sum(getattr(r.tally, k) for r in results)
        for k in ("accepted", "completed", "retryable", "lost", "hung")
    ]
    a, c, rt, lost, hung = tot
    counts = f"accepted {a}, completed {c}, retryable {rt}, lost {lost}, hung {hung}"
    return f"chaos: {len(results)} scenarios, {counts}"


def passed(results: Sequence[Result]) -> bool:
    return bool(results) and all(r.ok for r in results)
