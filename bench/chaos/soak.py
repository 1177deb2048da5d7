"""`python -m sbs.bench.chaos.soak` (`make soak`): a long trace replay at 0.7 of capacity, no faults.

Every `--every` seconds it prints the scheduler's and the operator's RSS and open file descriptors
(from /proc of their pod processes), their live asyncio tasks and threads (the pod shim's stats file)
and the errors so far (the replay's non-completed requests in the last full minute are not known
until the end, so the line carries the scheduler's own `sbs_requests_errored_total`). At the end:
the curve figures (RSS growth after warm-up, fd and task ranges) and whether the targets held: RSS
grows < 10 % after warm-up, fds and tasks flat (a range of a few), zero errors.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
from sbs.bench.chaos.cluster import OPERATOR_LABELS, OPERATOR_NS, Stack
from sbs.bench.chaos.load import Tally, replay_in_child
from sbs.bench.chaos.runner import DRAIN_S, Timing, counter_sum, workload
from sbs.e2e import agent, binaries
from sbs.e2e.control_plane import ClusterSettings, ControlPlane
from sbs.sim.loaders import load_trace

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv"
FLAT_FDS = 8
FLAT_TASKS = 16
"""Tolerated ranges after warm-up: connections and relays come and go with the load."""


def _proc(pid: int) -> tuple[float, int]:
    """(RSS MiB, open fds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _last_stats(p: agent.PodProcess) -> dict[str, Any]:
    path = (p.pod_dir or Path("/nonexistent")) / agent.STATS
    try:
        return json.loads(path.read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}


def _errored(url: str) -> float:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return counter_sum(r.read().decode(), ("sbs_requests_errored_total{",))
    except OSError:
        return float("nan")


def sample(stack: Stack) -> dict[str, Any]:
    """One point of the curves: per component RSS, fds, tasks, threads; the scheduler's errors."""
    assert stack.agent is not None
    row: dict[str, Any] = {"t": time.monotonic()}
    pods = {"scheduler": stack.ready_pods(stack.namespace, stack.scheduler_selector),
            "operator": stack.ready_pods(OPERATOR_NS, OPERATOR_LABELS)}  # fmt: skip
    for name, found in pods.items():
        p = (
            stack.agent.process_for(found[0]["metadata"]["namespace"], found[0]["metadata"]["name"])
            if found
            else None
        )
        if p is None:
            continue
        rss, fds = _proc(p.proc.pid)
        stats = _last_stats(p)
        row[name] = {"pid": p.proc.pid, "rss_mib": round(rss, 1), "fds": fds, "tasks": stats.get("tasks"),
                     "threads": stats.get("threads")}  # fmt: skip
    urls = stack.scheduler_urls()
    row["errored"] = _errored(urls[0]) if urls else float("nan")
    return row


def verdict(rows: list[dict[str, Any]], warmup_s: float, errors: int) -> tuple[bool, list[str]]:
    """The targets over the samples after warm-up."""
    t0 = rows[0]["t"]
    after = [r for r in rows if r["t"] - t0 >= warmup_s]
    lines, ok = [], errors == 0
    for name in ("scheduler", "operator"):
        pts = [r[name] for r in after if name in r]
        if not pts:
            lines.append(f"{name}: no samples")
            ok = False
            continue
        rss = [p["rss_mib"] for p in pts]
        growth = (rss[-1] - rss[0]) / rss[0] if rss[0] else float("inf")
        fds = [p["fds"] for p in pts]
        tasks = [p["tasks"] for p in pts if p["tasks"] is not None and p["tasks"] >= 0]
        flat_fd = max(fds) - min(fds) <= FLAT_FDS
        flat_tasks = not tasks or max(tasks) - min(tasks) <= FLAT_TASKS
        ok = ok and growth < 0.10 and flat_fd and flat_tasks
        lines.append(
            f"{name}: RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB (growth {growth:+.1%}, max {max(rss):.1f}), "
            f"fds {min(fds)}-{max(fds)}, tasks {min(tasks, default=0)}-{max(tasks, default=0)}"
        )
    lines.append(f"errors: {errors}")
    return ok, lines


@click.command()
@click.option("--minutes", type=float, default=30.0, show_default=True)
@click.option("--load", type=float, default=0.7, show_default=True)
@click.option("--time-factor", type=float, default=4.0, show_default=True)
@click.option("--warmup", type=float, default=300.0, show_default=True, help="Seconds before the baseline.")
@click.option("--every", type=float, default=60.0, show_default=True, help="Seconds between samples.")
@click.option("--trace", "trace_path", default=str(DEFAULT_TRACE), show_default=True)
@click.option("--json", "json_out", default="out/soak.json", show_default=True)
@click.option("--log-dir", default="out/soak", show_default=True)
def main(minutes: float, load: float, time_factor: float, warmup: float, every: float, trace_path: str,
         json_out: str, log_dir: str) -> None:  # fmt: skip
    """Soak the scheduler and the operator under a steady trace replay and print their curves."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=Path(log_dir) / "soak.log", level=logging.INFO)
    timing = Timing(warmup_s=0.0, fault_s=0.0, after_s=minutes * 60)
    settings = ClusterSettings(node_count=16, crd_paths=(REPO / "crds",))
    rows: list[dict[str, Any]] = []
    with ControlPlane(binaries.find_binaries(), settings, name="soak") as plane:
        stack = Stack(plane, f"soak-{secrets.token_hex(2)}", Path(log_dir), time_factor=time_factor)
        try:
            stack.start()
            trace = workload(load_trace(trace_path), stack, load, timing)
            click.echo(f"soak: {len(trace)} requests over {minutes:g} min (load {load:g}, time factor "
                       f"{time_factor:g})")  # fmt: skip
            stop = threading.Event()

            def sampler() -> None:
                while True:
                    try:
                        rows.append(sample(stack))
                        click.echo(_line(rows[-1], rows[0]["t"]))
                    except Exception as exc:  # a sample lost is a gap in the curve, not the end
                        click.echo(f"soak: sample failed: {exc}", err=True)
                    if stop.wait(every):
                        return

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            outcomes = replay_in_child(
                trace, time_factor, kubeconfig=str(plane.kubeconfig), namespace=stack.namespace,
                selector=stack.scheduler_selector, port=stack.shape.scheduler_port, drain_s=DRAIN_S,
            )  # fmt: skip
            stop.set()
            thread.join()
            rows.append(sample(stack))
        finally:
            stack.stop()
    tally = Tally.of(outcomes)
    errors = tally.accepted - tally.completed + tally.rejected
    ok, lines = verdict(rows, warmup, errors)
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps({"rows": rows, "tally": tally.__dict__, "ok": ok}, indent=1) + "\n")
    click.echo(f"soak: {tally.accepted} accepted, {tally.completed} completed, {tally.rejected} rejected, "
               f"{tally.retryable} retryable, {tally.lost} lost, {tally.hung} hung")  # fmt: skip
    for line in lines:
        click.echo(f"soak: {line}")
    sys.exit(0 if ok else 1)


def _line(row: dict[str, Any], t0: float) -> str:
    parts = [f"{(row['t'] - t0) / 60:5.1f} min"]
    for name in ("scheduler", "operator"):
        c = row.get(name)
        if c:
            parts.append(
                f"{name} rss {c['rss_mib']:.1f} MiB fds {c['fds']} tasks {c['tasks']} threads {c['threads']}"
            )
    parts.append(f"errored {row['errored']:g}")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
