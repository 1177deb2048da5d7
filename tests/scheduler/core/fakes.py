"""Small factories and a `FakeCluster` that plays engines against the scheduling core.

`FakeCluster` is to `Scheduler` what h11's `ConnectionPair` is to a connection: it joins the core to
fake prefill engines over a fake link, so whole conversations (arrivals, releases, step reports,
deadlines) run without the simulator's engine models. The link is the simulator's own `CoreLoop`
(event order, one message per released batch, the wake-up timer). The engines step exactly as long
as the scheduler's own capacity model predicts, so any surprise comes from the scheduler's
bookkeeping, not from noise.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import Event, RequestArrived, RequestFinished, StepCompleted
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.types import Decision, Dispatch, InstanceSpec, Reject, Request, Role
from sbs.settings import scheduling
from sbs.sim.core_loop import DISPATCH, FIRST_FREE_KIND, TIMER, CoreLoop

CHUNK = 1000
RANKS = 4
CAPACITY = PrefillCapacityModel(fixed_s=0.01, per_token_s=1e-4, per_pair_s=0.0)
"""A full chunk (1000 tokens) costs 0.11 s; 500 tokens cost 0.06 s."""


def prefill_specs(instances: int = 2, *, ranks: int = RANKS, chunk: int = CHUNK) -> list[InstanceSpec]:
    return [InstanceSpec(f"prefill-{i}", Role.PREFILL, ranks, chunk, 100_000) for i in range(instances)]


def decode_specs(
    instances: int = 1, *, ranks: int = RANKS, kv: int = 10_000, max_running: int = 0
) -> list[InstanceSpec]:
    return [InstanceSpec(f"decode-{i}", Role.DECODE, ranks, 0, kv, max_running) for i in range(instances)]


def make_scheduler(
    policy: str = "sbs",
    *,
    prefill: int = 2,
    decode: int = 1,
    decode_kv: int = 10_000,
    seed: int = 0,
    transit_s: float = 0.005,
    **batching: float | bool,
) -> Scheduler:
    """A scheduler over `prefill` instances of 4 ranks × 1000 tokens and `decode` instances of 4 ranks."""
    pol = scheduling.policy_settings(policy)
    if batching:
        assert isinstance(pol, scheduling.SbsPolicy), "batching settings only apply to sbs"
        pol = scheduling.SbsPolicy(batching=scheduling.BatchingSettings(**batching))
    settings = scheduling.SchedulerSettings(
        policy=pol, sync=scheduling.SyncSettings(transit_s=transit_s), seed=seed
    )
    return Scheduler(
        prefill_specs(prefill), decode_specs(decode, kv=decode_kv), settings=settings, capacity=CAPACITY
    )


def req(rid: int, arrival_s: float, tokens: int = 500, output: int = 10) -> Request:
    return Request(rid, arrival_s, tokens, output)


def arrive(sched: Scheduler, rid: int, t: float, tokens: int = 500) -> list[Decision]:
    """A request arrives at `t` and is handled at `t`."""
    return sched.handle(RequestArrived(req(rid, t, tokens)), t)


def dispatches(decisions: Iterable[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


# ---------------------------------------------------------------------------------------------


@dataclass
class _Job:
    rid: int
    remaining: int
    done: int = 0


@dataclass
class _FakePrefill:
    """One prefill instance: per-rank FIFO queues, lockstep steps of at most `chunk` tokens per rank."""

    spec: InstanceSpec
    queues: list[deque[_Job]] = field(init=False)
    running: tuple[float, float, list[list[tuple[_Job, int]]]] | None = None
    rr: int = 0

    def __post_init__(self) -> None:
        self.queues = [deque() for _ in range(self.spec.dp_size)]

    def submit(self, rid: int, tokens: int, rank: int | None) -> None:
        if rank is None:  # the engine's own DP balancer
            rank = self.rr % self.spec.dp_size
            self.rr += 1
        self.queues[rank].append(_Job(rid, tokens))

    def start(self, now: float) -> float:
        tokens = [0] * self.spec.dp_size
        pairs = [0.0] * self.spec.dp_size
        taken: list[list[tuple[_Job, int]]] = []
        for r, q in enumerate(self.queues):
            budget = self.spec.chunk_tokens
            mine = []
            for job in q:
                if budget <= 0:
                    break
                n = min(job.remaining, budget)
                mine.append((job, n))
                tokens[r] += n
                pairs[r] += PrefillCapacityModel.pairs(job.done, n)
                budget -= n
            taken.append(mine)
        duration = CAPACITY.step_s(tokens, pairs)
        if duration <= 0:
            return 0.0
        self.running = (now, duration, taken)
        return duration

    def finish(self) -> tuple[float, float, list[int]]:
        assert self.running is not None
        started, duration, taken = self.running
        finished = []
        for r, mine in enumerate(taken):
            for job, n in mine:
                job.remaining -= n
                job.done += n
                if job.remaining == 0:
                    self.queues[r].popleft()
                    finished.append(job.rid)
        self.running = None
        return started, duration, finished

    def has_work(self) -> bool:
        return any(self.queues)


_ARRIVE, _SCRIPTED, _STEP_END, _REPORT = range(FIRST_FREE_KIND, FIRST_FREE_KIND + 4)


class FakeCluster:
    """Plays requests and scripted events into a scheduler, with fake prefill engines behind it.

    Dispatches reach their engine `transit_s` later; step completions and finished requests reach the
    scheduler `report_s` later; a request finishes decoding `decode_s` after its prefill. Instances in
    `silent` run their steps but never report them. The scheduler is woken at its `next_deadline()`.
    `log` holds every (time, decision); `checks` run after each `handle` with (now, decisions).
    """

    def __init__(
        self,
        sched: Scheduler,
        *,
        transit_s: float = 0.001,
        report_s: float = 0.001,
        decode_s: float = 0.05,
        silent: Iterable[int] = (),
        max_events: int = 100_000,
    ) -> None:
        self.sched = sched
        self.engines = [_FakePrefill(s) for s in sched.prefill_specs]
        self.report_s = report_s
        self.decode_s = decode_s
        self.silent = set(silent)
        self.max_events = max_events
        self.log: list[tuple[float, Decision]] = []
        self.checks: list = []
        self.loop = CoreLoop(sched, transit_s)
        self._requests: dict[int, Request] = {}

    def arrive(self, *requests: Request) -> FakeCluster:
        for r in requests:
            self._requests[r.rid] = r
            self.loop.push(r.arrival_s, _ARRIVE, r)
        return self

    def at(self, t: float, event: Event) -> FakeCluster:
        """Script an event into the scheduler at `t`."""
        self.loop.push(t, _SCRIPTED, event)
        return self

    def run(self, until: float = float("inf")) -> list[tuple[float, Decision]]:
        events = 0
        heap = self.loop.heap
        while heap and heap[0][0] <= until:
            t, _, kind, payload = heapq.heappop(heap)
            events += 1
            assert events <= self.max_events, f"FakeCluster: more than {self.max_events} events by t={t}"
            if kind == _ARRIVE:
                self._log(self.loop.handle(RequestArrived(payload), t), t)  # type: ignore[arg-type]
            elif kind in (_SCRIPTED, _REPORT):
                self._log(self.loop.handle(payload, t), t)  # type: ignore[arg-type]
            elif kind == TIMER:
                self._log(self.loop.on_timer(t), t)
            elif kind == DISPATCH:
                self._deliver(payload, t)  # type: ignore[arg-type]
            elif kind == _STEP_END:
                self._step_end(payload, t)  # type: ignore[arg-type]
        return self.log

    def _log(self, decisions: list[Decision], t: float) -> None:
        for check in self.checks:
            check(t, decisions)
        self.log.extend((t, d) for d in decisions)

    def _deliver(self, batch: list[Dispatch], t: float) -> None:
        eng = self.engines[batch[0].prefill_instance]
        for d in batch:
            eng.submit(d.rid, self._requests[d.rid].prompt_tokens, d.prefill_rank)
        if eng.running is None:
            self._start(batch[0].prefill_instance, t)

    def _start(self, i: int, t: float) -> None:
        dur = self.engines[i].start(t)
        if dur > 0:
            self.loop.push(t + dur, _STEP_END, i)

    def _step_end(self, i: int, t: float) -> None:
        eng = self.engines[i]
        started, duration, finished = eng.finish()
        queued = eng.has_work()
        if i not in self.silent:
            report = StepCompleted(i, started, duration, tuple(finished), queued)
            self.loop.push(t + self.report_s, _REPORT, report)
            for rid in finished:
                self.loop.push(t + self.decode_s, _REPORT, RequestFinished(rid))
        if queued:
            self._start(i, t)

    # -- views -----------------------------------------------------------------------------------

    def dispatched(self) -> list[Dispatch]:
        return [d for _, d in self.log if isinstance(d, Dispatch)]

    def rejected(self) -> list[Reject]:
        return [d for _, d in self.log if isinstance(d, Reject)]

    def dispatch_time(self, rid: int) -> float:
        return next(t for t, d in self.log if isinstance(d, Dispatch) and d.rid == rid)
