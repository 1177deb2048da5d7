"""`sbs-sim`: compare scheduling policies on a trace with the calibrated simulator.

    sbs-sim compare --trace FILE [--format azure|mooncake] [--rate-scale X | --load L] [--cluster NAME|FILE]
                    [--policies sbs,round_robin,...] [--duration S] [--json OUT] [--plot OUT.png]
    sbs-sim sweep   --trace FILE --loads 0.3,0.5,0.7,0.9 --slo-ttft-p90 S [...]

Bad input prints one line naming the file, line or field, and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
from sbs.scheduler.core import config
from sbs.sim import report
from sbs.sim.capacity import nominal_prefill_tok_s
from sbs.sim.cluster import PRESETS, load_cluster
from sbs.sim.costmodel import CostModel
from sbs.sim.errors import SimInputError
from sbs.sim.loaders import load_trace
from sbs.sim.runner import RunSpec, run_many
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, rate_scaled, tiled, truncated

DEFAULT_POLICIES = "sbs,round_robin,random,least_load,power_of_two,sglang"


def _workload_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--trace", "trace_path", required=True, help="Trace file (Azure CSV or Mooncake JSONL)."
        ),
        click.option("--format", "fmt", type=click.Choice(["azure", "mooncake"]), default=None),
        click.option(
            "--cluster",
            default="ds3-h800",
            show_default=True,
            help=f"Preset ({', '.join(PRESETS)}) or JSON file.",
        ),
        click.option("--policies", default=DEFAULT_POLICIES, show_default=True),
        click.option(
            "--duration",
            type=float,
            default=None,
            help="Keep arrivals of the first S seconds (after scaling).",
        ),
        click.option(
            "--slo-ttft", type=float, default=2.0, show_default=True, help="TTFT SLO (s) for goodput."
        ),
        click.option(
            "--slo-tpot", type=float, default=0.1, show_default=True, help="TPOT SLO (s) for goodput."
        ),
        click.option("--jobs", type=int, default=2, show_default=True, help="Simulations run in parallel."),
        click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None),
        click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


@click.group()
def main() -> None:
    """Calibrated P/D DP+EP simulator driving the real SBS scheduling core."""


def _policies(names: str) -> list[config.PolicySettings]:
    out = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        try:
            out.append(config.policy_settings(name))
        except ValueError as exc:
            raise SimInputError(f"--policies: {exc}") from None
    if not out:
        raise SimInputError("--policies: give at least one policy")
    return out


def _scaled(trace: Trace, rate_scale: float | None, load: float | None, target_tok_s: float | None) -> Trace:
    if rate_scale is not None and load is not None:
        raise SimInputError("--rate-scale and --load are exclusive; give one")
    if rate_scale is not None:
        if rate_scale <= 0:
            raise SimInputError(f"--rate-scale must be > 0, got {rate_scale}")
        return rate_scaled(trace, rate_scale)
    if load is not None:
        if not 0 < load <= 5:
            raise SimInputError(f"--load must be in (0, 5], got {load}")
        assert target_tok_s is not None
        return load_scaled(trace, load * target_tok_s)
    return trace


@main.command()
@_workload_options
@click.option("--rate-scale", type=float, default=None, help="Multiply the trace's arrival rate.")
@click.option(
    "--load",
    type=float,
    default=None,
    help="Offered prompt tokens/s as a fraction of nominal prefill capacity.",
)
def compare(
    trace_path,
    fmt,
    cluster,
    policies,
    duration,
    slo_ttft,
    slo_tpot,
    jobs,
    json_out,
    plot_out,
    rate_scale,
    load,
):
    """Run each policy on the same workload and print a table."""
    _guard(
        lambda: _compare(
            trace_path,
            fmt,
            cluster,
            policies,
            duration,
            slo_ttft,
            slo_tpot,
            jobs,
            json_out,
            plot_out,
            rate_scale,
            load,
        )
    )


def _compare(
    trace_path,
    fmt,
    cluster_name,
    policies,
    duration,
    slo_ttft,
    slo_tpot,
    jobs,
    json_out,
    plot_out,
    rate_scale,
    load,
):
    cluster = load_cluster(cluster_name)
    pols = _policies(policies)
    cost = CostModel()
    base = load_trace(trace_path, fmt)
    nominal = nominal_prefill_tok_s(cluster, cost, base)
    trace = _scaled(base, rate_scale, load, nominal)
    if duration is not None:
        trace = _for_duration(trace, duration)
    if len(trace) == 0:
        raise SimInputError("the workload is empty after scaling/--duration")
    offered = trace.prompt_tokens_per_s
    click.echo(
        f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s "
        f"({trace.mean_rate_rps:.1f} req/s, {offered / 1e3:.1f}k prompt tok/s "
        f"= {offered / nominal:.2f} of nominal {nominal / 1e3:.0f}k tok/s)"
    )
    click.echo(f"cluster {cluster.name}: {report.describe_cluster(cluster)}; {cost.describe()}")
    specs = [RunSpec(trace, cluster, p) for p in pols]
    results = run_many(specs, jobs=jobs, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot, label="compare")
    click.echo(report.table(results, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot))
    doc = {
        "trace": trace.name,
        "requests": len(trace),
        "load_of_nominal": offered / nominal,
        "cluster": cluster.model_dump(),
        "slo": {"ttft_s": slo_ttft, "tpot_s": slo_tpot},
        "policies": {r["policy"]: r["summary"] for r in results},
    }
    _write_outputs(doc, json_out, plot_out, lambda path: report.plot_ttft_cdf(results, path))


@main.command()
@_workload_options
@click.option(
    "--loads", default="0.3,0.5,0.6,0.7,0.8,0.9,1.0", show_default=True, help="Loads (fraction of nominal)."
)
@click.option("--slo-ttft-p90", type=float, default=2.0, show_default=True, help="TTFT p90 SLO (s).")
def sweep(
    trace_path,
    fmt,
    cluster,
    policies,
    duration,
    slo_ttft,
    slo_tpot,
    jobs,
    json_out,
    plot_out,
    loads,
    slo_ttft_p90,
):
    """Find each policy's maximum load meeting a TTFT-p90 SLO."""
    _guard(
        lambda: _sweep(
            trace_path,
            fmt,
            cluster,
            policies,
            duration,
            slo_ttft,
            slo_tpot,
            jobs,
            json_out,
            plot_out,
            loads,
            slo_ttft_p90,
        )
    )


def _sweep(
    trace_path,
    fmt,
    cluster_name,
    policies,
    duration,
    slo_ttft,
    slo_tpot,
    jobs,
    json_out,
    plot_out,
    loads,
    slo_p90,
):
    cluster = load_cluster(cluster_name)
    pols = _policies(policies)
    try:
        grid = sorted(float(x) for x in loads.split(","))
    except ValueError:
        raise SimInputError(f"--loads: expected comma-separated numbers, got {loads!r}") from None
    cost = CostModel()
    base = load_trace(trace_path, fmt)
    nominal = nominal_prefill_tok_s(cluster, cost, base)
    specs = []
    for lv in grid:
        tr = _scaled(base, None, lv, nominal)
        if duration is not None:
            tr = _for_duration(tr, duration)
        specs += [RunSpec(tr, cluster, p, load=lv) for p in pols]
    results = run_many(specs, jobs=jobs, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot, label="sweep")
    best = report.max_load_meeting(results, slo_p90)
    click.echo(report.sweep_table(results, grid, slo_p90, best))
    doc = {
        "trace": base.name,
        "slo_ttft_p90_s": slo_p90,
        "nominal_prefill_tok_s": nominal,
        "max_load": best,
        "runs": [{"policy": r["policy"], "load": r["load"], **r["summary"]} for r in results],
    }
    _write_outputs(doc, json_out, plot_out, lambda path: report.plot_sweep(results, slo_p90, path))


def _for_duration(trace: Trace, duration_s: float) -> Trace:
    """`duration_s` of arrivals: the trace cut, or repeated back to back when it is shorter."""
    if duration_s <= 0:
        raise SimInputError(f"--duration must be > 0, got {duration_s}")
    return tiled(trace, duration_s) if duration_s > trace.duration_s else truncated(trace, duration_s)


def _write_outputs(
    doc: dict, json_out: str | None, plot_out: str | None, plot: Callable[[Path], None]
) -> None:
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        click.echo(f"wrote {json_out}")
    if plot_out:
        Path(plot_out).parent.mkdir(parents=True, exist_ok=True)
        plot(Path(plot_out))
        click.echo(f"wrote {plot_out}")


def _guard(fn: Callable[[], None]) -> None:
    try:
        fn()
    except SimInputError as exc:
        click.echo(f"sbs-sim: error: {exc}", err=True)
        sys.exit(2)
