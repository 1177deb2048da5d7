"""Tables and plots of simulation results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sbs.sim.cluster import ClusterConfig
from sbs.sim.summary_table import LATENCY_KEYS, align, cell, pick, summary_lines

_COMPARE_COLUMNS = pick(
    *LATENCY_KEYS,
    "throughput_tok_s",
    "request_throughput",
    "goodput_rps",
    "prefill_chunk_utilization",
    "dp_imbalance",
    "prefill_time_balance",
    "completed",
    "dropped",
    request_throughput="{:.1f}",
    goodput_rps="{:.1f}",
)


def describe_cluster(c: ClusterConfig) -> str:
    p, d = c.prefill, c.decode
    return (
        f"{p.instances}× prefill {p.nodes_per_instance} nodes DP{p.dp_size} (chunk {p.chunk_tokens}/rank), "
        f"{d.instances}× decode {d.nodes_per_instance} nodes DP{d.dp_size}"
    )


def table(
    results: list[dict[str, Any]],
    *,
    slo_ttft_s: float,
    slo_tpot_s: float,
    bound: dict[str, float] | None = None,
) -> str:
    """Aligned table, one row per policy, times in seconds, then SBS's ratios to the best baseline, and
    where they ran to the oracle and the zero-queue `bound` (`sbs.sim.oracle.bound_summary`)."""
    lines = summary_lines("policy", ((r["policy"], r["summary"]) for r in results), _COMPARE_COLUMNS)
    lines.append(f"(times in s; goodput = req/s meeting TTFT ≤ {slo_ttft_s:g} s and TPOT ≤ {slo_tpot_s:g} s)")
    for policy in BUFFERING:
        ratio = ratios_vs_best_baseline(results, policy)
        if ratio:
            kind = "FCFS immediate baseline" if policy == "sbs-fcfs" else "immediate baseline"
            lines.append(
                f"{policy} vs best {kind} "
                + "({base}): TTFT mean {ttft_mean:+.0%}, p90 {ttft_p90:+.0%}, "
                "throughput {throughput:+.1%}, goodput {goodput:+.0%}".format(**ratio)
            )
    return "\n".join(lines + reference_lines(results, bound))


def reference_lines(results: list[dict[str, Any]], bound: dict[str, float] | None) -> list[str]:
    """SBS's (and sbs-fcfs's) distance to the oracle, and every staggered policy's to the bound."""
    by = {r["policy"]: r["summary"] for r in results}
    out: list[str] = []
    oracle = by.get(ORACLE)
    for policy in BUFFERING:
        if oracle is not None and policy in by:
            fill = oracle.get("oracle_fill_target")
            kept = f" (oracle's step cap {fill:g})" if fill is not None else ""
            out.append(
                f"{policy} vs oracle: TTFT mean {_rel(by[policy], oracle, 'ttft_mean_s'):+.0%}, "
                f"p90 {_rel(by[policy], oracle, 'ttft_p90_s'):+.0%}{kept}"
            )
    if bound is not None:
        above = ", ".join(
            f"{p} {_rel(by[p], bound, 'ttft_mean_s'):+.0%}" for p in (*BUFFERING, ORACLE) if p in by
        )
        out.append(
            f"zero-queue bound (no policy beats it): TTFT mean {bound['ttft_mean_s']:.3f}, "
            f"p90 {bound['ttft_p90_s']:.3f}" + (f"; mean above it: {above}" if above else "")
        )
    return out


def _rel(s: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return s[key] / b[key] - 1.0 if b[key] else math.nan


BUFFERING = ("sbs", "sbs-fcfs")
"""The staggered policies; every other policy but the oracle dispatches at once (the baselines)."""
ORACLE = "oracle"
"""The clairvoyant reference (`sbs.sim.oracle`): neither SBS nor a baseline."""
REFERENCES = (*BUFFERING, ORACLE)
"""The policies that are not immediate baselines."""


def ratios_vs_best_baseline(results: list[dict[str, Any]], policy: str = "sbs") -> dict[str, Any] | None:
    """`policy` relative to the immediate baseline with the lowest TTFT mean (negative = lower). For
    `sbs-fcfs` only the baselines in arrival order count (no `+prio`: engine priority reorders)."""
    by = {r["policy"]: r["summary"] for r in results}
    baselines = [p for p in by if p not in REFERENCES]
    if policy == "sbs-fcfs":
        baselines = [p for p in baselines if "+prio" not in p]
    if policy not in by or not baselines:
        return None
    base_name = min(baselines, key=lambda p: by[p]["ttft_mean_s"])
    s, b = by[policy], by[base_name]
    return {
        "base": base_name,
        "ttft_mean": _rel(s, b, "ttft_mean_s"),
        "ttft_p90": _rel(s, b, "ttft_p90_s"),
        "throughput": _rel(s, b, "throughput_tok_s"),
        "goodput": _rel(s, b, "goodput_rps"),
    }


def max_load_meeting(results: list[dict[str, Any]], slo_p90_s: float) -> dict[str, float]:
    """Per policy, the highest load whose TTFT p90 meets the SLO, interpolated between grid points
    (0.0 if even the lowest load misses it; the top load if none misses)."""
    out: dict[str, float] = {}
    for policy in dict.fromkeys(r["policy"] for r in results):
        pts = sorted((r["load"], r["summary"]["ttft_p90_s"]) for r in results if r["policy"] == policy)
        best = 0.0
        prev: tuple[float, float] | None = None
        for load, p90 in pts:
            if p90 <= slo_p90_s:
                best = load
                prev = (load, p90)
                continue
            if prev is not None:
                (l0, v0), (l1, v1) = prev, (load, p90)
                best = l0 + (l1 - l0) * (slo_p90_s - v0) / (v1 - v0)
            break
        out[policy] = best
    return out


def sweep_table(
    results: list[dict[str, Any]],
    grid: list[float],
    slo_p90_s: float,
    best: dict[str, float],
    *,
    basis: str = "nominal prefill capacity",
) -> str:
    policies = list(dict.fromkeys(r["policy"] for r in results))
    p90 = {(r["policy"], r["load"]): r["summary"]["ttft_p90_s"] for r in results}
    rows = [["load", *policies]]
    for lv in grid:
        rows.append([f"{lv:g}"] + [cell("{:.3f}", p90.get((p, lv))) for p in policies])
    rows.append([f"max@{slo_p90_s:g}s"] + [f"{best[p]:.3f}" for p in policies])
    lines = align(rows)
    lines.insert(0, f"TTFT p90 (s) by load (fraction of {basis}); SLO {slo_p90_s:g} s")
    return "\n".join(lines)


def plot_ttft_cdf(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        v = np.sort(np.asarray(r["ttft"]))
        if len(v):
            ax.plot(
                v, np.arange(1, len(v) + 1) / len(v), label=r["policy"], lw=1.6 if r["policy"] == "sbs" else 1
            )
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF by policy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(results: list[dict[str, Any]], slo_p90_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in results):
        pts = sorted((r["load"], r["summary"]["ttft_p90_s"]) for r in results if r["policy"] == policy)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            label=policy,
            lw=1.6 if policy == "sbs" else 1,
        )
    ax.axhline(slo_p90_s, color="grey", ls="--", lw=0.8, label=f"SLO {slo_p90_s:g} s")
    ax.set_yscale("log")
    ax.set_xlabel("load (fraction of nominal prefill capacity)")
    ax.set_ylabel("TTFT p90 (s)")
    ax.set_title("TTFT p90 vs load")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
