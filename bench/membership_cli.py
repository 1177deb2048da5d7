"""`sbs-bench membership`: its command line (the run itself is `sbs.bench.membership`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sbs.bench import membership as mod
from sbs.bench import systems
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK

TRACE = str(
    Path(__file__).resolve().parents[1].parent
    / "shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
)
"""The Azure conversation trace in the shared data folder beside the repository."""


def command(time_factor: float, stream_interval: int) -> click.Command:
    """The `membership` subcommand, with sbs-bench's default time factor and stream interval."""
    options: list[Callable[[Any], Any]] = [
        click.option("--trace", "trace_path", default=TRACE, show_default=True, help="Trace file."),
        click.option("--format", "fmt", type=click.Choice(["azure", "mooncake"]), default=None),
        click.option(
            "--load",
            type=float,
            default=0.6,
            show_default=True,
            help="Offered prompt tokens/s as a fraction of the nominal capacity of the cluster WITHOUT the "
            "drained group (so the drained cluster is not overloaded).",
        ),
        click.option(
            "--arrivals",
            type=click.Choice(["poisson", "trace"]),
            default="poisson",
            show_default=True,
            help="poisson: a steady load (Poisson arrivals, the trace's (prompt, output) pairs drawn); "
            "trace: the trace's own slice re-timed (its rate drifts along the run).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Poisson arrivals."),
        click.option("--policy", default="sbs", show_default=True, help="Our scheduler's policy."),
        click.option(
            "--group", "group_index", type=int, default=-1, show_default=True, help="Prefill index drained."
        ),
        click.option(
            "--warmup", type=float, default=15.0, show_default=True, help="Engine s before steady state."
        ),
        click.option(
            "--steady", type=float, default=30.0, show_default=True, help="Engine s of steady state."
        ),
        click.option(
            "--drain", type=float, default=10.0, show_default=True, help="Engine s draining before removal."
        ),
        click.option(
            "--out",
            type=float,
            default=30.0,
            show_default=True,
            help="Engine s from the drain to the re-add.",
        ),
        click.option(
            "--after",
            type=float,
            default=30.0,
            show_default=True,
            help="Engine s of arrivals after the re-add.",
        ),
        click.option(
            "--window",
            type=float,
            default=30.0,
            show_default=True,
            help="Engine s measured after each change.",
        ),
        click.option(
            "--time-factor", type=float, default=time_factor, show_default=True, help="Wall s per engine s."
        ),
        click.option(
            "--stream-interval",
            type=int,
            default=stream_interval,
            show_default=True,
            help="Decode streams every N.",
        ),
        click.option("--slo-ttft", type=float, default=2.0, show_default=True),
        click.option("--slo-tpot", type=float, default=0.1, show_default=True),
        click.option(
            "--drain-timeout",
            type=float,
            default=300.0,
            show_default=True,
            help="Wall s after the last send.",
        ),
        click.option(
            "--scheduler-config",
            type=click.Path(dir_okay=False),
            default=None,
            help="Merged into its settings.",
        ),
        click.option(
            "--prefill", "prefill_shape", default="4x8", show_default=True, help="Prefill instances × DP."
        ),
        click.option(
            "--decode", "decode_shape", default="2x16", show_default=True, help="Decode instances × DP."
        ),
        click.option("--chunk-tokens", type=int, default=DEFAULT_CHUNK_PER_RANK, show_default=True),
        click.option(
            "--log-dir", type=click.Path(file_okay=False), default="out/bench-live", show_default=True
        ),
        click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None),
    ]

    def membership(**opts: Any) -> None:
        """A prefill group drained and re-added under steady load: TTFT p90 after each change vs steady."""
        from sbs.bench import cli as bench  # at call time: `cli` imports this module

        systems.parse_systems(opts["policy"], option="--policy")
        timeline = mod.Timeline(
            warmup_s=opts["warmup"],
            steady_s=opts["steady"],
            drain_s=opts["drain"],
            out_s=opts["out"],
            after_s=opts["after"],
            window_s=opts["window"],
        )
        timeline.check()
        run_opts = bench._run_options({**opts, "duration": None})
        bench._positive("--load", opts["load"])
        trace, nominal, full = mod.make_trace(
            opts["trace_path"],
            opts["fmt"],
            load=opts["load"],
            timeline=timeline,
            cluster=run_opts.cluster,
            arrivals=opts["arrivals"],
            seed=opts["seed"],
        )
        offered = trace.prompt_tokens_per_s
        click.echo(
            f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s, "
            f"{offered / 1e3:.1f}k prompt tok/s = {offered / nominal:.2f} of the drained cluster's nominal "
            f"{nominal / 1e3:.0f}k ({offered / full:.2f} of the full cluster's {full / 1e3:.0f}k)"
        )
        click.echo(f"cluster: {run_opts.cluster.describe()}; time factor {run_opts.time_factor:g}")
        run = mod.run_membership(
            trace, run_opts, timeline, policy=opts["policy"], group_index=opts["group_index"]
        )
        doc = asyncio.run(run)
        doc.update(
            trace=trace.name,
            arrivals=opts["arrivals"],
            nominal_drained_tok_s=nominal,
            nominal_full_tok_s=full,
            load_of_drained_nominal=offered / nominal,
            load_of_full_nominal=offered / full,
            time_factor=run_opts.time_factor,
            cluster=run_opts.cluster.describe(),
        )
        for line in mod.report_lines(doc):
            click.echo(line)
        bench._write_json(doc, opts["json_out"])

    for option in reversed(options):
        membership = option(membership)
    return click.command("membership")(membership)
