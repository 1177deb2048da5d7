"""`sbs-engine`: one emulated SGLang engine, started with the emulator's flags or SGLang's own.

    sbs-engine --mode prefill --dp-size 32 --host 127.0.0.1 --port 30000 \\
               --disaggregation-bootstrap-port 8998 --time-factor 0.05 --model-name deepseek-ai/DeepSeek-V3 \\
               [--chunked-prefill-size N] [--max-running-requests N] [--seed N]

SGLang's launch flags are accepted too, so a node agent can run the operator's real command line:
`--model-path`, `--disaggregation-mode`, `--attn-dp-size` / `--dp-size` (+ `--enable-dp-attention`),
`--tp-size`, `--ep-size`, `--nnodes`, `--node-rank`, `--max-total-tokens`, `--load-balance-method`,
`--disable-radix-cache`, ... map to settings; flags that change nothing the emulator models
(`IGNORED_FLAGS`) are accepted and listed in one log line; any other unknown flag is accepted with a
warning. Bad values print one line naming the flag and exit with status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import sys
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from sbs.sim.emulator.engine_runtime import EngineConfigError
from sbs.sim.emulator.server import start_engine
from sbs.sim.emulator.settings import EngineSettings, describe_error

log = logging.getLogger("sbs.sim.emulator")

_IGNORED = """
    --dist-init-addr --trust-remote-code --enable-metrics --enable-metrics-for-all-schedulers
    --moe-a2a-backend --enable-deepep-moe --deepep-mode --deepep-config --disaggregation-transfer-backend
    --disaggregation-ib-device --disaggregation-decode-allocation-policy --num-reserved-decode-tokens
    --mem-fraction-static --page-size --cuda-graph-bs --cuda-graph-max-bs --cuda-graph-bs-decode
    --cuda-graph-max-bs-decode --cuda-graph-bs-prefill --cuda-graph-max-bs-prefill --disable-cuda-graph
    --cuda-graph-backend-decode --cuda-graph-backend-prefill --enable-two-batch-overlap --moe-dense-tp-size
    --enable-dp-lm-head --ep-num-redundant-experts --init-expert-location --enable-eplb
    --ep-dispatch-algorithm --watchdog-timeout --max-queued-requests --kv-cache-dtype --quantization
    --attention-backend --tokenizer-path --tokenizer-mode --skip-tokenizer-init --log-level-http
    --schedule-policy --schedule-conservativeness
    --enable-cache-report --disable-overlap-schedule --chat-template --reasoning-parser
    --tool-call-parser --speculative-algorithm --speculative-num-steps --speculative-eagle-topk
    --speculative-num-draft-tokens --dtype --random-seed --pp-size --enable-mixed-chunk
    --disable-shared-experts-fusion --enable-torch-compile --torch-compile-max-bs
    --priority-scheduling-preemption-threshold --disable-priority-preemption --retraction-policy
"""
IGNORED_FLAGS = frozenset(_IGNORED.split())
"""SGLang flags accepted and ignored: they configure kernels, memory, transports or features whose
effect is either folded into the cost model or not modelled (docs/emulator.md)."""


def _split_extra(args: list[str]) -> tuple[list[str], list[str]]:
    """Extra command-line words → (known-ignored flags, unknown flags), values dropped."""
    known, unknown = [], []
    for word in args:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            (known if flag in IGNORED_FLAGS else unknown).append(flag)
    return known, unknown


def build_settings(opts: dict[str, Any]) -> EngineSettings:
    """Options (emulator and SGLang spellings) → settings. Raises ValueError (pydantic's
    ValidationError for a bad value, a plain ValueError for flags that contradict each other)."""
    mode, dmode = opts.pop("mode"), opts.pop("disaggregation_mode")
    if mode and dmode and mode != dmode:
        raise ValueError(f"--mode {mode} and --disaggregation-mode {dmode} disagree")
    for key, flag in (("delayer_watermark", "--prefill-delayer-token-usage-low-watermark"),
                      ("delayer_queue_ratio", "--prefill-delayer-queue-min-ratio"),
                      ("delayer_max_ms", "--prefill-delayer-max-delay-ms")):  # fmt: skip
        if opts.pop(key, None) is not None:
            raise ValueError(f"{flag} is not modelled by the emulator (sbs.sim.prefill_delayer)")
    model_name, model_path = opts.pop("model_name"), opts.pop("model_path")
    attn_dp, dp, tp = opts.pop("attn_dp_size"), opts.pop("dp_size"), opts.pop("tp_size")
    opts.pop("enable_dp_attention")
    if attn_dp is not None:
        ranks, reported = attn_dp, 1 if dp is None else dp  # 0.5.23: --dp-size counts replicas
        if dp not in (None, 1):
            raise ValueError(f"--dp-size {dp} replicas with --attn-dp-size: run one emulator per replica")
    else:
        ranks, reported = 1 if dp is None else dp, None
    if tp is not None and ranks > 0 and tp % ranks:
        raise ValueError(f"--tp-size {tp} must be a multiple of the {ranks} DP-attention ranks")
    fields = {k: v for k, v in opts.items() if v is not None}
    if mode or dmode:
        fields["mode"] = mode or dmode
    if model_name or model_path:
        fields["model_name"] = model_name or model_path
    return EngineSettings(dp_size=ranks, server_info_dp_size=reported, **fields)


async def _serve(settings: EngineSettings, command: str) -> None:
    engine = await start_engine(settings, launch_command=command)
    s = settings
    role = (
        f"{s.mode} engine (DP{s.dp_size}, EP{s.resolved_ep_size}, {s.hardware.upper()}, "
        f"time factor {s.time_factor:g})"
        if s.node_rank == 0
        else f"worker node {s.node_rank} of {s.nnodes}"
    )
    boot = f", bootstrap port {engine.bootstrap_port}" if engine.bootstrap_port else ""
    log.info("sbs-engine: %s serving %s%s", role, engine.url, boot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await engine.close()


def redacted_command(argv: list[str]) -> str:
    """The command line for `/server_info`'s `launch_command`, the API key's value hidden."""
    out, hide = [], False
    for word in argv:
        if hide:
            out.append("<redacted>")
        elif word.startswith("--api-key="):
            out.append("--api-key=<redacted>")
        else:
            out.append(word)
        hide = word == "--api-key"
    return shlex.join(out)


_CTX = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


@click.command(context_settings=_CTX)
@click.option("--mode", type=click.Choice(["prefill", "decode", "null"]), help="PD role (null = both).")
@click.option(
    "--disaggregation-mode",
    type=click.Choice(["prefill", "decode", "null"]),
    help="SGLang spelling of --mode.",
)
@click.option("--host", default=None, help="Bind address [127.0.0.1].")
@click.option("--port", type=int, default=None, help="HTTP port [30000]; 0 = any free port.")
@click.option(
    "--disaggregation-bootstrap-port", "bootstrap_port", type=int, help="Prefill bootstrap port [8998]."
)
@click.option("--dp-size", type=int, help="DP-attention ranks (classic spelling).")
@click.option("--attn-dp-size", type=int, help="DP-attention ranks (0.5.23 spelling).")
@click.option("--enable-dp-attention", is_flag=True, help="Accepted (classic spelling of DP attention).")
@click.option(
    "--tp-size", "--tp", "tp_size", type=int, help="Checked against the DP ranks; otherwise unused."
)
@click.option(
    "--ep-size", "--ep", "--expert-parallel-size", "ep_size", type=int, help="EP size for step costs [DP]."
)
@click.option("--time-factor", type=float, help="Wall seconds per modelled second [1.0]; 0 = instant.")
@click.option("--model-name", help="Model name reported by the API [deepseek-ai/DeepSeek-V3].")
@click.option("--model-path", help="SGLang spelling of --model-name.")
@click.option("--served-model-name", help="Name OpenAI responses and /v1/models use [model name].")
@click.option("--context-length", type=int, help="Longest prompt + output [163840].")
@click.option(
    "--chunked-prefill-size", type=int, help="Prefill tokens per step, whole instance [16384 × DP]."
)
@click.option("--max-running-requests", type=int, help="Running-request cap, whole instance (÷ DP per rank).")
@click.option("--max-total-tokens", type=int, help="KV tokens per rank [from GPU memory].")
@click.option(
    "--load-balance-method",
    type=click.Choice(["auto", "round_robin", "follow_bootstrap_room", "total_requests", "total_tokens"]),
    help="[auto]",
)
@click.option("--stream-interval", type=int, help="Tokens between stream chunks [1].")
@click.option("--disable-radix-cache", is_flag=True, default=None, help="No prefix reuse.")
@click.option("--hardware", type=click.Choice(["h800", "h200"]), help="GPU of the cost model [h800].")
@click.option("--jitter-cv", type=float, help="Step-time noise (coefficient of variation) [0].")
@click.option("--seed", type=int, help="Seed of the step-time noise [0].")
@click.option(
    "--bootstrap-timeout",
    "bootstrap_timeout_s",
    type=float,
    envvar="SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT",
    help="Seconds a PD prefill waits for its decode's handshake [300].",
)
@click.option(
    "--waiting-timeout",
    "waiting_timeout_s",
    type=float,
    envvar="SGLANG_DISAGGREGATION_WAITING_TIMEOUT",
    help="Seconds a PD decode waits for its prefill's KV [300].",
)
@click.option(
    "--force-query-prefill-dp-rank",
    is_flag=True,
    default=None,
    envvar="SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK",
    help="Register rooms instead of failing room/rank conflicts.",
)
@click.option(
    "--load-snapshot-publish-interval", type=int, help="Decode steps between /v1/loads refreshes [15]."
)
@click.option("--decode-log-interval", type=int, help="Decode steps between gauge refreshes [40].")
@click.option(
    "--api-key",
    default=None,
    help="Require 'Authorization: Bearer <key>' as SGLang does (not /health, /metrics).",
)
@click.option(
    "--enable-prefill-delayer",
    is_flag=True,
    default=None,
    help="SGLang's prefill delayer (DP ranks wait for each other).",
)
@click.option("--prefill-delayer-max-delay-passes", type=int, help="Passes a prefill may be held [30].")
@click.option("--idle-pass-ms", type=float, help="Modelled ms of a pass with no forward [1.0].")
@click.option("--prefill-delayer-token-usage-low-watermark", "delayer_watermark", type=float, hidden=True)
@click.option("--prefill-delayer-queue-min-ratio", "delayer_queue_ratio", type=float, hidden=True)
@click.option("--prefill-delayer-max-delay-ms", "delayer_max_ms", type=float, hidden=True)
@click.option(
    "--enable-priority-scheduling",
    is_flag=True,
    default=None,
    help="Order waiting queues by the requests' priority, then arrival (sbs.sim.engine_priority).",
)
@click.option(
    "--schedule-low-priority-values-first",
    is_flag=True,
    default=None,
    help="With priority scheduling, lower priority values go first [higher first].",
)
@click.option("--default-priority-value", type=int, help="Priority of requests sent without one [lowest].")
@click.option(
    "--abort-on-priority-when-disabled",
    is_flag=True,
    default=None,
    help="Without priority scheduling, refuse (503) requests that send a priority [ignore it].",
)
@click.option("--nnodes", type=int, help="Nodes of the engine group [1].")
@click.option("--node-rank", type=int, help="This node's rank; > 0 serves only /health [0].")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def cli(ctx: click.Context, log_level: str, **opts: Any) -> None:
    """Run one emulated SGLang 0.5.23 engine until SIGINT or SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ignored, unknown = _split_extra(list(ctx.args))
    try:
        settings = build_settings(opts)
    except ValidationError as exc:
        _die(_flag_error(exc))
    except ValueError as exc:
        _die(str(exc))
    if ignored:
        log.info("sbs-engine: accepted and ignored (not modelled): %s", " ".join(ignored))
    for flag in unknown:
        log.warning("sbs-engine: unknown flag %s ignored", flag)
    try:
        asyncio.run(_serve(settings, redacted_command(sys.argv)))
    except EngineConfigError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")


_FLAG_OF = {
    "bootstrap_port": "--disaggregation-bootstrap-port",
    "bootstrap_timeout_s": "--bootstrap-timeout",
    "waiting_timeout_s": "--waiting-timeout",
    "settings": "flags",
}


def _flag_error(exc: ValidationError) -> str:
    """`describe_error`, naming the command-line flag rather than the settings field."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    flag = _FLAG_OF.get(field, "--" + field.replace("_", "-"))
    return describe_error(exc).replace(f"field '{field}'", flag, 1)


def _die(message: str) -> NoReturn:
    click.echo(f"sbs-engine: error: {message}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="sbs-engine")
