"""Side-by-side tables of live benchmark results, and SBS's ratios to the best other system."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sbs.sim.summary_table import LATENCY_KEYS, align, cell, pick, summary_lines

_COLUMNS = pick(
    *LATENCY_KEYS,
    "throughput_tok_s",
    "output_throughput_tok_s",
    "request_throughput",
    "goodput_rps",
    "completed",
    "errors",
)

RATIO_KEYS = (
    ("TTFT mean", "ttft_mean_s"),
    ("TTFT p90", "ttft_p90_s"),
    ("TTFT p99", "ttft_p99_s"),
    ("TPOT mean", "tpot_mean_s"),
    ("throughput", "throughput_tok_s"),
)


MAX_ERROR_SHARE = 0.01
"""A system whose errors exceed this share of its requests is not a candidate for "best other"."""


def best_other(summaries: Mapping[str, Mapping[str, Any]], *, exclude: str = "sbs") -> str | None:
    """The system other than `exclude` with the lowest TTFT p90 (ties: lower mean) among those that
    completed all but at most 1 % of their requests; None when there is none."""

    def ok(s: Mapping[str, Any]) -> bool:
        total = (s.get("completed") or 0) + (s.get("errors") or 0)
        return s.get("ttft_p90_s") is not None and (s.get("errors") or 0) <= MAX_ERROR_SHARE * total

    cands = [n for n, s in summaries.items() if n != exclude and ok(s)]
    if not cands:
        return None
    return min(cands, key=lambda n: (summaries[n]["ttft_p90_s"], summaries[n]["ttft_mean_s"]))


def ratios(summaries: Mapping[str, Mapping[str, Any]], base: str) -> dict[str, dict[str, float | None]]:
    """Each system's metric ÷ the base system's (1.0 = equal; TTFT < 1 is better, throughput > 1)."""
    b = summaries[base]
    out: dict[str, dict[str, float | None]] = {}
    for name, s in summaries.items():
        row: dict[str, float | None] = {}
        for _, key in RATIO_KEYS:
            v, w = s.get(key), b.get(key)
            row[key] = v / w if v is not None and w else None
        row["errors_minus_base"] = float((s.get("errors") or 0) - (b.get("errors") or 0))
        out[name] = row
    return out


def table(summaries: Mapping[str, Mapping[str, Any]], *, units: str) -> str:
    """Metric table, then each system's ratios to the best system other than SBS."""
    lines = summary_lines("system", summaries.items(), _COLUMNS)
    lines.append(units)
    base = best_other(summaries)
    if base is None:
        return "\n".join(lines)
    rat = ratios(summaries, base)
    rrows = [["vs " + base] + [label for label, _ in RATIO_KEYS] + ["errors"]]
    for name, r in rat.items():
        rrows.append(
            [name]
            + [cell("{:.2f}x", r[key]) for _, key in RATIO_KEYS]
            + [cell("{:+.0f}", r["errors_minus_base"])]
        )
    lines.append("")
    lines.append(
        f"ratios to the best system other than sbs ({base}: lowest TTFT p90 among those with ≤ 1 % errors):"
    )
    lines.extend(align(rrows))
    if "sbs" in summaries:
        lines.extend(_target_lines(rat["sbs"], base))
    return "\n".join(lines)


TARGET_LOWER = 0.35
"""Issue 12's head-to-head target: SBS's TTFT mean and p90 this much below the best other system's."""


def _target_lines(r: Mapping[str, Any], base: str) -> list[str]:
    out = []
    for label, key in (("mean", "ttft_mean_s"), ("p90", "ttft_p90_s")):
        x = r.get(key)
        if x is None:
            continue
        than = f"{1 - x:.0%} lower" if x <= 1 else f"{x - 1:.0%} higher"
        met = "met" if x <= 1 - TARGET_LOWER else "NOT met"
        out.append(f"sbs TTFT {label} {than} than {base}'s (target ≥ {TARGET_LOWER:.0%} lower: {met})")
    return out
