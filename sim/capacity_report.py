"""Text and JSON of `sbs.sim.capacity` results: progress lines, the final table, the `--json` document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sbs.sim.capacity import PolicyCapacity, Probe
from sbs.sim.cluster import ClusterConfig
from sbs.sim.summary_table import align


def probe_line(policy: str, p: Probe) -> str:
    """One simulated load: its offered rate, backlog growth, verdict and TTFT p90."""
    verdict = "sustainable" if p.sustainable else "UNSUSTAINABLE"
    dropped = f", {p.dropped} dropped" if p.dropped else ""
    return (
        f"capacity {policy} {p.purpose} @ {p.load:.3f} of nominal ({p.offered_tok_s / 1e3:.1f}k tok/s): "
        f"backlog growth {p.deficit:+.1%} of offered -> {verdict}; TTFT p90 {p.ttft_p90_s:.3f} s"
        f"{dropped} ({p.sim_cpu_s:.1f} s cpu)"
    )


def result_line(r: PolicyCapacity, elapsed_s: float) -> str:
    """One policy's capacity and knee, once measured."""
    runs = f"({len(r.probes)} runs, {elapsed_s:.0f} s elapsed)"
    if r.capacity_load is None:
        return f"{r.policy}: capacity below {r.probes[-1].load:.3g} of nominal {runs}"
    bound = "" if r.upper_load is not None else " (at least: the highest load tried)"
    if r.knee_load is not None:
        knee_tok_s, of_cap = r.knee_load * r.nominal_tok_s, r.knee_load / r.capacity_load
        knee = f"knee {knee_tok_s / 1e3:.1f}k tok/s ({of_cap:.2f} of capacity)"
    else:
        knee = "no knee measured" if r.ttft_p90_ref_s is None else "no knee below capacity"
    warning = f"\n  warning: {r.warning}" if r.warning else ""
    return (
        f"{r.policy}: capacity {r.capacity_tok_s / 1e3:.1f}k prompt tok/s = {r.capacity_load:.3f} of nominal"
        f"{bound}; {knee} {runs}{warning}"
    )


def table(results: Sequence[PolicyCapacity]) -> str:
    """One row per policy ("+" after a capacity that is only a lower bound). Capacity and knee are in
    the `--load` yardstick (multiplier × nominal); served is what the capacity run's window served."""
    head = [
        "policy",
        "capacity tok/s",
        "of nominal",
        "served tok/s",
        "knee tok/s",
        "knee/cap",
        "TTFT p90 @0.1",
    ]
    rows = [[*head, "runs"]]
    for r in results:
        d = r.to_dict()
        rows.append(
            [
                r.policy,
                f"{r.capacity_tok_s:.0f}" + ("+" if r.status == "above max load" else ""),
                f"{d['capacity_of_nominal']:.3f}",
                f"{r.served_tok_s:.0f}",
                _cell("{:.0f}", d["knee_tok_s"]),
                _cell("{:.2f}", d["knee_of_capacity"]),
                _cell("{:.3f}", r.ttft_p90_ref_s),
                str(d["runs"]),
            ]
        )
    return "\n".join(align(rows))


def at_table(grid: dict[str, list[Probe]]) -> str:
    """`capacity --at`: one row per load, per policy its backlog growth and served prompt tok/s, and
    the first policy's served rate against each other's."""
    names = list(grid)
    first = grid[names[0]]
    rows = [["load", *(f"{n} growth / served" for n in names), *(f"{names[0]}/{n}" for n in names[1:])]]
    for i, p0 in enumerate(first):
        cells = [f"{grid[n][i].deficit:+.1%} / {grid[n][i].served_tok_s / 1e3:.1f}k" for n in names]
        other = [grid[n][i].served_tok_s for n in names[1:]]
        ratios = [f"{p0.served_tok_s / x:.3f}" if x else "-" for x in other]
        rows.append([f"{p0.load:.4g}", *cells, *ratios])
    return "\n".join(align(rows))


def basis_line(basis: dict[str, Any], nominal_tok_s: float) -> str:
    """What `--load-basis capacity` scales loads to."""
    tok_s = basis["capacity_tok_s"]
    source = basis["capacity_policy"] or "--capacity-tok-s"
    return (
        f"load basis: capacity of {source}, {tok_s / 1e3:.1f}k prompt tok/s "
        f"({tok_s / nominal_tok_s:.3f} of nominal); load 1.0 = that rate"
    )


def document(
    results: Sequence[PolicyCapacity],
    trace: str,
    cluster: ClusterConfig,
    nominal_tok_s: float,
    opts: dict[str, Any],
    elapsed_s: float,
) -> dict[str, Any]:
    """The `sbs-sim capacity --json` document: the workload, the settings, each policy's result."""
    return {
        "trace": trace,
        "duration_s": opts["duration"],
        "cluster": cluster.model_dump(),
        "nominal_prefill_tok_s": nominal_tok_s,
        "precision": opts["precision"],
        "elapsed_s": round(elapsed_s, 1),
        "policies": {r.policy: r.to_dict() for r in results},
    }


def _cell(fmt: str, value: float | None) -> str:
    return "-" if value is None else fmt.format(value)
