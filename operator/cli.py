"""`sbs-operator`: run the operator, or write the CRDs generated from the API types."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sbs.operator import crdgen


@click.group()
def main() -> None:
    """The SBSDeployment operator."""


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("crds"),
    show_default=True,
    help="Directory for the CRD YAML.",
)
@click.option("--check", is_flag=True, help="Fail if the file on disk differs from the generated one.")
def crds(out_dir: Path, check: bool) -> None:
    """Generate the CRDs from the API types (operator/api.py, operator/autoscaling/*_api.py)."""
    if check:
        stale = [
            name
            for name, obj in crdgen.all_crds().items()
            if not (out_dir / name).is_file() or (out_dir / name).read_text() != crdgen.render(obj)
        ]
        if stale:
            names = ", ".join(stale)
            click.echo(
                f"{names} in {out_dir} out of date with the API types: run `sbs-operator crds`", err=True
            )
            sys.exit(1)
        click.echo(f"{out_dir}: CRDs up to date")
        return
    for path in crdgen.write(out_dir):
        click.echo(f"wrote {path}")


@main.command()
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Default: in-cluster credentials in a pod, else $KUBECONFIG or ~/.kube/config.",
)
@click.option(
    "-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable)."
)
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--resync-seconds",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="Every deployment is reconciled at least this often.",
)
@click.option(
    "--lease-namespace",
    default=None,
    help="Namespace of the leader-election Lease (default: the pod's namespace, else 'default').",
)
@click.option("--lease-name", default="sbs-operator", show_default=True)
@click.option("--liveness", default=None, help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=0, help="Prometheus metrics port (0: off)."
)
@click.option("-v", "--verbose", is_flag=True)
def run(
    kubeconfig: str | None, namespaces: tuple[str, ...], workers: int, resync_seconds: float,
    lease_namespace: str | None, lease_name: str, liveness: str | None, metrics_port: int, verbose: bool,
) -> None:  # fmt: skip
    """Run the operator against a cluster (kopf underneath), until interrupted."""
    import asyncio
    import logging

    from prometheus_client import start_http_server
    from sbs.kube import credentials
    from sbs.kube.client import KubeClient
    from sbs.operator import handlers
    from sbs.operator.config import OperatorConfig, namespaces_arg

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for noisy in ("kopf.objects", "kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if lease_namespace is None:
        ns_file = credentials.SA_DIR / "namespace"
        lease_namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    cfg = OperatorConfig(
        namespaces=namespaces_arg(namespaces), workers=workers, resync_s=resync_seconds,
        lease_namespace=lease_namespace, lease_name=lease_name, liveness=liveness,
    )  # fmt: skip
    if metrics_port:
        start_http_server(metrics_port)

    async def main_async() -> None:
        try:
            creds = await credentials.load(kubeconfig)
        except credentials.CredentialsError as exc:
            raise click.ClickException(f"cannot load Kubernetes credentials: {exc}") from None
        where = ", ".join(cfg.namespaces) or "all namespaces"
        click.echo(f"sbs-operator: watching {where} on {creds.server} ({creds.source})", err=True)
        async with KubeClient(creds) as client:
            await handlers.run(client, cfg)

    asyncio.run(main_async())


if __name__ == "__main__":
    main()
