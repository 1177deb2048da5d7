"""`python -m sbs.bench.chaos.soak` (`make soak`): a long trace replay at 0.7 of capacity, no faults.

Every `--every` seconds it prints the scheduler's and the operator's RSS and open file descriptors
(from /proc of their pod processes), their live asyncio tasks and threads (the pod shim's stats file)
the scheduler's requests in flight (`outstanding`), and the errors so far (the replay's outcomes are
known only at the end, so the line carries the scheduler's own `sbs_requests_errored_total`). At the
end: the curve figures and whether the targets held:

- RSS grows < 10 % from the end of the warm-up to the end of the run;
- fds and asyncio tasks stay flat: under load each request in flight holds a client connection, two
  engine sockets and its relay tasks, so the curves follow the trace's own ups and downs; flat means
  per request in flight (the mean of the last third after warm-up within 10 % of the first third),
  and, the leak check proper, back at the idle level (± a few) once the replay drained and idle
  connections timed out;
- zero errors.

`--judge out/soak.json` judges a saved run again without running it.
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
IDLE_SLACK = 8
"""Tolerated difference between the idle fds (or tasks) before the load and after the drain."""
TREND = 0.10
"""Tolerated growth of fds (or tasks) per request in flight, first third -> last third."""
SETTLE_S = 90.0
"""After the drain, how long to wait before the idle sample: pooled keep-alive sockets expire."""


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
    try:
        row["outstanding"] = stack.scheduler_in_flight(urls[0]) if urls else None
    except (OSError, ValueError):
        row["outstanding"] = None
    return row


def _per_request(pts: list[tuple[float, float]], floor: float) -> float:
    """Mean of (count - idle) / requests in flight over samples with at least `floor` in flight (with
    few in flight, pooled engine connections dominate the ratio)."""
    ratios = [c / n for c, n in pts if n and n >= floor]
    return sum(ratios) / len(ratios) if ratios else float("nan")


def verdict(rows: list[dict[str, Any]], warmup_s: float, errors: int) -> tuple[bool, list[str]]:
    """The targets over the samples: the first is idle (before the load), the last idle again (after
    the drain and `SETTLE_S`); those between, after warm-up, are under load."""
    t0 = rows[0]["t"]
    loaded = [r for r in rows[1:-1] if r["t"] - t0 >= warmup_s]
    lines, ok = [], errors == 0
    for name in ("scheduler", "operator"):
        idle0, idle1 = rows[0].get(name), rows[-1].get(name)
        pts = [r for r in loaded if name in r]
        if not (pts and idle0 and idle1):
            lines.append(f"{name}: no samples")
            ok = False
            continue
        rss = [r[name]["rss_mib"] for r in pts]
        growth = (rss[-1] - rss[0]) / rss[0] if rss[0] else float("inf")
        line = (
            f"{name}: RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB after warm-up ({growth:+.1%}, max "
            f"{max(rss):.1f}; idle {idle0['rss_mib']:.1f} before, {idle1['rss_mib']:.1f} after)"
        )
        ok = ok and growth < 0.10
        for key in ("fds", "tasks"):
            seq = [r[name][key] for r in pts if r[name].get(key) is not None and r[name][key] >= 0]
            base, end = idle0.get(key), idle1.get(key)
            if not seq or base is None or end is None:
                continue
            back = abs(end - base) <= IDLE_SLACK
            line += f"; {key} idle {base} -> {end} after the drain, {min(seq)}-{max(seq)} under load"
            if name == "scheduler":  # the scheduler's fds and tasks follow its requests in flight
                third = max(1, len(pts) // 3)
                per = [
                    (r[name][key] - base, r.get("outstanding")) for r in pts if r[name].get(key) is not None
                ]
                loads = sorted(n for _, n in per if n)
                floor = max(1.0, 0.25 * loads[len(loads) // 2]) if loads else 1.0
                first, last = _per_request(per[:third], floor), _per_request(per[-third:], floor)
                trend = (last - first) / first if first else float("nan")
                line += f" ({first:.2f} -> {last:.2f} per request in flight, {trend:+.1%})"
                back = back and trend <= TREND  # NaN (no requests in flight seen) fails
            ok = ok and back
        lines.append(line)
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
@click.option("--judge", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Judge a saved run (its --json) again instead of running.")  # fmt: skip
def main(minutes: float, load: float, time_factor: float, warmup: float, every: float, trace_path: str,
         json_out: str, log_dir: str, judge: str | None) -> None:  # fmt: skip
    """Soak the scheduler and the operator under a steady trace replay and print their curves."""
    if judge:
        saved = json.loads(Path(judge).read_text())
        sys.exit(_report(saved["rows"], saved["tally"], saved.get("warmup_s", warmup)))
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
            rows.append(sample(stack))  # idle, before the load
            click.echo(_line(rows[-1], rows[0]["t"]) + " (idle)")

            def sampler() -> None:
                while not stop.wait(every):
                    try:
                        rows.append(sample(stack))
                        click.echo(_line(rows[-1], rows[0]["t"]))
                    except Exception as exc:  # a sample lost is a gap in the curve, not the end
                        click.echo(f"soak: sample failed: {exc}", err=True)

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            outcomes = replay_in_child(
                trace, time_factor, kubeconfig=str(plane.kubeconfig), namespace=stack.namespace,
                selector=stack.scheduler_selector, port=stack.shape.scheduler_port, drain_s=DRAIN_S,
            )  # fmt: skip
            stop.set()
            thread.join()
            time.sleep(SETTLE_S)
            rows.append(sample(stack))  # idle again
            click.echo(_line(rows[-1], rows[0]["t"]) + " (idle, after the drain)")
        finally:
            stack.stop()
    tally = Tally.of(outcomes)
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps({"rows": rows, "tally": tally.__dict__, "warmup_s": warmup},
                                         indent=1) + "\n")  # fmt: skip
    sys.exit(_report(rows, tally.__dict__, warmup))


def _report(rows: list[dict[str, Any]], tally: dict[str, int], warmup_s: float) -> int:
    """Print the tally and the verdict; the exit status."""
    errors = tally["accepted"] - tally["completed"] + tally["rejected"]
    ok, lines = verdict(rows, warmup_s, errors)
    t = tally
    click.echo(
        f"soak: {t['accepted']} accepted, {t['completed']} completed, {t['rejected']} rejected, "
        f"{t['retryable']} retryable, {t['lost']} lost, {t['hung']} hung"
    )
    for line in lines:
        click.echo(f"soak: {line}")
    click.echo(f"soak: targets {'held' if ok else 'MISSED'}")
    return 0 if ok else 1


def _line(row: dict[str, Any], t0: float) -> str:
    parts = [f"{(row['t'] - t0) / 60:5.1f} min"]
    for name in ("scheduler", "operator"):
        c = row.get(name)
        if c:
            parts.append(
                f"{name} rss {c['rss_mib']:.1f} MiB fds {c['fds']} tasks {c['tasks']} threads {c['threads']}"
            )
    parts.append(f"in flight {row.get('outstanding')} | errored {row['errored']:g}")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
