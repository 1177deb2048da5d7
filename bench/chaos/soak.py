"""`python -m sbs.bench.chaos.soak` (`make soak`): a long trace replay at 0.7 of capacity, no faults.

The replay runs in two parts: the warm-up (`--warmup` wall seconds of the trace), a drain and an idle
pause, then the rest of the trace, a drain and an idle pause. Every `--every` seconds it prints the
scheduler's and the operator's RSS and open file descriptors (from /proc of their pod processes),
their live asyncio tasks and threads (the pod shim's stats file), the scheduler's requests in flight
(`outstanding`), and the errors so far (the replay's outcomes are known only at the end, so the line
carries the scheduler's own `sbs_requests_errored_total`). At the end: the curve figures and whether
the targets held:

- RSS grows < 10 % after warm-up: idle after the warm-up against idle at the end, both after the
  drain and `SETTLE_S`, so the comparison is at equal load (none) and a leak shows as retained
  memory; under load RSS follows the requests in flight (tens of KiB each), and those figures are
  printed beside it;
- fds and asyncio tasks stay flat: under load each request in flight holds a client connection, two
  engine sockets and its relay tasks, so the curves follow the trace's own ups and downs; flat means
  per request in flight (the mean of the last third after warm-up within 10 % of the first third),
  and, the leak check proper, back at the idle level after the warm-up (± a few) once the replay
  drained and idle connections timed out;
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
from sbs.bench.chaos.load import Outcome, Tally, replay_in_child
from sbs.bench.chaos.runner import DRAIN_S, Timing, counter_sum, workload
from sbs.e2e import agent, binaries
from sbs.e2e.control_plane import ClusterSettings, ControlPlane
from sbs.scheduler.core.types import Request
from sbs.sim.loaders import load_trace
from sbs.sim.trace import Trace, build_trace

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv"
IDLE_SLACK = 8
"""Tolerated difference between the idle fds (or tasks) before the load and after the drain."""
TREND = 0.10
"""Tolerated growth of fds (or tasks) per request in flight, first third -> last third."""
SETTLE_S = 90.0
"""After a drain, how long to wait before the idle sample: pooled keep-alive sockets expire (15 s)
and the scheduler returns its freed heap (30 s)."""


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


def verdict(rows: list[dict[str, Any]], errors: int) -> tuple[bool, list[str]]:
    """The targets over the samples: `idle` marks the idle ones (`before` the load, `warm` after the
    warm-up's drain, `end` after the last drain); `phase` "load" those under load after the warm-up."""
    idle = {r["idle"]: r for r in rows if r.get("idle")}
    if not {"before", "warm", "end"} <= set(idle):
        return False, [f"idle samples {sorted(idle)}: need before, warm and end (an older soak's file?)"]
    loaded = [r for r in rows if r.get("phase") == "load"]
    lines, ok = [], errors == 0
    for name in ("scheduler", "operator"):
        idle0, warm, end = (idle[k].get(name) for k in ("before", "warm", "end"))
        pts = [r for r in loaded if name in r]
        if not (pts and idle0 and warm and end):
            lines.append(f"{name}: no samples")
            ok = False
            continue
        rss = [r[name]["rss_mib"] for r in pts]
        growth = (end["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"] if warm["rss_mib"] else float("inf")
        line = (
            f"{name}: RSS idle {idle0['rss_mib']:.1f} before -> {warm['rss_mib']:.1f} after the warm-up -> "
            f"{end['rss_mib']:.1f} MiB at the end ({growth:+.1%}); under load {rss[0]:.1f} -> {rss[-1]:.1f}, "
            f"max {max(rss):.1f}"
        )
        ok = ok and growth < 0.10
        for key in ("fds", "tasks"):
            seq = [r[name][key] for r in pts if r[name].get(key) is not None and r[name][key] >= 0]
            base, end_n = warm.get(key), end.get(key)
            if not seq or base is None or end_n is None:
                continue
            back = abs(end_n - base) <= IDLE_SLACK
            line += (
                f"; {key} idle {idle0.get(key)} before, {base} after the warm-up, {end_n} at the end, "
                f"{min(seq)}-{max(seq)} under load"
            )
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


def split(trace: Trace, at_s: float) -> tuple[Trace, Trace]:
    """The requests arriving before `at_s` and the rest, each rebased to start at 0."""

    def part(name: str, rs: list[Request]) -> Trace:
        columns = ([r.arrival_s for r in rs], [r.prompt_tokens for r in rs], [r.output_tokens for r in rs])
        return build_trace(f"{trace.name} [{name}]", *columns)

    early = [r for r in trace.requests if r.arrival_s < at_s]
    return part("warm-up", early), part("rest", list(trace.requests[len(early) :]))


@click.command()
@click.option("--minutes", type=float, default=30.0, show_default=True)
@click.option("--load", type=float, default=0.7, show_default=True)
@click.option("--time-factor", type=float, default=4.0, show_default=True)
@click.option("--warmup", type=float, default=300.0, show_default=True,
              help="Wall seconds of trace before the drain and the idle baseline.")  # fmt: skip
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
        sys.exit(_report(saved["rows"], saved["tally"]))
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=Path(log_dir) / "soak.log", level=logging.INFO)
    timing = Timing(warmup_s=0.0, fault_s=0.0, after_s=minutes * 60)
    settings = ClusterSettings(node_count=16, crd_paths=(REPO / "crds",))
    rows: list[dict[str, Any]] = []

    def idle_sample(tag: str) -> None:
        rows.append({**sample(stack), "idle": tag})
        click.echo(f"{_line(rows[-1], rows[0]['t'])} (idle: {tag})")

    with ControlPlane(binaries.find_binaries(), settings, name="soak") as plane:
        stack = Stack(plane, f"soak-{secrets.token_hex(2)}", Path(log_dir), time_factor=time_factor)
        try:
            stack.start()
            trace = workload(load_trace(trace_path), stack, load, timing)
            warm, rest = split(trace, warmup / time_factor)
            click.echo(f"soak: {len(trace)} requests over {minutes:g} min (load {load:g}, time factor "
                       f"{time_factor:g}): {len(warm)} in the warm-up, then an idle pause")  # fmt: skip
            stop = threading.Event()
            idle_sample("before")  # before the load
            phase = ["warm-up"]

            def sampler() -> None:
                while not stop.wait(every):
                    try:
                        rows.append({**sample(stack), "phase": phase[0]})
                        click.echo(_line(rows[-1], rows[0]["t"]))
                    except Exception as exc:  # a sample lost is a gap in the curve, not the end
                        click.echo(f"soak: sample failed: {exc}", err=True)

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            outcomes: list[Outcome] = []
            for part, name, after in ((warm, "warm-up", "warm"), (rest, "load", "end")):
                phase[0] = name
                outcomes += replay_in_child(
                    part, time_factor, kubeconfig=str(plane.kubeconfig), namespace=stack.namespace,
                    selector=stack.scheduler_selector, port=stack.shape.scheduler_port, drain_s=DRAIN_S,
                )  # fmt: skip
                phase[0] = "settle"
                time.sleep(SETTLE_S)
                idle_sample(after)
            stop.set()
            thread.join()
        finally:
            stack.stop()
    tally = Tally.of(outcomes)
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps({"rows": rows, "tally": tally.__dict__, "warmup_s": warmup},
                                         indent=1) + "\n")  # fmt: skip
    sys.exit(_report(rows, tally.__dict__))


def _report(rows: list[dict[str, Any]], tally: dict[str, int]) -> int:
    """Print the tally and the verdict; the exit status."""
    errors = tally["accepted"] - tally["completed"] + tally["rejected"]
    ok, lines = verdict(rows, errors)
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
