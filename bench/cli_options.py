"""Options shared by the `sbs-bench` subcommands that replay a trace on emulated engines (`h2h`,
`crosscheck`, `failover`, `membership`, ...), and their checks: each bad value is a `BenchError`
naming the option."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.procs import BenchError
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK

if TYPE_CHECKING:
    from sbs.bench.h2h import RunOptions

DEFAULT_TIME_FACTOR = 2.0
"""Half speed: at load 0.85 the default cluster serves ~100 requests and ~21k output tokens per
engine second, which one Python decode emulator, the client and a Python scheduler cannot all stream
in real time on 2 cores (at 1.0 the decode emulator fell seconds behind, docs/bench.md); at 2.0
they keep up (lag_s well under 1 % of the run). Routers' and schedulers' own timers stay wall time."""
DEFAULT_STREAM_INTERVAL = 8

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def stacked(options: list[Decorator]) -> Decorator:
    """One decorator applying `options` in order (the first is the first in `--help`)."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def cluster_options(prefill: str = "2x8", decode: str = "1x16") -> Decorator:
    """--prefill, --decode, --chunk-tokens and --log-dir, with these default shapes."""
    return stacked([
        click.option(
            "--prefill",
            "prefill_shape",
            default=prefill,
            show_default=True,
            help="Prefill instances × DP ranks each.",
        ),
        click.option(
            "--decode", "decode_shape", default=decode, show_default=True, help="Decode instances × DP ranks."
        ),
        click.option(
            "--chunk-tokens",
            type=int,
            default=DEFAULT_CHUNK_PER_RANK,
            show_default=True,
            help="Prefill tokens per rank and step.",
        ),
        click.option(
            "--log-dir",
            type=click.Path(file_okay=False),
            default="out/bench-live",
            show_default=True,
            help="Logs and configs of every process started.",
        ),
    ])  # fmt: skip


run_flags = stacked([
    click.option(
        "--time-factor",
        type=float,
        default=DEFAULT_TIME_FACTOR,
        show_default=True,
        help="Wall seconds per engine second (engines and arrivals alike).",
    ),
    click.option(
        "--stream-interval",
        type=int,
        default=DEFAULT_STREAM_INTERVAL,
        show_default=True,
        help="Decode engines stream every N tokens (SGLang --stream-interval; the first token at once).",
    ),
    click.option("--slo-ttft", type=float, default=2.0, show_default=True, help="TTFT SLO (s) for goodput."),
    click.option("--slo-tpot", type=float, default=0.1, show_default=True, help="TPOT SLO (s) for goodput."),
    click.option(
        "--drain-timeout",
        type=float,
        default=300.0,
        show_default=True,
        help="Wall seconds to wait for open requests after the last send.",
    ),
    click.option(
        "--scheduler-config",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML/JSON merged into our scheduler's settings (A/B and diagnostic runs; "
        "default: the service's defaults, time-scaled).",
    ),
    click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None),
])  # fmt: skip
"""--time-factor, --stream-interval, --slo-ttft, --slo-tpot, --drain-timeout, --scheduler-config, --json."""


def shape(text: str, option: str) -> tuple[int, int]:
    """INSTANCESxDP of `option`."""
    a, sep, b = text.lower().partition("x")
    try:
        n, dp = int(a), int(b)
    except ValueError:
        n = dp = 0
    if not sep or n < 1 or dp < 1:
        raise BenchError(f"{option}: expected INSTANCESxDP with positive integers (e.g. 2x8), got {text!r}")
    return n, dp


def bench_cluster(opts: dict[str, Any]) -> BenchCluster:
    """The emulated cluster of `cluster_options`."""
    p_n, p_dp = shape(opts["prefill_shape"], "--prefill")
    d_n, d_dp = shape(opts["decode_shape"], "--decode")
    if opts["chunk_tokens"] < 64:
        raise BenchError(f"--chunk-tokens must be >= 64, got {opts['chunk_tokens']}")
    return BenchCluster(
        prefill_instances=p_n,
        prefill_dp=p_dp,
        decode_instances=d_n,
        decode_dp=d_dp,
        chunk_tokens=opts["chunk_tokens"],
    )


def scheduler_overrides(path: str | None) -> dict[str, Any]:
    """`--scheduler-config`'s settings, merged into our scheduler's (empty without it)."""
    if not path:
        return {}
    from sbs.scheduler.service.config_file import SettingsError, read_config_file

    try:
        return read_config_file(path)
    except SettingsError as exc:
        raise BenchError(f"--scheduler-config: {exc}") from None


def run_options(opts: dict[str, Any]) -> RunOptions:
    """The checked `RunOptions` of `cluster_options`, `run_flags` and --duration/--load if given."""
    from sbs.bench.h2h import RunOptions

    positive("--duration", opts.get("duration"))
    if opts.get("load") is not None and not (0 < opts["load"] <= 5):
        raise BenchError(f"--load must be in (0, 5], got {opts['load']:g}")
    tf = opts["time_factor"]
    if not (math.isfinite(tf) and tf > 0):
        raise BenchError(f"--time-factor must be > 0, got {tf:g}")
    if opts["stream_interval"] < 1:
        raise BenchError(f"--stream-interval must be >= 1, got {opts['stream_interval']}")
    positive("--slo-ttft", opts["slo_ttft"])
    positive("--slo-tpot", opts["slo_tpot"])
    positive("--drain-timeout", opts["drain_timeout"])
    return RunOptions(
        scheduler_overrides=scheduler_overrides(opts.get("scheduler_config")),
        cluster=bench_cluster(opts),
        time_factor=tf,
        stream_interval=opts["stream_interval"],
        slo_ttft_s=opts["slo_ttft"],
        slo_tpot_s=opts["slo_tpot"],
        drain_timeout_s=opts["drain_timeout"],
        log_dir=Path(opts["log_dir"]).resolve(),
    )


def positive(option: str, value: float | None) -> None:
    """`value` (None: not given) must be finite and > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise BenchError(f"{option} must be > 0, got {value:g}")


def write_json(doc: dict[str, Any], path: str | None) -> None:
    """Write `doc` to `path` (nothing without one), saying so."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    click.echo(f"wrote {out}")


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
