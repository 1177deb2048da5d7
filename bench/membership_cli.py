"""`sbs-bench membership`: its command line (the run itself is `sbs.bench.membership`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sbs.bench import cli_options, systems
from sbs.bench import membership as mod

TRACE = str(
    Path(__file__).resolve().parents[1].parent
    / "shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
)
"""The Azure conversation trace in the shared data folder beside the repository."""


def command() -> click.Command:
    """The `membership` subcommand."""
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
        cli_options.run_flags,
        cli_options.cluster_options(prefill="4x8", decode="2x16"),
    ]

    def membership(**opts: Any) -> None:
        """A prefill group drained and re-added under steady load: TTFT p90 after each change vs steady."""
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
        run_opts = cli_options.run_options({**opts, "duration": None})
        cli_options.positive("--load", opts["load"])
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
        cli_options.write_json(doc, opts["json_out"])

    return click.command("membership")(cli_options.stacked(options)(membership))
