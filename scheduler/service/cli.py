"""`sbs-scheduler`: the scheduler service in front of SGLang prefill/decode engines.

    sbs-scheduler run    [--config FILE] [--host H] [--port N] [--policy NAME]
                         [--prefill URL[,bootstrap_port=N,dp_size=N,...]]... [--decode URL[,dp_size=N,...]]...
                         [--engines-file FILE]
    sbs-scheduler config [--config FILE] [same flags] [--schema]

`--engines-file` adds the engines of a file watched while the service runs (`file_discovery`):
engines drained, removed and added outside Kubernetes. `config` prints the effective settings (or
their JSON schema) and exits. Bad configuration prints one line naming the file and field, and exits
with status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from sbs.kube.credentials import CredentialsError
from sbs.scheduler.core import compiled
from sbs.scheduler.service import memory
from sbs.scheduler.service.app import make_app
from sbs.scheduler.service.config_file import (
    SettingsError,
    build_settings,
    parse_engine_flag,
    read_config_file,
)
from sbs.scheduler.service.connections import GuardedSite, make_runner, raise_fd_limit
from sbs.scheduler.service.discovery import StaticSource
from sbs.scheduler.service.file_discovery import FileSource, read_engines_file
from sbs.settings import scheduling
from sbs.settings.service import ServiceSettings

log = logging.getLogger(__name__)


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by `run` and `config`."""
    options = [
        click.option(
            "--config", "config_path", type=click.Path(dir_okay=False), help="YAML or JSON config file."
        ),
        click.option("--host", default=None, help="Listen address (default 0.0.0.0)."),
        click.option("--port", type=int, default=None, help="Listen port (default 8000; 0 = any free port)."),
        click.option(
            "--policy",
            type=click.Choice(scheduling.POLICY_NAMES),
            default=None,
            help="Scheduling policy (default sbs); an immediate one may add +prio (send SBS's size-aware "
            "priority to engines run with --enable-priority-scheduling).",
        ),
        click.option(
            "--prefill",
            multiple=True,
            metavar="URL[,key=value...]",
            help="A prefill engine, e.g. http://p0:30000,bootstrap_port=8998,dp_size=8 (repeatable).",
        ),
        click.option(
            "--decode",
            multiple=True,
            metavar="URL[,key=value...]",
            help="A decode engine, e.g. http://d0:30000.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load(
    config_path: str | None,
    host: str | None,
    port: int | None,
    policy: str | None,
    prefill: tuple[str, ...],
    decode: tuple[str, ...],
) -> ServiceSettings:
    """Settings from the file and the flags (flags win)."""
    data = read_config_file(config_path) if config_path else {}
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "policy": policy,
        "prefill": [parse_engine_flag(v, "--prefill") for v in prefill],
        "decode": [parse_engine_flag(v, "--decode") for v in decode],
    }
    return build_settings(data, overrides=overrides, where=config_path or "flags")


@click.group()
def main() -> None:
    """SBS scheduler service."""


@main.command()
@settings_options
@click.option(
    "--engines-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML/JSON file of prefill: and decode: engine lists, watched while running (engines drained, "
    "removed and added outside Kubernetes; replace it atomically).",
)
def run(engines_file: str | None, **flags: Any) -> None:
    """Serve until SIGINT or SIGTERM."""
    settings = _settings_or_exit(flags)
    if engines_file is not None:
        if settings.engines.kubernetes is not None:
            click.echo("sbs-scheduler: --engines-file and engines.kubernetes: use one of them", err=True)
            sys.exit(2)
        try:
            read_engines_file(engines_file)
        except SettingsError as exc:
            click.echo(f"sbs-scheduler: --engines-file: {exc}", err=True)
            sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    static = settings.engines.prefill and settings.engines.decode
    if settings.engines.kubernetes is None and engines_file is None and not static:
        log.warning("no static prefill or decode engines configured: the service stays unready")
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, engines_file=engines_file, tune_gc=True))
    except CredentialsError as exc:
        click.echo(f"sbs-scheduler: engines.kubernetes: cannot load Kubernetes credentials: {exc}", err=True)
        sys.exit(2)


@main.command("config")
@settings_options
@click.option("--schema", is_flag=True, help="Print the JSON schema of the config file instead.")
def config_cmd(schema: bool, **flags: Any) -> None:
    """Print the effective settings as JSON (validating the file and flags)."""
    if schema:
        click.echo(json.dumps(ServiceSettings.model_json_schema(), indent=2))
        return
    click.echo(_settings_or_exit(flags).model_dump_json(indent=2))


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `event_loop` names (None: asyncio's default)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            click.echo("sbs-scheduler: event_loop: uvloop is not installed (pip install uvloop)", err=True)
            sys.exit(2)
        return None
    return uvloop.new_event_loop


def _settings_or_exit(flags: dict[str, Any]) -> ServiceSettings:
    try:
        return load(**flags)
    except SettingsError as exc:
        click.echo(f"sbs-scheduler: {exc}", err=True)
        sys.exit(2)


async def serve(
    settings: ServiceSettings,
    *,
    stop: asyncio.Event | None = None,
    engines_file: str | None = None,
    tune_gc: bool = False,
) -> None:
    """Run the service until `stop` is set (or a termination signal arrives); with `engines_file`,
    its engines (watched) join the static ones; `tune_gc` (the process is the service's own):
    `memory.tune_gc` once it listens."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
    raise_fd_limit()  # before the app sizes its connection cap by it
    compiled.warm_up()  # the core's kernels compiled (or loaded) before the first request needs them
    sources = None
    if engines_file is not None:
        sources = [StaticSource(settings.engines), FileSource(engines_file)]
    runner = make_runner(make_app(settings, sources=sources))
    try:
        await runner.setup()
        site = GuardedSite(runner, settings.host, settings.port)
        await site.start()
        if tune_gc:
            memory.tune_gc()
        where = ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple))
        log.info("sbs-scheduler listening on %s, policy %s", where, settings.scheduler.policy.type)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
