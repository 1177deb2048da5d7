"""Speed of one SBS scheduling decision round at production scale, against immediate least-load dispatch.

Setup: 16 prefill instances × DP32 (512 prefill ranks, 16,384-token chunks) and 4 decode instances ×
DP128 (512 decode ranks). The decode ranks start with a random load snapshot (fed as `LoadReported`),
each prefill instance gets one step (staggered 5 ms apart), then 1,000 chat-like requests arrive while
every instance is busy, so they are buffered. The timed call is `sched.handle(None, t)` at the moment
instance 0 becomes due: pick it, water-fill its 32 ranks from the 1,000-request buffer, place the
released requests on the 512 decode ranks. Every repetition runs on a fresh deep copy of the prepared
scheduler, copied outside the timed region.

The baseline is `least_load`: 1,000 `RequestArrived` events, each dispatched at once.

Run: `python -m sbs.bench.core_speed [--reps N] [--trace PATH] [--json OUT]`; `--json` writes the round's
median, p90 and CPU median (ms), the target and whether both medians meet it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import LoadReported, RequestArrived
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Dispatch, InstanceSpec, RankLoad, Request, Role
from sbs.settings import scheduling
from sbs.sim.costmodel import CostModel

TRACE = "../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv"
PREFILL_INSTANCES, PREFILL_DP, CHUNK = 16, 32, 16_384
DECODE_INSTANCES, DECODE_DP, DECODE_MAX_RUNNING = 4, 128, 256
BUFFERED = 1_000
PRIME_TOKENS = 1_000
PRIME_GAP_S = 0.005
TARGET_MS = 1.0


def _lengths(path: str, n: int, seed: int) -> tuple[list[int], list[int], str]:
    """n (prompt, output) pairs sampled from the Azure conversation trace, or lognormal if it is missing."""
    rng = np.random.default_rng(seed)
    if os.path.exists(path):
        from sbs.sim.loaders import load_trace

        reqs = load_trace(path).requests
        pick = rng.choice(len(reqs), size=n, replace=False)
        return (
            [reqs[i].prompt_tokens for i in pick],
            [reqs[i].output_tokens for i in pick],
            f"Azure conv trace ({os.path.basename(path)})",
        )
    sigma = 1.0
    mu = np.log(1200.0) - sigma * sigma / 2
    prompts = np.clip(rng.lognormal(mu, sigma, n), 1, 14_000).astype(int)
    outputs = np.clip(rng.lognormal(np.log(200.0), 0.8, n), 1, 2_000).astype(int)
    return prompts.tolist(), outputs.tolist(), "lognormal (mean ~1.2k, max 14k; trace file missing)"


def _cluster(cost: CostModel) -> tuple[list[InstanceSpec], list[InstanceSpec], PrefillCapacityModel]:
    kv_p = cost.kv_capacity_tokens_per_rank(ep_size=PREFILL_DP)
    kv_d = cost.kv_capacity_tokens_per_rank(ep_size=DECODE_DP)
    prefill = [
        InstanceSpec(f"prefill-{i}", Role.PREFILL, PREFILL_DP, CHUNK, kv_p) for i in range(PREFILL_INSTANCES)
    ]
    decode = [
        InstanceSpec(f"decode-{i}", Role.DECODE, DECODE_DP, CHUNK, kv_d, DECODE_MAX_RUNNING)
        for i in range(DECODE_INSTANCES)
    ]
    return prefill, decode, PrefillCapacityModel(*cost.prefill_coefficients(ep_size=PREFILL_DP))


def _decode_snapshots(kv_capacity: int, seed: int) -> list[LoadReported]:
    """A random, mildly skewed decode load (a few heavy ranks), as tier-3 snapshots at t = 0."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(DECODE_INSTANCES):
        batch = rng.integers(20, 60, DECODE_DP)
        used = (batch * rng.uniform(1_000, 3_000, DECODE_DP)).astype(int)
        heavy = rng.choice(DECODE_DP, 4, replace=False)
        used[heavy] = np.minimum(used[heavy] * 3, kv_capacity // 2)
        loads = tuple(RankLoad(r, int(batch[r]), 0, 0, int(used[r]), kv_capacity) for r in range(DECODE_DP))
        out.append(LoadReported(Role.DECODE, i, 0.0, loads))
    return out


def prepare_sbs(prompts: Sequence[int], outputs: Sequence[int]) -> tuple[Scheduler, float]:
    """An SBS scheduler with 1,000 buffered requests and every prefill instance busy; the due time."""
    cost = CostModel()
    prefill, decode, capacity = _cluster(cost)
    settings = scheduling.SchedulerSettings(policy=scheduling.policy_settings("sbs"))
    sched = Scheduler(prefill, decode, settings=settings, capacity=capacity)
    for ev in _decode_snapshots(decode[0].kv_capacity_tokens, 0):
        sched.handle(ev, 0.0)
    rid = 0
    for i in range(PREFILL_INSTANCES):  # one step per instance, staggered: each goes out by bypass
        t = i * PRIME_GAP_S
        out = sched.handle(RequestArrived(Request(rid, t, PRIME_TOKENS, 100)), t)
        assert len(out) == 1 and isinstance(out[0], Dispatch) and out[0].prefill_instance == i, out
        rid += 1
    due = sched.next_deadline()
    assert due is None  # nothing buffered yet
    t0 = PREFILL_INSTANCES * PRIME_GAP_S
    first_due = min(st.busy_until_s for st in sched.instances) - settings.policy.batching.lead_s
    assert first_due > t0, "priming steps end before the buffer fills; lower PRIME_GAP_S"
    span = first_due - t0
    for k, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        t = t0 + span * k / (2 * len(prompts))
        out = sched.handle(RequestArrived(Request(rid, t, p, o)), t)
        assert not out, f"request {rid} was not buffered: {out[:1]}"
        rid += 1
    due = sched.next_deadline()
    assert due is not None and abs(due - first_due) < 1e-12, (due, first_due)
    return sched, due


def prepare_least_load(prompts: Sequence[int], outputs: Sequence[int]) -> tuple[Scheduler, list[Request]]:
    """A least-load scheduler on the same cluster and snapshot, and the 1,000 requests to dispatch."""
    cost = CostModel()
    prefill, decode, capacity = _cluster(cost)
    settings = scheduling.SchedulerSettings(policy=scheduling.policy_settings("least_load"))
    sched = Scheduler(prefill, decode, settings=settings, capacity=capacity)
    for ev in _decode_snapshots(decode[0].kv_capacity_tokens, 0):
        sched.handle(ev, 0.0)
    pairs = enumerate(zip(prompts, outputs, strict=True))
    reqs = [Request(k, 0.001 * k / len(prompts), p, o) for k, (p, o) in pairs]
    return sched, reqs


def _time(
    setup: Callable[[], object], body: Callable[[object], object], reps: int
) -> tuple[list[float], list[float]]:
    """Per-repetition (wall, thread CPU) seconds of `body(setup())`, the setup untimed, GC paused.

    CPU time is printed beside wall time because on a shared machine the wall figure includes time
    the process spent descheduled.
    """
    wall, cpu = [], []
    for _ in range(reps):
        arg = setup()
        gc.disable()
        c = time.thread_time()
        t = time.perf_counter()
        body(arg)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        gc.enable()
    return wall, cpu


def _p90(ms: list[float]) -> float:
    """The 90th percentile of ascending samples (nearest rank)."""
    return ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]


def _summary(samples: list[float]) -> str:
    ms = sorted(s * 1e3 for s in samples)
    median, p90 = statistics.median(ms), _p90(ms)
    return f"median {median:8.3f} ms   p90 {p90:8.3f} ms   min {ms[0]:8.3f} ms  (n={len(ms)})"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="repetitions (>= 50)")
    ap.add_argument("--trace", default=TRACE, help="Azure conv CSV for the prompt sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="write the round's timing summary to this JSON file")
    args = ap.parse_args(argv)
    reps = max(50, args.reps)
    prompts, outputs, source = _lengths(args.trace, BUFFERED, args.seed)

    sched, due = prepare_sbs(prompts, outputs)
    probe = copy.deepcopy(sched)
    decisions = probe.handle(None, due)
    released = [d for d in decisions if isinstance(d, Dispatch)]
    assert released and {d.prefill_instance for d in released} == {0}, "the round is not one release"
    tokens = sum(prompts[d.rid - PREFILL_INSTANCES] for d in released)
    p_ranks = len({d.prefill_rank for d in released})
    d_ranks = len({(d.decode_instance, d.decode_rank) for d in released})
    print(f"prompts: {source}; {BUFFERED} buffered, mean {statistics.mean(prompts):.0f}, max {max(prompts)}")
    print(
        f"cluster: {PREFILL_INSTANCES}x DP{PREFILL_DP} prefill (chunk {CHUNK}), "
        f"{DECODE_INSTANCES}x DP{DECODE_DP} decode (max_running {DECODE_MAX_RUNNING})"
    )
    print(
        f"round at t={due:.4f} s: instance 0 due; released {len(released)} requests ({tokens} prompt tokens) "
        f"onto {p_ranks}/{PREFILL_DP} prefill ranks and {d_ranks} decode ranks; "
        f"{len(probe.buffer)} stay buffered; masked decode candidates {probe.stats.masked_ranks}"
    )

    def round_(s: object) -> object:
        return s.handle(None, due)  # type: ignore[attr-defined]

    sbs, sbs_cpu = _time(lambda: copy.deepcopy(sched), round_, reps)
    label = f"sbs round (1 release, {len(released)} requests)"
    print(f"{label:44} wall {_summary(sbs)}")
    print(f"{'':44} CPU  {_summary(sbs_cpu)}")

    ll, reqs = prepare_least_load(prompts, outputs)
    events = [RequestArrived(r) for r in reqs]

    def immediate(s: object) -> object:
        h = s.handle  # type: ignore[attr-defined]
        for ev in events:
            h(ev, ev.request.arrival_s)
        return None

    base, base_cpu = _time(lambda: copy.deepcopy(ll), immediate, max(50, reps // 4))
    label = f"least_load x{BUFFERED} (immediate dispatch)"
    print(f"{label:44} wall {_summary(base)}")
    print(f"{'':44} CPU  {_summary(base_cpu)}")
    wall_ms = statistics.median(sbs) * 1e3
    cpu_ms = statistics.median(sbs_cpu) * 1e3
    met = max(wall_ms, cpu_ms) <= TARGET_MS  # both medians
    verdict = "met" if met else "not met"
    print(f"target {TARGET_MS:.1f} ms: {verdict} (median round {wall_ms:.3f} ms wall, {cpu_ms:.3f} ms CPU)")
    if args.json:
        doc = {
            "median_ms": wall_ms,
            "p90_ms": _p90(sorted(s * 1e3 for s in sbs)),
            "cpu_median_ms": cpu_ms,
            "cpu_p90_ms": _p90(sorted(s * 1e3 for s in sbs_cpu)),
            "target_ms": TARGET_MS,
            "met": met,
            "reps": reps,
            "released": len(released),
            "baseline_median_ms": statistics.median(base) * 1e3,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
