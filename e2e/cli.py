"""`python -m sbs.e2e`: build the binaries, run a dev cluster, run the node agent.

Usage::

    python -m sbs.e2e build                 # build/cache the binaries and Kueue (make e2e-bins)
    python -m sbs.e2e up [--nodes 64]       # start the `dev` cluster in the background (make dev-cluster)
    export KUBECONFIG=$(python -m sbs.e2e kubeconfig)
    python -m sbs.e2e status
    python -m sbs.e2e agent --selector app=engine -- python -m http.server --bind {ip} {port}
    python -m sbs.e2e demo-operator [--kueue]  # the operator's demo (make demo-operator)
    python -m sbs.e2e down                  # (make dev-cluster-down)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from sbs.e2e import agent, binaries, kueue, nodes
from sbs.e2e.control_plane import (
    ClusterSettings,
    ControlPlane,
    ControlPlaneError,
    find_clusters,
    remove_stale,
)
from sbs.e2e.waits import WaitTimeout
from sbs.kube.blocking import ApiError, Kube


class CliError(click.ClickException):
    exit_code = 2


def _bins() -> binaries.Binaries:
    try:
        return binaries.find_binaries()
    except (binaries.BinariesMissing, binaries.BuildError) as exc:
        raise CliError(str(exc)) from exc


name_option = click.option("--name", default="dev", show_default=True, help="Which local cluster.")


@click.group()
def main() -> None:
    """The local Kubernetes control plane with simulated H800 nodes (see e2e/__init__.py)."""


@main.command()
def build() -> None:
    """Build the control plane binaries and Kueue into the cache unless they are there (idempotent)."""
    try:
        binaries.ensure_binaries(log=click.echo)
        kueue.ensure_kueue(log=click.echo)
    except (binaries.BuildError, kueue.KueueError) as exc:
        raise CliError(str(exc)) from exc


@main.command()
@click.option("--kubernetes", help="k8s.io/kubernetes release, e.g. v1.36.3 (default: keep).")
@click.option("--etcd", help="go.etcd.io/etcd/server/v3 release (default: keep).")
@click.option("--kwok", help="sigs.k8s.io/kwok release (default: keep).")
def gomod(kubernetes: str | None, etcd: str | None, kwok: str | None) -> None:
    """Regenerate e2e/tools/go.mod, deriving the staging replace lines from the release."""
    path = binaries.TOOLS_DIR / "go.mod"
    old = binaries.read_pins(path.read_text()) if path.exists() else None
    if old is None and not (kubernetes and etcd and kwok):
        raise click.UsageError("there is no e2e/tools/go.mod yet: give --kubernetes, --etcd and --kwok")
    pins = binaries.Pins(
        kubernetes=kubernetes or old.kubernetes,  # type: ignore[union-attr]
        etcd=etcd or old.etcd,  # type: ignore[union-attr]
        kwok=kwok or old.kwok,  # type: ignore[union-attr]
    )
    try:
        binaries.write_gomod(pins, log=click.echo)
    except binaries.BuildError as exc:
        raise CliError(str(exc)) from exc


@main.command()
@name_option
@click.option("--nodes", "node_count", default=64, show_default=True, help="Fake 8×H800 nodes.")
@click.option(
    "--crds", "crd_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
    help="CRD YAML files or directories to install (default: crds/ when it has any).",
)  # fmt: skip
def up(name: str, node_count: int, crd_paths: tuple[Path, ...]) -> None:
    """Start a cluster whose processes outlive this command; print its KUBECONFIG."""
    if running := find_clusters(name):
        click.echo(f"cluster {name!r} is already running ({running[0].server})")
        click.echo(f"export KUBECONFIG={running[0].kubeconfig}")
        return
    from sbs.e2e.fixtures import project_crd_paths

    settings = ClusterSettings(node_count=node_count, crd_paths=crd_paths or project_crd_paths())
    plane = ControlPlane(_bins(), settings, name=name, owned=False)
    try:
        plane.start()
    except (ControlPlaneError, WaitTimeout, ApiError) as exc:
        raise CliError(f"cluster {name!r} did not start: {exc}") from exc
    t = plane.timings
    click.echo(
        f"cluster {name!r}: {node_count} H800 nodes Ready in {t['nodes_ready']:.1f} s at {plane.server} "
        f"(pod IPs 127.{nodes.POD_NET_BASE + plane.slot}.<node>.<n>; logs in {plane.dir / 'logs'})"
    )
    click.echo(f"kubectl {plane.bins.build_info()['pins']['kubernetes']}: {plane.bins.path('kubectl')}")
    click.echo(f"export KUBECONFIG={plane.kubeconfig}")


@main.command("demo-operator")
@name_option
@click.option("--log-dir", default="out", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--kueue", "use_kueue", is_flag=True,
    help="Run Kueue alongside the operator, with a queue holding every GPU (both stop with the demo).",
)  # fmt: skip
def demo_operator(name: str, log_dir: Path, use_kueue: bool) -> None:
    """Run the operator on the dev cluster (started if needed), apply the sample, follow it to Ready."""
    from sbs.e2e import demo

    if use_kueue:
        try:
            kueue.find_kueue()
        except (kueue.KueueError, binaries.BuildError) as exc:
            raise CliError(str(exc)) from exc

    running = find_clusters(name)
    if running:
        plane = running[0]
    else:
        plane = ControlPlane(_bins(), ClusterSettings(), name=name, owned=False)
        try:
            plane.start()
        except (ControlPlaneError, WaitTimeout, ApiError) as exc:
            raise CliError(f"cluster {name!r} did not start: {exc}") from exc
    try:
        code = demo.run_demo(plane, log_dir, use_kueue=use_kueue)
    except (kueue.KueueError, ControlPlaneError, WaitTimeout, ApiError) as exc:
        raise CliError(f"the demo failed: {exc}") from exc
    sys.exit(code)


@main.command()
@name_option
@click.option("--all", "all_", is_flag=True, help="Stop every local cluster of this user.")
def down(name: str, all_: bool) -> None:
    """Stop a cluster started by `up` (by its recorded PIDs) and delete its state."""
    planes = find_clusters(None if all_ else name)
    for path in remove_stale():
        click.echo(f"removed the state of a dead cluster: {path}")
    if not planes:
        click.echo(f"no running cluster {'at all' if all_ else repr(name)}")
        return
    for plane in planes:
        plane.stop()
        click.echo(f"stopped cluster {plane.name!r} ({plane.server})")


@main.command()
@name_option
def kubeconfig(name: str) -> None:
    """Print the kubeconfig path of a running cluster."""
    planes = find_clusters(name)
    if not planes:
        raise CliError(f"no running cluster {name!r}: start one with `make dev-cluster`")
    click.echo(planes[0].kubeconfig)


@main.command()
def status() -> None:
    """List the local clusters and whether each component runs."""
    planes = find_clusters()
    if not planes:
        click.echo("no local clusters")
    for plane in planes:
        parts = ", ".join(f"{c.name} {'up' if c.alive() else 'DOWN'}" for c in plane.components.values())
        click.echo(
            f"{plane.name}: {plane.server} slot {plane.slot} [{parts}]\n  KUBECONFIG={plane.kubeconfig}"
        )


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--kubeconfig", "kubeconfig_path", envvar="KUBECONFIG", required=True, type=click.Path(exists=True)
)
@click.option("--selector", required=True, help="Label selector of the pods to run, e.g. app=engine.")
@click.option("--namespace", help="Only pods in this namespace (default: all).")
@click.option("--port-name", help="Use the containerPort with this name (default: the first).")
@click.option("--log-dir", default="out/node-agent", show_default=True, type=click.Path(path_type=Path))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def agent_(
    kubeconfig_path: str, selector: str, namespace: str | None, port_name: str | None, log_dir: Path,
    command: tuple[str, ...],
) -> None:  # fmt: skip
    """Run COMMAND for every running pod matching --selector, at its IP: {ip} {port} {name}
    {namespace} {node} are filled in. Stops them when the pods go away, and on Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    node_agent = agent.NodeAgent(
        Kube.from_kubeconfig(kubeconfig_path), selector=selector, command=list(command),
        log_dir=log_dir, namespace=namespace, port_name=port_name,
    )  # fmt: skip
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    node_agent.start()
    click.echo(
        f"node agent: running {' '.join(command)!r} for pods matching {selector!r} (pid {os.getpid()})"
    )
    done.wait()
    node_agent.stop()


agent_.name = "agent"
