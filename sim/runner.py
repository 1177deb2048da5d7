"""Run several simulations (in worker processes when asked) with progress on stderr."""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass
from typing import Any, Self

from sbs.settings import scheduling
from sbs.sim.cluster import ClusterConfig
from sbs.sim.oracle import simulate
from sbs.sim.trace import Trace


@dataclass(frozen=True)
class RunSpec:
    trace: Trace
    cluster: ClusterConfig
    policy: scheduling.PolicySettings
    load: float | None = None


def run_one(spec: RunSpec, slo_ttft_s: float, slo_tpot_s: float, progress=None) -> dict[str, Any]:
    """One simulation; returns a plain dict (picklable) with the summary and the TTFT sample."""
    start = time.process_time()
    result, fill = simulate(spec.trace, spec.cluster, spec.policy, progress=progress)
    cpu = time.process_time() - start
    summary = result.recorder.summary(slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    summary["sim_cpu_s"] = cpu
    if fill is not None:
        summary["oracle_fill_target"] = fill
    return {
        "policy": spec.policy.name,
        "load": spec.load,
        "summary": summary,
        "ttft": result.recorder.ttft().tolist(),
        "scheduler": result.scheduler_stats,
        "events": result.events,
    }


def _worker(args: tuple[RunSpec, float, float]) -> dict[str, Any]:
    return run_one(*args)


def run_many(
    specs: list[RunSpec], *, jobs: int, slo_ttft_s: float, slo_tpot_s: float, label: str
) -> list[dict[str, Any]]:
    """Run all specs, in order of the input; progress lines go to stderr."""
    total = len(specs)
    t0 = time.monotonic()
    if jobs <= 1 or total == 1:
        out = []
        for k, spec in enumerate(specs):
            name = _name(spec)
            bar = _Bar(f"{label} [{k + 1}/{total}] {name}")
            out.append(run_one(spec, slo_ttft_s, slo_tpot_s, progress=bar.update))
            bar.done(time.monotonic() - t0)
        return out
    ctx = multiprocessing.get_context("fork")
    results: list[dict[str, Any] | None] = [None] * total
    with ctx.Pool(min(jobs, total)) as pool:
        it = pool.imap_unordered(_indexed, [(i, (s, slo_ttft_s, slo_tpot_s)) for i, s in enumerate(specs)])
        for done, (i, res) in enumerate(it, start=1):
            results[i] = res
            cpu = res["summary"]["sim_cpu_s"]
            print(
                f"{label}: {done}/{total} runs done ({_name(specs[i])}, {cpu:.1f} s cpu, "
                f"{time.monotonic() - t0:.0f} s elapsed)",
                file=sys.stderr,
                flush=True,
            )
    return [r for r in results if r is not None]


class LazyPool:
    """A fork pool of `jobs` workers for searches that run batch after batch: started by the first
    batch of more than one run (`for_batch`), kept for the later ones, terminated on exit."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._pool: Any = None

    def for_batch(self, n: int) -> Any:
        """The pool to run a batch of `n` runs in, None: run it here."""
        if self._pool is None and self.jobs > 1 and n > 1:
            self._pool = multiprocessing.get_context("fork").Pool(self.jobs)
        return self._pool

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def _indexed(item: tuple[int, tuple[RunSpec, float, float]]) -> tuple[int, dict[str, Any]]:
    i, args = item
    return i, _worker(args)


def _name(spec: RunSpec) -> str:
    return spec.policy.name if spec.load is None else f"{spec.policy.name}@{spec.load:g}"


class _Bar:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def update(self, frac: float) -> None:
        pct = int(frac * 100)
        if self.tty:
            if pct != self.last:
                filled = pct // 4
                sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (25 - filled)}] {pct:3d}%")
                sys.stderr.flush()
        elif pct // 25 != self.last // 25:
            print(f"{self.label}: {pct}% of arrivals", file=sys.stderr, flush=True)
        self.last = pct

    def done(self, elapsed: float) -> None:
        end = "\n" if self.tty else ""
        sys.stderr.write(f"{end}{self.label}: done ({elapsed:.0f} s elapsed)\n")
        sys.stderr.flush()
