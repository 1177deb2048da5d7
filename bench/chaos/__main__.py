"""`python -m sbs.bench.chaos` (`make chaos`): every scenario under load on a fresh e2e control plane.

Prints each scenario's figures as it ends, then the table and the line
`chaos: S scenarios, accepted A, completed C, retryable R, lost L, hung H`; exits 0 only when nothing
was lost or hung and every recovery target held.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
from pathlib import Path

import click
from sbs.bench.chaos import report, runner, scenarios
from sbs.bench.chaos.cluster import Stack
from sbs.e2e import binaries
from sbs.e2e.control_plane import ClusterSettings, ControlPlane
from sbs.sim.loaders import load_trace

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv"


@click.command()
@click.option("--scenarios", "names", default="", help="Comma-separated scenario names (default: all).")
@click.option("--trace", "trace_path", default=str(DEFAULT_TRACE), show_default=True)
@click.option("--load", type=float, default=0.6, show_default=True, help="Fraction of nominal capacity.")
@click.option(
    "--time-factor", type=float, default=4.0, show_default=True, help="Emulator wall s per modelled s."
)
@click.option("--warmup", type=float, default=30.0, show_default=True, help="Wall seconds before the fault.")
@click.option("--fault", type=float, default=60.0, show_default=True, help="Wall seconds of faults.")
@click.option("--after", type=float, default=40.0, show_default=True, help="Wall seconds after the fault.")
@click.option("--nodes", type=int, default=16, show_default=True)
@click.option("--json", "json_out", default="out/chaos.json", show_default=True)
@click.option("--log-dir", default="out/chaos", show_default=True)
def main(names: str, trace_path: str, load: float, time_factor: float, warmup: float, fault: float,
         after: float, nodes: int, json_out: str, log_dir: str) -> None:  # fmt: skip
    """Run the chaos scenarios and print their table."""
    chosen = scenarios.matrix()
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {s.name for s in chosen})
        if unknown:
            raise click.BadParameter(f"unknown scenario(s) {unknown}; known: {[s.name for s in chosen]}")
        chosen = [s for s in chosen if s.name in wanted]
    timing = runner.Timing(warmup_s=warmup, fault_s=fault, after_s=after)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=Path(log_dir) / "chaos.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    base = load_trace(trace_path)
    settings = ClusterSettings(node_count=nodes, crd_paths=(REPO / "crds",))
    results: list[runner.Result] = []
    with ControlPlane(binaries.find_binaries(), settings, name="chaos") as plane:
        stack = Stack(plane, f"chaos-{secrets.token_hex(2)}", Path(log_dir), time_factor=time_factor)
        try:
            stack.start()
            for scenario in chosen:
                result = runner.run(stack, scenario, base, timing, load=load, log=_say)
                results.append(result)
                stack.dump_events(Path(log_dir) / f"events-{scenario.name}.txt")
                _say(report.row(result))
        finally:
            stack.stop()
            shutil.copytree(plane.dir / "logs", Path(log_dir) / "control-plane", dirs_exist_ok=True)
    out = Path(json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str) + "\n")
    click.echo(report.table(results))
    click.echo(report.details(results))
    click.echo(report.summary(results))
    sys.exit(0 if report.passed(results) else 1)


def _say(text: str) -> None:
    click.echo(text, err=True)


if __name__ == "__main__":
    main()
