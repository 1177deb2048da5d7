"""`sbs-sim`: compare scheduling policies on a workload with the calibrated simulator.

    sbs-sim compare --trace FILE [--format azure|mooncake|servegen|lengths]
                    [--arrivals trace|poisson|gamma:CV|bursty:F] [--rate-scale X | --load L]
                    [--cluster NAME|FILE] [--policies sbs,sbs-fcfs,eft,round_robin,...]
                    [--duration S] [--long-prompts COUNT:TOKENS] [--json OUT] [--plot OUT.png]
    sbs-sim sweep   --trace FILE --loads 0.3,0.5,0.7,0.9 --slo-ttft-p90 S [...]
    sbs-sim capacity --trace FILE [--policies ...] [--duration S (120)] [--precision 0.03] [--no-knee] [...]
    compare|sweep ... [--load-basis nominal|capacity [--capacity-tok-s X]]: loads as fractions of nominal
                    or of the best immediate baseline's measured capacity (or X prompt tok/s)
    compare|sweep|capacity|plan ... [--cost-override profile-max|NAME=VALUE,...]: change the cost model
    sbs-sim plan    --trace FILE --slo-ttft-p90 S --slo-tpot-p90 S [--policy sbs] [--cluster NAME|FILE]
                    [--max-prefill-groups N] [--max-decode-groups N] [--json OUT] [...]

`plan` exits 3 when no counts within the limits meet the SLOs.

Bad input prints one line naming the file, line, field or flag, and exits with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from sbs.settings import scheduling
from sbs.sim import capacity, capacity_report, cost_override, load_basis, oracle, report, sizing
from sbs.sim.cluster import PRESETS, ClusterConfig, load_cluster
from sbs.sim.costmodel import CostModel
from sbs.sim.errors import SimInputError
from sbs.sim.loaders import lengths, load_trace, servegen
from sbs.sim.long_prompts import parse_long_prompts
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.runner import RunSpec, run_many
from sbs.sim.trace import Trace
from sbs.sim.workload import bursty, load_scaled, rate_scaled, synthetic, tiled, truncated

DEFAULT_POLICIES = (
    "sbs,sbs-fcfs,eft,eft+prio,sglang,sglang+prio,sglang+delayer,least_load,least_load+prio,"
    "power_of_two,round_robin,random,oracle"
)
"""The whole field: SBS and its FCFS variant, the strongest immediate policy (eft), what SGLang's
engines offer a plain router (priority scheduling fed SBS's key, the prefill delayer), the
routers' rank pickers, and the clairvoyant `oracle` as the reference to beat; a first comparison is
the honest one."""
SERVEGEN_DEFAULT_S = 600.0
"""Span generated for workloads without timestamps (ServeGen fits, length tables) without --duration."""
LENGTHS_BASE_RPS = 10.0
"""Poisson rate a length table is given before --load or --rate-scale rescales it."""
CAPACITY_DEFAULT_S = 120.0
MAX_REQUESTS = 10_000_000
"""Most requests a --duration may repeat a trace to (memory: about 0.25 KiB each per simulation job; the
3,200-rank target's 6.26 M requests peak at 1.4 GiB)."""
MAX_POLLS = 7 * 86_400
"""Most load polls a run may simulate: the simulator polls through idle spans, so a trace spanning
years (a mistyped timestamp) would otherwise run for days."""


@dataclass(frozen=True)
class Workload:
    """What the workload options resolve to: the base trace, the cluster and the yardstick of --load."""

    base: Trace
    cluster: ClusterConfig
    cost: CostModel
    nominal_tok_s: float
    opts: dict[str, Any]

    def at(self, *, load: float | None = None, rate_scale: float | None = None) -> Trace:
        """The base trace scaled (one of `load`, `rate_scale`), re-timed, and cut or repeated."""
        trace = self.base
        if rate_scale is not None:
            trace = rate_scaled(trace, rate_scale)
        elif load is not None:
            if trace.duration_s <= 0:
                raise SimInputError(f"--load: {_instant(trace)}, so it has no load to scale")
            own_times = self.opts["arrivals"] == "trace"  # synthetic arrivals are stationary: the mean
            window = self.opts["duration"] if own_times else None
            trace = load_scaled(trace, load * self.nominal_tok_s, window_s=window)
        trace = _arrivals(trace, self.opts["arrivals"], self.opts["seed"])
        duration = self.opts["duration"]
        if duration is not None and duration > trace.duration_s:
            if trace.duration_s <= 0:
                raise SimInputError(f"--duration {duration:g}: {_instant(trace)}, so it cannot be repeated")
            tiles = len(trace) * duration / trace.duration_s
            if tiles > MAX_REQUESTS:
                raise SimInputError(
                    f"--duration {duration:g}: repeating trace {trace.name!r} ({len(trace)} requests in "
                    f"{trace.duration_s:.3g} s) gives about {tiles:.3g} requests, over {MAX_REQUESTS:,}"
                )
            trace = tiled(trace, duration)
        elif duration is not None:
            trace = truncated(trace, duration)
        long = parse_long_prompts(self.opts.get("long_prompts"))
        if long is not None and long.count is not None:  # a share is in `base` already
            trace = long.add_to(trace, seed=self.opts.get("seed", 0))
        if len(trace) == 0:
            raise SimInputError("the workload is empty after scaling and --duration")
        polls = trace.duration_s / self.cluster.loads_period_s
        if polls > MAX_POLLS:
            raise SimInputError(
                f"trace {trace.name!r} spans {trace.duration_s:.3g} s: {polls:.3g} load polls at the "
                f"cluster's loads_period_s of {self.cluster.loads_period_s:g} s, over the limit of "
                f"{MAX_POLLS:,} (a week at 1 s); cut it with --duration"
            )
        return trace


_OPTIONS: dict[str, Callable[[Callable], Callable]] = {
    "trace": click.option(
        "--trace", "trace_path", required=True, help="Trace file (Azure CSV or Mooncake JSONL)."
    ),
    "format": click.option(
        "--format",
        "fmt",
        type=click.Choice(["azure", "mooncake", "servegen", "lengths"]),
        default=None,
        help="Trace format (default: from the file). servegen: --trace is ServeGen's data folder; "
        "lengths: a prompt/output length table (ShareGPT, arXiv), given Poisson arrivals (see --arrivals).",
    ),
    "arrivals": click.option(
        "--arrivals",
        default="trace",
        show_default=True,
        help="Arrival process: trace (its own timestamps), poisson, gamma:CV, or bursty:F (10 s at F× "
        "the rate every 60 s); synthetic ones keep the trace's mean rate and length distribution.",
    ),
    "seed": click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of synthetic workloads and of the simulated cluster's random draws (step-time jitter, "
        "handshakes), added to the cluster's own seed: repeat a run with other seeds to see its spread.",
    ),
    "long-prompts": click.option(
        "--long-prompts",
        default=None,
        metavar="COUNT:TOKENS",
        help="Add COUNT prompts of TOKENS tokens, evenly spread over the (scaled, cut) trace (--load does "
        "not count them); COUNT may instead be a share of the trace's requests (1%), mixed in before "
        "scaling (--load counts them); TOKENS may be a range drawn uniformly (64000-128000).",
    ),
    "cluster": click.option(
        "--cluster",
        default="ds3-h800",
        show_default=True,
        help=f"Preset ({', '.join(PRESETS)}) or JSON file.",
    ),
    "cost-override": cost_override.OPTION,
    "policies": click.option("--policies", default=DEFAULT_POLICIES, show_default=True),
    "duration": click.option(
        "--duration",
        type=float,
        default=None,
        help="Simulate S seconds of arrivals (after scaling): the trace is cut, or repeated if shorter.",
    ),
    "slo-ttft": click.option(
        "--slo-ttft", type=float, default=2.0, show_default=True, help="TTFT SLO (s) for goodput."
    ),
    "slo-tpot": click.option(
        "--slo-tpot", type=float, default=0.1, show_default=True, help="TPOT SLO (s) for goodput."
    ),
    "jobs": click.option(
        "--jobs", type=int, default=2, show_default=True, help="Simulations run in parallel."
    ),
    "json": click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None),
    "plot": click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None),
    "load-basis": click.option(
        "--load-basis",
        type=click.Choice(["nominal", "capacity"]),
        default="nominal",
        show_default=True,
        help="What a load of 1.0 is: the nominal prefill capacity, or the best immediate baseline's "
        "measured capacity (`sbs-sim capacity`; measured first on this workload).",
    ),
    "capacity-tok-s": click.option(
        "--capacity-tok-s",
        type=float,
        default=None,
        help="With --load-basis capacity: a capacity (prompt tok/s) measured before; skips the search.",
    ),
}


def _options(*names: str) -> Callable[[Callable], Callable]:
    """Apply the shared options `names` (in that order on --help)."""

    def apply(f: Callable) -> Callable:
        for name in reversed(names):
            f = _OPTIONS[name](f)
        return f

    return apply


_workload_options = _options(*_OPTIONS)


@click.group()
def main() -> None:
    """Calibrated P/D DP+EP simulator driving the real SBS scheduling core."""


@main.command()
@_workload_options
@click.option("--rate-scale", type=float, default=None, help="Multiply the trace's arrival rate.")
@click.option(
    "--load",
    type=float,
    default=None,
    help="Offered prompt tokens/s as a fraction of nominal prefill capacity.",
)
def compare(**opts: Any) -> None:
    """Run each policy on the same workload and print a table."""
    _guard(lambda: _compare(opts))


def _compare(opts: dict[str, Any]) -> None:
    if opts["rate_scale"] is not None and opts["load"] is not None:
        raise SimInputError("--rate-scale and --load are exclusive; give one")
    _check_range("--rate-scale", opts["rate_scale"], 0.0, None)
    _check_range("--load", opts["load"], 0.0, 5.0)
    if opts["load_basis"] == "capacity" and opts["load"] is None:
        raise SimInputError("--load-basis capacity scales --load; give --load (not --rate-scale)")
    wl = load_workload(opts)
    pols = _policies(opts["policies"])
    scale, basis = _load_basis(opts, wl, pols)
    load = None if opts["load"] is None else opts["load"] * scale
    trace = wl.at(load=load, rate_scale=opts["rate_scale"])
    offered = trace.prompt_tokens_per_s
    click.echo(
        f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s "
        f"({trace.mean_rate_rps:.1f} req/s, {offered / 1e3:.1f}k prompt tok/s "
        f"= {offered / wl.nominal_tok_s:.2f} of nominal {wl.nominal_tok_s / 1e3:.0f}k tok/s)"
    )
    click.echo(f"cluster {wl.cluster.name}: {report.describe_cluster(wl.cluster)}; {wl.cost.describe()}")
    slo = {"slo_ttft_s": opts["slo_ttft"], "slo_tpot_s": opts["slo_tpot"]}
    results = run_many(
        [RunSpec(trace, wl.cluster, p) for p in pols], jobs=opts["jobs"], label="compare", **slo
    )
    staggered = {r["policy"] for r in results} & set(report.REFERENCES)
    bound = oracle.bound_summary(trace, wl.cluster, wl.cost) if staggered else None
    click.echo(report.table(results, **slo, bound=bound))
    doc = {
        "trace": trace.name,
        "requests": len(trace),
        "load_of_nominal": offered / wl.nominal_tok_s,
        **basis,
        "cluster": wl.cluster.model_dump(),
        "slo": {"ttft_s": opts["slo_ttft"], "tpot_s": opts["slo_tpot"]},
        "policies": {r["policy"]: r["summary"] for r in results},
        **({"zero_queue_bound": bound} if bound is not None else {}),
    }
    _write_outputs(doc, opts, lambda path: report.plot_ttft_cdf(results, path))


@main.command()
@_workload_options
@click.option(
    "--loads", default="0.3,0.5,0.6,0.7,0.8,0.9,1.0", show_default=True, help="Loads (fraction of nominal)."
)
@click.option("--slo-ttft-p90", type=float, default=2.0, show_default=True, help="TTFT p90 SLO (s).")
def sweep(**opts: Any) -> None:
    """Find each policy's maximum load meeting a TTFT-p90 SLO."""
    _guard(lambda: _sweep(opts))


def _sweep(opts: dict[str, Any]) -> None:
    grid = _load_list("--loads", opts["loads"])
    wl = load_workload(opts)
    pols = _policies(opts["policies"])
    scale, basis = _load_basis(opts, wl, pols)
    specs = [RunSpec(wl.at(load=lv * scale), wl.cluster, p, load=lv) for lv in grid for p in pols]
    slo = {"slo_ttft_s": opts["slo_ttft"], "slo_tpot_s": opts["slo_tpot"]}
    results = run_many(specs, jobs=opts["jobs"], label="sweep", **slo)
    slo_p90 = opts["slo_ttft_p90"]
    best = report.max_load_meeting(results, slo_p90)
    of = f"capacity {basis['capacity_tok_s']:.0f} tok/s" if "capacity_tok_s" in basis else None
    of = of or "nominal prefill capacity"
    click.echo(report.sweep_table(results, grid, slo_p90, best, basis=of))
    doc = {
        "trace": wl.base.name,
        "slo_ttft_p90_s": slo_p90,
        "nominal_prefill_tok_s": wl.nominal_tok_s,
        **basis,
        "max_load": best,
        "runs": [{"policy": r["policy"], "load": r["load"], **r["summary"]} for r in results],
    }
    _write_outputs(doc, opts, lambda path: report.plot_sweep(results, slo_p90, path))


@main.command()
@_options("trace", "format", "arrivals", "seed", "cluster", "cost-override", "duration")
@click.option("--rate-scale", type=float, default=None, help="Multiply the trace's arrival rate.")
@click.option(
    "--load",
    type=float,
    default=None,
    help="Offered prompt tokens/s as a fraction of the --cluster's nominal prefill capacity (its own "
    "instance counts).",
)
@click.option("--slo-ttft-p90", type=float, required=True, help="TTFT p90 SLO (s).")
@click.option("--slo-tpot-p90", type=float, required=True, help="TPOT p90 SLO (s).")
@click.option("--policy", default="sbs", show_default=True, help="Scheduling policy simulated.")
@click.option(
    "--max-prefill-groups", type=int, default=16, show_default=True, help="Most prefill groups tried."
)
@click.option("--max-decode-groups", type=int, default=8, show_default=True, help="Most decode groups tried.")
@_options("jobs", "json")
def plan(**opts: Any) -> None:
    """Find the fewest prefill and decode groups of the --cluster's shapes meeting both p90 SLOs.

    Exits 0 with a plan, 3 when even the maximum counts miss (the JSON then has "feasible": false).
    """
    _guard(lambda: _plan(opts))


def _plan(opts: dict[str, Any]) -> None:
    if opts["rate_scale"] is not None and opts["load"] is not None:
        raise SimInputError("--rate-scale and --load are exclusive; give one")
    _check_range("--rate-scale", opts["rate_scale"], 0.0, None)
    _check_range("--load", opts["load"], 0.0, 5.0)
    _check_range("--slo-ttft-p90", opts["slo_ttft_p90"], 0.0, None)
    _check_range("--slo-tpot-p90", opts["slo_tpot_p90"], 0.0, None)
    for flag in ("max_prefill_groups", "max_decode_groups", "jobs"):
        if opts[flag] < 1:
            raise SimInputError(f"--{flag.replace('_', '-')} must be >= 1, got {opts[flag]}")
    try:
        policy = scheduling.policy_settings(opts["policy"])
    except ValueError as exc:
        raise SimInputError(f"--policy: {exc}") from None
    wl = load_workload(opts)
    trace = wl.at(load=opts["load"], rate_scale=opts["rate_scale"])
    slo = sizing.Slo(opts["slo_ttft_p90"], opts["slo_tpot_p90"])
    limits = sizing.PlanLimits(
        max_prefill_groups=opts["max_prefill_groups"], max_decode_groups=opts["max_decode_groups"]
    )
    c = wl.cluster
    click.echo(
        f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s "
        f"({trace.mean_rate_rps:.2f} req/s, {trace.prompt_tokens_per_s / 1e3:.1f}k prompt tok/s)"
    )
    click.echo(
        f"groups of {c.name}: prefill {c.prefill.nodes_per_instance} nodes DP{c.prefill.dp_size} "
        f"(chunk {c.prefill.chunk_tokens}/rank), decode {c.decode.nodes_per_instance} nodes "
        f"DP{c.decode.dp_size}; policy {policy.name}; SLO TTFT p90 <= {slo.ttft_p90_s:g} s, "
        f"TPOT p90 <= {slo.tpot_p90_s:g} s; trying 1-{limits.max_prefill_groups} prefill, "
        f"1-{limits.max_decode_groups} decode groups"
    )
    t0 = time.monotonic()
    result = sizing.plan_groups(
        trace, c, slo, policy, limits, jobs=opts["jobs"], on_candidate=_candidate_printer(slo)
    )
    elapsed = time.monotonic() - t0
    doc = result.to_dict()
    doc["elapsed_s"] = round(elapsed, 1)
    _write_outputs(doc, {**opts, "plot_out": None}, lambda path: None)
    tried = f"{len(result.evaluated)} candidates, {elapsed:.0f} s"
    if not result.feasible:
        click.echo(f"plan: {result.reason} ({tried})")
        sys.exit(3)
    click.echo(f"why: {result.reason}")
    click.echo(
        f"plan: {result.prefill_groups} prefill + {result.decode_groups} decode groups of {c.name} "
        f"({result.gpus} GPUs): TTFT p90 {result.ttft_p90_s:.3f} s, TPOT p90 {result.tpot_p90_s:.4f} s, "
        f"SLO attainment {result.slo_attainment:.1%} of {len(trace)} requests ({tried})"
    )


def _candidate_printer(slo: sizing.Slo) -> Callable[[sizing.Candidate], None]:
    count = [0]

    def show(cand: sizing.Candidate) -> None:
        count[0] += 1
        mark = {True: "ok", False: "MISS"}
        dropped = f", {cand.dropped} dropped" if cand.dropped else ""
        click.echo(
            f"plan [{count[0]}] {cand.phase} search: {cand.prefill_groups}P + {cand.decode_groups}D "
            f"({cand.gpus} GPUs): TTFT p90 {cand.ttft_p90_s:.3f} s {mark[cand.meets_ttft]}, "
            f"TPOT p90 {cand.tpot_p90_s:.4f} s {mark[cand.meets_tpot]}, "
            f"attainment {cand.slo_attainment:.1%}{dropped} ({cand.sim_cpu_s:.1f} s cpu)",
            err=True,
        )

    return show


@main.command("capacity")
@_options("trace", "format", "arrivals", "seed", "long-prompts", "cluster", "cost-override", "policies")
@_options("duration", "jobs")
@click.option("--precision", type=float, default=0.03, show_default=True, help="Bisection's relative step.")
@click.option("--knee/--no-knee", default=True, show_default=True, help="Also find each TTFT p90 knee.")
@click.option(
    "--at",
    "at_loads",
    metavar="LOADS",
    help="No search: simulate every policy at these loads (fractions of nominal, comma-separated) and "
    "print each one's backlog growth and served rate, so policies are compared at the same loads.",
)
@_options("json")
def capacity_command(**opts: Any) -> None:
    """Each policy's capacity (highest prompt tok/s with a bounded queue) and TTFT knee; --duration
    defaults to 120 s per run."""
    _guard(lambda: _capacity(opts))


def _capacity(opts: dict[str, Any]) -> None:
    _check_range("--precision", opts["precision"], 0.0, 0.5)
    opts["duration"] = opts["duration"] or CAPACITY_DEFAULT_S
    wl, pols = load_workload(opts), _policies(opts["policies"])
    click.echo(f"trace {wl.base.name}: {opts['duration']:g} s per run; nominal {wl.nominal_tok_s:.0f} tok/s")
    t0 = time.monotonic()
    if opts.get("at_loads"):
        _capacity_at(opts, wl, pols, t0)
        return
    settings = capacity.CapacitySettings(precision=opts["precision"], knee=opts["knee"])

    def show(r: capacity.PolicyCapacity) -> None:
        click.echo(capacity_report.result_line(r, time.monotonic() - t0))

    results = capacity.measure(*_measuring(wl, pols), settings=settings, **_progress(opts), on_done=show)
    elapsed = time.monotonic() - t0
    click.echo(capacity_report.table(results) + f"\n({elapsed:.0f} s; cluster {wl.cluster.name})")
    doc = capacity_report.document(results, wl.base.name, wl.cluster, wl.nominal_tok_s, opts, elapsed)
    _write_outputs(doc, {**opts, "plot_out": None}, lambda path: None)


def _capacity_at(opts: dict[str, Any], wl: Workload, pols: list, t0: float) -> None:
    loads = _load_list("--at", opts["at_loads"])
    grid = capacity.at_loads(*_measuring(wl, pols)[:3], loads, **_progress(opts))
    elapsed = time.monotonic() - t0
    click.echo(capacity_report.at_table(grid) + f"\n({elapsed:.0f} s; cluster {wl.cluster.name})")
    doc = {
        "trace": wl.base.name,
        "duration_s": opts["duration"],
        "nominal_prefill_tok_s": wl.nominal_tok_s,
        "at": {name: [p.to_dict() for p in probes] for name, probes in grid.items()},
    }
    _write_outputs(doc, {**opts, "plot_out": None}, lambda path: None)


def _measuring(wl: Workload, pols: list) -> tuple[Callable[[float], Trace], ClusterConfig, list, float]:
    """The workload arguments of `capacity.measure`: the trace at a multiplier x of nominal, the
    cluster, the policies, nominal."""
    return (lambda x: wl.at(load=x)), wl.cluster, pols, wl.nominal_tok_s


def _progress(opts: dict[str, Any]) -> dict[str, Any]:
    def show(name: str, probe: capacity.Probe) -> None:
        click.echo(capacity_report.probe_line(name, probe), err=True)

    return {"jobs": opts["jobs"], "on_probe": show}


def _load_basis(opts: dict[str, Any], wl: Workload, pols: list) -> tuple[float, dict[str, Any]]:
    """The load multiplier of nominal per 1.0 of --load/--loads, and the JSON fields recording it."""
    given = opts["capacity_tok_s"]
    basis = load_basis.capacity_basis(opts["load_basis"], given, *_measuring(wl, pols), **_progress(opts))
    if "capacity_tok_s" not in basis:
        return 1.0, basis
    click.echo(capacity_report.basis_line(basis, wl.nominal_tok_s))
    return basis["capacity_tok_s"] / wl.nominal_tok_s, basis


def load_workload(opts: dict[str, Any]) -> Workload:
    """The workload of the parsed options (`--trace`, `--format`, `--duration`, `--long-prompts`,
    `--arrivals`, `--cluster`, `--seed`), as every subcommand builds it."""
    if opts["duration"] is not None and opts["duration"] <= 0:
        raise SimInputError(f"--duration must be > 0, got {opts['duration']}")
    cluster = cost_override.applied(load_cluster(opts["cluster"]), opts.get("cost_override"))
    if opts.get("seed"):  # the cluster's draws too: seed 0 is the cluster's own seed
        cluster = cluster.model_copy(update={"seed": cluster.seed + opts["seed"]})
    if opts["fmt"] == "servegen":
        path = Path(opts["trace_path"])
        if not path.is_dir():
            raise SimInputError(f"--trace {path}: --format servegen expects ServeGen's data folder")
        span = opts["duration"] or SERVEGEN_DEFAULT_S
        base = servegen.generate(path, span, seed=opts["seed"])
    elif opts["fmt"] == "lengths":
        table = lengths.load(opts["trace_path"])
        span = opts["duration"] or SERVEGEN_DEFAULT_S
        base = synthetic(rate_rps=LENGTHS_BASE_RPS, duration_s=span, seed=opts["seed"], lengths=table)
    else:
        base = load_trace(opts["trace_path"], opts["fmt"])
    long = parse_long_prompts(opts.get("long_prompts"))
    if long is not None and long.percent is not None:  # part of the workload: --load counts them
        base = long.add_to(base, seed=opts.get("seed", 0))
    cost = cluster.cost_model()
    return Workload(base, cluster, cost, nominal_prefill_tok_s(cluster, cost, base), opts)


def _instant(trace: Trace) -> str:
    return f"trace {trace.name!r} spans no time (its {len(trace)} request(s) arrive at one instant)"


def _arrivals(trace: Trace, spec: str, seed: int) -> Trace:
    """Replace the trace's arrival process, keeping its mean rate, span and length distribution."""
    kind, _, arg = spec.partition(":")
    if kind == "trace" and not arg:
        return trace
    rate, span = trace.mean_rate_rps, trace.duration_s
    if rate <= 0:
        raise SimInputError(f"--arrivals {spec}: the trace spans no time, so it has no rate to keep")
    try:
        value = float(arg) if arg else None
    except ValueError:
        raise SimInputError(f"--arrivals {spec}: expected a number after ':', got {arg!r}") from None
    if kind == "poisson" and value is None:
        return synthetic(rate_rps=rate, duration_s=span, seed=seed, lengths=trace)
    if kind == "gamma" and value is not None and value > 0:
        return synthetic(rate_rps=rate, duration_s=span, seed=seed, cv=value, lengths=trace)
    if kind == "bursty" and value is not None and value > 1:
        # 10 s of every 60 s at `value`× the base rate, the mean rate kept.
        base_rate = rate * 60.0 / (50.0 + 10.0 * value)
        return bursty(
            base_rate_rps=base_rate,
            burst_rate_rps=base_rate * value,
            period_s=60.0,
            burst_s=10.0,
            duration_s=span,
            seed=seed,
            lengths=trace,
        )
    raise SimInputError(f"--arrivals {spec}: expected trace, poisson, gamma:CV (CV > 0) or bursty:F (F > 1)")


def _policies(names: str) -> list[scheduling.PolicySettings]:
    out = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        try:
            out.append(scheduling.policy_settings(name))
        except ValueError as exc:
            raise SimInputError(f"--policies: {exc}") from None
    if not out:
        raise SimInputError("--policies: give at least one policy")
    return out


def _load_list(flag: str, text: str) -> list[float]:
    """Comma-separated loads (fractions), ascending, each in (0, 5]."""
    try:
        grid = sorted({float(x) for x in text.split(",")})
    except ValueError:
        raise SimInputError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    for lv in grid:
        _check_range(flag, lv, 0.0, 5.0)
    return grid


def _check_range(flag: str, value: float | None, low: float, high: float | None) -> None:
    if value is None:
        return
    if value <= low or (high is not None and value > high):
        bound = f"({low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise SimInputError(f"{flag} must be {bound}, got {value:g}")


def _write_outputs(doc: dict, opts: dict[str, Any], plot: Callable[[Path], None]) -> None:
    if opts["json_out"]:
        path = Path(opts["json_out"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        click.echo(f"wrote {path}")
    if opts["plot_out"]:
        path = Path(opts["plot_out"])
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(path)
        click.echo(f"wrote {path}")


def _guard(fn: Callable[[], None]) -> None:
    try:
        fn()
    except SimInputError as exc:
        click.echo(f"sbs-sim: error: {exc}", err=True)
        sys.exit(2)
