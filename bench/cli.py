"""`sbs-bench`: live benchmarks against emulated SGLang engines.

    sbs-bench h2h        --trace FILE [--format azure|mooncake] [--duration S] [--load X]
                         [--long-prompts COUNT:TOKENS]
                         [--systems sbs,least_load,sglang-router,smg,...] [--time-factor F] [--json OUT]
    sbs-bench overhead   [--requests N] [--concurrency C] [--systems direct,sbs,...] [--json OUT]
    sbs-bench crosscheck --trace FILE [--duration S] [--load X] [--seeds N] [--time-factor F] [--json OUT]
    sbs-bench operator-scale [--nodes 1000] [--deployments 20] [--idle-seconds 60] [--json OUT]
    sbs-bench membership [--prefill 4x8 --decode 2x16] [--load 0.6] [--warmup S --steady S --out S ...]
    sbs-bench scale-table [--instances 4,16,64] [--replicas 1,2,4] [--load 0.7] [--duration S] [--json OUT]

Bad input prints one line naming the option and exits with status 2. docs/bench.md says what each
system is, what is measured, and how the time factor is converted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from sbs.bench import cli_options, membership_cli, report, systems
from sbs.bench.cli_options import bench_cluster, positive, run_options, scheduler_overrides, write_json
from sbs.bench.procs import BenchError

DEFAULT_SYSTEMS = "sbs,eft,sglang-router,smg,sglang-router+delayer,smg+delayer"


def _trace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return cli_options.stacked([
        click.option(
            "--trace", "trace_path", required=True, help="Trace file (Azure CSV or Mooncake JSONL)."
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["azure", "mooncake"]),
            default=None,
            help="Default: from the file.",
        ),
        click.option(
            "--duration",
            type=float,
            default=30.0,
            show_default=True,
            help="Seconds of arrivals (engine time, after --load): the trace is cut, or repeated if shorter.",
        ),
        click.option(
            "--load",
            type=float,
            default=None,
            help="Offered prompt tokens/s as a fraction of the cluster's nominal prefill capacity "
            "(default: the trace's own rate).",
        ),
        click.option(
            "--long-prompts",
            default=None,
            metavar="COUNT:TOKENS",
            help="Add long prompts to the trace before --load, as `sbs-sim --long-prompts` does "
            "(e.g. 33%:16000-64000: a third more requests, 16-64k tokens each).",
        ),
        cli_options.run_flags,
    ])(f)  # fmt: skip


_cluster_options = cli_options.cluster_options()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Live benchmarks: SBS and SGLang's routers in front of emulated SGLang engines."""


@cli.command()
@_trace_options
@click.option("--systems", "systems_text", default=DEFAULT_SYSTEMS, show_default=True)
@click.option(
    "--overhead",
    "overhead_json",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON of `sbs-bench overhead`: its overhead_p50_ms/overhead_p99_ms join the matching systems.",
)
@_cluster_options
def h2h(**opts: Any) -> None:
    """Replay one trace slice through each system and print a side-by-side table."""
    from sbs.bench import h2h as mod

    specs = systems.parse_systems(opts["systems_text"])
    run_opts = run_options(opts)
    overhead = _read_overhead(opts["overhead_json"])
    trace, nominal = _slice(opts, run_opts, announce=False)
    offered = trace.prompt_tokens_per_s
    click.echo(
        f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s "
        f"({trace.mean_rate_rps:.1f} req/s, {offered / 1e3:.1f}k prompt tok/s = {offered / nominal:.2f} "
        f"of nominal {nominal / 1e3:.0f}k tok/s)"
    )
    click.echo(
        f"cluster: {run_opts.cluster.describe()}; time factor {run_opts.time_factor:g}, "
        f"stream interval {run_opts.stream_interval}"
    )

    async def go() -> list[Any]:
        out = []
        for spec in specs:
            try:
                out.append(await mod.run_system(spec, trace, run_opts))
            except BenchError as exc:  # one system failing does not lose the others' results
                click.echo(f"sbs-bench: {spec.name} failed: {exc}", err=True)
                out.append(mod.failed_run(spec, trace, str(exc)))
        return out

    runs = asyncio.run(go())
    summaries = {r.spec.name: r.summary for r in runs}
    for name, summary in summaries.items():
        for key in ("overhead_p50_ms", "overhead_p99_ms"):
            if key in overhead.get(name, {}):
                summary[key] = overhead[name][key]
    click.echo(report.table(summaries, units="(engine time: s; tok/s and req/s per engine second)"))
    doc = {
        "trace": trace.name,
        "requests": len(trace),
        "load_of_nominal": offered / nominal,
        "nominal_prefill_tok_s": nominal,
        "cluster": {"describe": run_opts.cluster.describe(), **run_opts.cluster.sim_cluster().model_dump()},
        "time_factor": run_opts.time_factor,
        "stream_interval": run_opts.stream_interval,
        "slo": {"ttft_s": run_opts.slo_ttft_s, "tpot_s": run_opts.slo_tpot_s},
        "systems": summaries,
        "best_other": report.best_other(summaries),
        "runs": {r.spec.name: mod.run_details(r, run_opts.time_factor) for r in runs},
    }
    write_json(doc, opts["json_out"])


@cli.command()
@click.option("--requests", type=int, default=500, show_default=True, help="Sequential requests per system.")
@click.option(
    "--concurrency",
    type=int,
    default=64,
    show_default=True,
    help="Clients of the closed-loop throughput phase.",
)
@click.option(
    "--duration",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds of the closed-loop phase per system.",
)
@click.option(
    "--systems", "systems_text", default="direct,sbs,least_load,sglang-router,smg-nodp", show_default=True
)
@click.option(
    "--scheduler-config",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML/JSON merged into our scheduler's settings (A/B runs, e.g. event_loop: asyncio).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@_cluster_options
def overhead(**opts: Any) -> None:
    """Added latency and sustained requests/s with engines that answer at once (time factor 0)."""
    from sbs.bench import overhead as mod

    specs = systems.parse_systems(opts["systems_text"], allow_direct=True)
    if "direct" not in [s.name for s in specs]:
        specs.insert(0, systems.SystemSpec("direct", "direct", ""))
    for option in ("requests", "concurrency"):
        if opts[option] < 1:
            raise BenchError(f"--{option} must be >= 1, got {opts[option]}")
    positive("--duration", opts["duration"])
    # Engines follow the bootstrap room (SGLang's PD default): unpinned routers then need no room
    # lookup, which would hit the emulator's room-registry race (docs/bench.md); pinned systems
    # align the room with the rank. SMG --dp-aware does not, so `smg` errors here; use `smg-nodp`.
    cluster = dataclasses.replace(bench_cluster(opts), engine_balance="auto")
    click.echo(f"cluster: {cluster.describe()}; engines at time factor 0 (instant), balance auto")
    doc = asyncio.run(
        mod.run_overhead(
            specs,
            cluster=cluster,
            requests=opts["requests"],
            concurrency=opts["concurrency"],
            duration_s=opts["duration"],
            log_dir=Path(opts["log_dir"]).resolve() / "overhead",
            scheduler_overrides=scheduler_overrides(opts.get("scheduler_config")),
        )
    )
    click.echo(mod.table(doc))
    write_json(doc, opts["json_out"])


@cli.command()
@_trace_options
@click.option(
    "--policies",
    default="sbs,least_load,sglang",
    show_default=True,
    help="Our scheduler's policies to cross-check, comma-separated.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Simulate the slice with this many seeds of the cluster's jitter and handshakes, and report "
    "their mean and range beside the one emulated run.",
)
@_cluster_options
def crosscheck(**opts: Any) -> None:
    """TTFT mean and p90 of the emulated cluster against the simulator: same policy, slice and cluster."""
    from sbs.bench import crosscheck as mod

    specs = systems.parse_systems(opts["policies"], option="--policies")
    if bad := [s.name for s in specs if s.kind != "sbs-scheduler"]:
        raise BenchError(f"--policies: only our scheduler's policies have a simulated twin, got {bad[0]!r}")
    run_opts = run_options(opts)
    trace, nominal = _slice(opts, run_opts)

    async def go() -> list[dict[str, Any]]:
        return [await mod.crosscheck(trace, run_opts, s.policy, seeds=opts["seeds"]) for s in specs]

    docs = asyncio.run(go())
    for d in docs:
        click.echo(mod.describe(d))
    write_json(
        {
            "trace": trace.name,
            "requests": len(trace),
            "load_of_nominal": trace.prompt_tokens_per_s / nominal,
            "time_factor": run_opts.time_factor,
            "checks": docs,
        },
        opts["json_out"],
    )


@cli.command()
@_trace_options
@click.option("--replicas", type=int, default=2, show_default=True, help="Scheduler processes (>= 2).")
@click.option("--kill-at", type=float, default=0.5, show_default=True, help="Fraction of the slice.")
@click.option("--policy", default="sbs", show_default=True, help="Our scheduler's policy.")
@_cluster_options
def failover(**opts: Any) -> None:
    """Several scheduler replicas; one gets SIGKILL mid-run: its clients, the survivors, the handover."""
    from sbs.bench import failover as mod

    if opts["replicas"] < 2 or opts["replicas"] > 16:
        raise BenchError(f"--replicas must be in 2..16, got {opts['replicas']}")
    if not 0 < opts["kill_at"] < 1:
        raise BenchError(f"--kill-at must be in (0, 1), got {opts['kill_at']:g}")
    systems.parse_systems(opts["policy"], option="--policy")
    run_opts = run_options(opts)
    trace, _ = _slice(opts, run_opts)
    run = mod.run_failover(
        trace, run_opts, replicas=opts["replicas"], kill_at=opts["kill_at"], policy=opts["policy"]
    )
    doc = asyncio.run(run)
    for line in mod.report_lines(doc):
        click.echo(line)
    write_json(doc, opts["json_out"])


@cli.command("operator-scale")
@click.option("--nodes", type=int, default=1000, show_default=True, help="Fake 8×H800 kwok nodes.")
@click.option("--deployments", type=int, default=20, show_default=True, help="SBSDeployments applied.")
@click.option("--prefill-groups", default="4x4", show_default=True, help="Prefill groups × nodes each.")
@click.option("--decode-groups", default="2x9", show_default=True, help="Decode groups × nodes each.")
@click.option("--workers", type=int, default=8, show_default=True, help="The operator's --workers.")
@click.option("--resync-seconds", type=float, default=30.0, show_default=True, help="The operator's resync.")
@click.option("--idle-seconds", type=float, default=60.0, show_default=True, help="Watched after all Ready.")
@click.option("--ready-timeout", type=float, default=1200.0, show_default=True, help="Seconds to all Ready.")
@click.option("--log-dir", type=click.Path(file_okay=False), default="out/operator-scale", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def operator_scale(**opts: Any) -> None:
    """The operator on the e2e control plane: N kwok nodes, D sample-shaped deployments to Ready."""
    import signal

    from sbs.bench import operator_scale as mod

    # SIGTERM stops the operator and the control plane too (the `finally` of `run_scale`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = mod.ScaleRun(
        nodes=opts["nodes"],
        deployments=opts["deployments"],
        prefill=mod.parse_groups(opts["prefill_groups"], "--prefill-groups"),
        decode=mod.parse_groups(opts["decode_groups"], "--decode-groups"),
        workers=opts["workers"],
        resync_s=opts["resync_seconds"],
        idle_s=opts["idle_seconds"],
        ready_timeout_s=opts["ready_timeout"],
        log_dir=Path(opts["log_dir"]),
    )
    doc = mod.run_scale(run, lambda line: click.echo(f"operator-scale: {line}", err=True))
    for line in mod.summary_lines(doc):
        click.echo(line)
    write_json(doc, opts["json_out"])


@cli.command()
@click.argument("json_file", type=click.Path(exists=True, dir_okay=False))
def table(json_file: str) -> None:
    """Print the table of a saved `h2h` or `overhead` JSON again."""
    try:
        doc = json.loads(Path(json_file).read_text())
        summaries = doc["systems"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{json_file}: not a `sbs-bench h2h` or `overhead` JSON ({exc})") from None
    if "concurrency" in doc:
        from sbs.bench import overhead as mod

        click.echo(mod.table(doc))
    else:
        click.echo(report.table(summaries, units="(engine time: s; tok/s and req/s per engine second)"))


@cli.command("scale-table")
@click.option("--trace", "trace_path", default=None, help="Azure CSV (default: the conversation trace).")
@click.option("--instances", "instances_text", default="4,16,64", show_default=True)
@click.option("--replicas", "replicas_text", default="1,2,4", show_default=True)
@click.option("--replica-instances", type=int, default=16, show_default=True)
@click.option("--load", type=float, default=0.7, show_default=True, help="Fraction of nominal capacity.")
@click.option("--duration", type=float, default=120.0, show_default=True, help="Seconds of arrivals.")
@click.option("--decode-per-prefill", type=float, default=0.25, show_default=True)
@click.option(
    "--spread", type=click.Choice(["round_robin", "random"]), default="round_robin", show_default=True
)
@click.option("--jobs", type=int, default=1, show_default=True, help="Simulations in parallel.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def scale_table(**opts: Any) -> None:
    """Simulated SBS TTFT gain at 4/16/64 prefill instances and with 1/2/4 scheduler replicas."""
    from sbs.bench import scale_table as mod

    instances = _counts(opts["instances_text"], "--instances")
    replicas = _counts(opts["replicas_text"], "--replicas")
    if any(r > opts["replica_instances"] for r in replicas):
        raise BenchError(f"--replicas: at most --replica-instances ({opts['replica_instances']}) replicas")
    positive("--load", opts["load"])
    positive("--duration", opts["duration"])
    positive("--decode-per-prefill", opts["decode_per_prefill"])
    doc = mod.run_tables(
        trace_path=opts["trace_path"] or mod.TRACE,
        instances=instances,
        replicas=replicas,
        replica_instances=opts["replica_instances"],
        load=opts["load"],
        duration_s=opts["duration"],
        decode_per_prefill=opts["decode_per_prefill"],
        spread=opts["spread"],
        jobs=max(1, opts["jobs"]),
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(mod.format_tables(doc))
    write_json(doc, opts["json_out"])


def _counts(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BenchError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


def _read_overhead(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
        return {k: dict(v) for k, v in doc["systems"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchError(f"--overhead {path}: not a `sbs-bench overhead` JSON ({exc})") from None


def _slice(opts: dict[str, Any], run_opts: Any, *, announce: bool = True) -> tuple[Any, float]:
    """The trace slice of `--trace/--load/--duration` and the cluster's nominal capacity (announced
    in one line unless the caller prints its own)."""
    from sbs.bench import h2h

    trace, nominal = h2h.shape_trace(
        opts["trace_path"],
        opts["fmt"],
        load=opts["load"],
        duration_s=opts["duration"],
        cluster=run_opts.cluster,
        long_prompts=opts.get("long_prompts"),
    )
    if announce:
        click.echo(
            f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s "
            f"(= {trace.prompt_tokens_per_s / nominal:.2f} of nominal); "
            f"cluster {run_opts.cluster.describe()}; time factor {run_opts.time_factor:g}"
        )
    return trace, nominal


def _die(message: str) -> NoReturn:
    click.echo(f"sbs-bench: error: {message}", err=True)
    sys.exit(2)


cli.add_command(membership_cli.command())


def main(argv: list[str] | None = None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="sbs-bench", standalone_mode=False)
    except click.UsageError as exc:
        _die(exc.format_message().replace("\n", " "))
    except click.exceptions.Abort:
        sys.exit(130)
    except BenchError as exc:
        _die(str(exc))
    sys.exit(rc if isinstance(rc, int) else 0)
