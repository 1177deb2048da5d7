"""Engine models: what one SGLang prefill or decode instance does with the requests it is sent.

These are the "truth" of the simulation (and, later, of the engine emulator): time comes from the
shared cost model; the scheduler under test only sees what the engines report.

Prefill instance (DP ranks in lockstep, SGLang chunked prefill with DP attention):
- each rank has its own FCFS waiting queue and radix cache; a request arriving without a rank is
  placed by the in-engine DP balancer (`round_robin`, `follow_bootstrap_room` ≈ random room,
  `total_requests`, `total_tokens`);
- a step starts as soon as any rank has work and the previous step is over; each rank takes up to
  `chunk_tokens` tokens from its queue head (the request in progress first, at most one chunked
  request per rank), recomputing only the uncached part of a prompt;
- the step lasts as long as the cost model says for the slowest rank, times a noise factor; requests
  that arrive mid-step wait for the next step (device-side queueing).
Decode instance: per-rank running batches; a request joins at a step boundary once its KV has arrived
(and KV capacity / the running cap allow), produces one token per step, and leaves after its last one.
With SGLang's priority scheduling on, both take waiting requests in priority order (`engine_priority`).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
from sbs.scheduler.core.types import InstanceSpec, RankLoad
from sbs.sim.costmodel import CostModel
from sbs.sim.engine_priority import PriorityOrder


@dataclass(slots=True)
class PrefillJob:
    rid: int
    prompt_tokens: int
    hash_ids: tuple[int, ...]
    remaining: int = -1
    """Uncached tokens still to compute; -1 until the job reaches the head of its rank's queue."""
    done: int = 0
    """Tokens already in KV (cache hit plus computed chunks): the prefix the next chunk attends to."""
    cached: int = 0
    priority: int | None = None
    """The request's SGLang `priority` (used only with priority scheduling on)."""
    entered_s: float = -1.0
    """Start of the step that ran its first chunk (SGLang's `forward_entry_time`); -1 before."""


@dataclass(slots=True)
class StepRecord:
    """What a finished step did, for metrics and reports."""

    started_s: float
    duration_s: float
    rank_tokens: list[int]
    finished: list[PrefillJob]
    balance: float = 1.0
    """The ranks' compute over the slowest rank's (`CostModel.prefill_step`)."""


class _RadixLRU:
    """A rank's prefix cache as an LRU of prompt blocks (a radix tree's effect on hit length)."""

    __slots__ = ("blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.capacity = capacity

    def match(self, hash_ids: tuple[int, ...]) -> int:
        n = 0
        for h in hash_ids:
            if h not in self.blocks:
                break
            self.blocks.move_to_end(h)
            n += 1
        return n

    def insert(self, hash_ids: tuple[int, ...]) -> None:
        for h in hash_ids:
            if h in self.blocks:
                self.blocks.move_to_end(h)
            else:
                self.blocks[h] = None
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


class PrefillEngine:
    """One prefill instance: `submit`, then `start_step`/`finish_step` driven by the caller's clock."""

    def __init__(
        self,
        spec: InstanceSpec,
        cost: CostModel,
        *,
        balance: str = "round_robin",
        block_tokens: int | None = None,
        prefix_cache: bool = True,
        jitter_cv: float = 0.0,
        rng: random.Random | None = None,
        priority: PriorityOrder | None = None,
    ) -> None:
        self.spec = spec
        self.cost = cost
        self.ep_size = spec.dp_size
        self.balance = balance
        self.priority = priority
        """SGLang `--enable-priority-scheduling` (None = off: FCFS queues)."""
        self.block_tokens = block_tokens or 0
        self.jitter_cv = jitter_cv
        self.rng = rng or random.Random(0)
        self.queues: list[deque[PrefillJob]] = [deque() for _ in range(spec.dp_size)]
        self.queued_tokens = [0] * spec.dp_size
        cap_blocks = spec.kv_capacity_tokens // self.block_tokens if self.block_tokens else 0
        self.caches = (
            [_RadixLRU(cap_blocks) for _ in range(spec.dp_size)] if prefix_cache and cap_blocks else None
        )
        self.running: StepRecord | None = None
        self._rr = 0
        self._step_jobs: list[list[tuple[PrefillJob, int]]] = []

    def busy(self) -> bool:
        return self.running is not None

    def has_work(self) -> bool:
        return any(self.queues)

    def submit(self, job: PrefillJob, rank: int | None) -> int:
        """Queue a job on `rank` (pinned) or on the rank the engine's DP balancer picks; returns it."""
        if rank is None:
            rank = self._balance(job)
        if self.priority is None:
            self.queues[rank].append(job)
        else:  # behind the started prompts (the chunked request is not in SGLang's waiting queue)
            self.priority.insert(self.queues[rank], job, lambda j: j.remaining >= 0)
        self.queued_tokens[rank] += job.prompt_tokens
        return rank

    def _balance(self, job: PrefillJob) -> int:
        n = self.spec.dp_size
        match self.balance:
            case "round_robin":
                self._rr += 1
                return (self._rr - 1) % n
            case "follow_bootstrap_room":
                return self.rng.randrange(n)
            case "total_requests":
                return min(range(n), key=lambda r: (len(self.queues[r]), r))
            case "total_tokens":
                return min(range(n), key=lambda r: (self.queued_tokens[r], r))
        raise ValueError(f"unknown engine balance method {self.balance!r}")

    def prefillable(self) -> list[bool]:
        """Per rank: a prompt is queued (a new request or the next chunk of a started one)."""
        return [bool(q) for q in self.queues]

    def start_step(self, now: float, *, allow_new: bool = True) -> float:
        """Form one lockstep step from the rank queues; returns its duration (0.0 = nothing to do).
        Without `allow_new` (the prefill delayer said wait) only started prompts continue."""
        chunk = self.spec.chunk_tokens
        tokens = [0] * self.spec.dp_size
        pairs = [0.0] * self.spec.dp_size
        step_jobs: list[list[tuple[PrefillJob, int]]] = []
        any_work = False
        for r, q in enumerate(self.queues):
            taken: list[tuple[PrefillJob, int]] = []
            budget = chunk
            for job in q:
                if budget <= 0:
                    break
                if job.remaining < 0:
                    if not allow_new:
                        break
                    self._start_job(job, r)
                    job.entered_s = now
                n = min(job.remaining, budget)
                taken.append((job, n))
                tokens[r] += n
                pairs[r] += float(job.done + n) ** 2 - float(job.done) ** 2
                budget -= n
            if taken:
                any_work = True
            step_jobs.append(taken)
        if not any_work:
            return 0.0
        duration, balance = self.cost.prefill_step(tokens, pairs, ep_size=self.ep_size)
        if self.jitter_cv > 0:
            duration *= max(0.5, self.rng.gauss(1.0, self.jitter_cv))
        self._step_jobs = step_jobs
        self.running = StepRecord(now, duration, tokens, [], balance)
        return duration

    def step_batches(self) -> list[int]:
        """Per rank: the prompts (or chunks) in the step just started."""
        return [len(taken) for taken in self._step_jobs]

    def _start_job(self, job: PrefillJob, rank: int) -> None:
        cached = 0
        if self.caches is not None and job.hash_ids:
            cached = min(self.caches[rank].match(job.hash_ids) * self.block_tokens, job.prompt_tokens - 1)
        job.cached = cached
        job.done = cached
        job.remaining = job.prompt_tokens - cached

    def finish_step(self) -> StepRecord:
        """Apply the running step: advance chunks, pop finished jobs, fill the radix caches."""
        rec = self.running
        assert rec is not None, "finish_step without a running step"
        for r, taken in enumerate(self._step_jobs):
            q = self.queues[r]
            for job, n in taken:
                job.remaining -= n
                job.done += n
                if job.remaining == 0:
                    q.popleft()
                    self.queued_tokens[r] -= job.prompt_tokens
                    rec.finished.append(job)
                    if self.caches is not None and job.hash_ids:
                        self.caches[r].insert(job.hash_ids)
        self._step_jobs = []
        self.running = None
        return rec

    def abort(self, rid: int) -> bool:
        """Drop a queued job (client gone). Call between steps only; False if `rid` is not queued."""
        assert self.running is None, "abort during a running step"
        for r, q in enumerate(self.queues):
            for job in q:
                if job.rid == rid:
                    q.remove(job)
                    self.queued_tokens[r] -= job.prompt_tokens
                    return True
        return False

    def flush_cache(self) -> None:
        """Empty every rank's prefix cache (SGLang `/flush_cache`)."""
        for cache in self.caches or ():
            cache.blocks.clear()

    def loads(self) -> tuple[RankLoad, ...]:
        """Per-rank snapshot in SGLang `/v1/loads` shape."""
        out = []
        for r, q in enumerate(self.queues):
            waiting = sum(j.remaining if j.remaining >= 0 else j.prompt_tokens for j in q)
            out.append(RankLoad(r, 0, len(q), waiting, 0, self.spec.kv_capacity_tokens))
        return tuple(out)


@dataclass(slots=True)
class DecodeJob:
    rid: int
    rank: int
    kv_tokens: int
    """KV held on arrival (prompt + the first token)."""
    steps: int
    """Decode steps the job runs (one token each)."""
    joined_step: int = -1
    priority: int | None = None
    """The request's SGLang `priority` (used only with priority scheduling on)."""


_rid = attrgetter("rid")


@dataclass(slots=True)
class DecodeStep:
    started_s: float
    duration_s: float
    batch: int
    max_rank_batch: int
    first_token: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)


class DecodeEngine:
    """One decode instance with per-rank batches; one token per running request per step."""

    def __init__(
        self,
        spec: InstanceSpec,
        cost: CostModel,
        *,
        jitter_cv: float = 0.0,
        rng: random.Random | None = None,
        priority: PriorityOrder | None = None,
    ) -> None:
        self.spec = spec
        self.cost = cost
        self.ep_size = spec.dp_size
        self.jitter_cv = jitter_cv
        self.priority = priority
        """SGLang `--enable-priority-scheduling` (None = off: FCFS admission)."""
        self.rng = rng or random.Random(0)
        n = spec.dp_size
        self.batch = np.zeros(n, dtype=np.int64)
        self.kv = np.zeros(n, dtype=np.int64)
        self.waiting: list[deque[DecodeJob]] = [deque() for _ in range(n)]
        self.n_waiting = 0
        self._waiting_ranks: set[int] = set()
        """Ranks whose waiting queue may be non-empty (admission visits only these)."""
        self.reserved = [0] * n
        """Requests dispatched here whose KV is still being prefilled/transferred (prealloc queue)."""
        self.reserved_kv = [0] * n
        self.step_index = 0
        self._finishing: dict[int, list[DecodeJob]] = {}
        """Running jobs by the index of their last step."""
        self._running = 0
        self.running: DecodeStep | None = None
        self._joined: list[DecodeJob] = []
        self._rr = 0

    def busy(self) -> bool:
        return self.running is not None

    def has_work(self) -> bool:
        return self._running > 0 or self.n_waiting > 0

    def pick_rank(self) -> int:
        """In-engine DP balancing for requests without a rank (SGLang decode default: round robin)."""
        self._rr += 1
        return (self._rr - 1) % self.spec.dp_size

    def reserve(self, rank: int, kv_tokens: int) -> None:
        """The request was dispatched here (prealloc queue) while its prefill runs."""
        self.reserved[rank] += 1
        self.reserved_kv[rank] += kv_tokens

    def add(self, job: DecodeJob) -> None:
        """The job's KV has arrived: it joins at the next step boundary when capacity allows."""
        self.reserved[job.rank] -= 1
        self.reserved_kv[job.rank] -= job.kv_tokens
        if self.priority is None:
            self.waiting[job.rank].append(job)
        else:
            self.priority.insert(self.waiting[job.rank], job)
        self._waiting_ranks.add(job.rank)
        self.n_waiting += 1

    def unreserve(self, rank: int, kv_tokens: int) -> None:
        """A reserved request left before its KV arrived (aborted, or its transfer failed)."""
        self.reserved[rank] -= 1
        self.reserved_kv[rank] -= kv_tokens

    def abort(self, rid: int) -> bool:
        """Drop a waiting or running job (client gone). Call between steps only; False if unknown."""
        assert self.running is None, "abort during a running step"
        for q in self.waiting:
            for job in q:
                if job.rid == rid:
                    q.remove(job)
                    self.n_waiting -= 1
                    return True
        for step, jobs in self._finishing.items():
            job = next((j for j in jobs if j.rid == rid), None)
            if job is not None:
                jobs.remove(job)
                if not jobs:
                    del self._finishing[step]
                self._running -= 1
                self.batch[job.rank] -= 1
                self.kv[job.rank] -= job.kv_tokens + (self.step_index - job.joined_step)
                return True
        return False

    def _admit(self) -> None:
        cap = self.spec.kv_capacity_tokens
        max_run = self.spec.max_running_requests
        waiting = self.waiting
        for r in sorted(self._waiting_ranks):
            q = waiting[r]
            while q:
                job = q[0]
                if max_run and self.batch[r] >= max_run:
                    break
                if self.kv[r] + job.kv_tokens + job.steps > cap and self.batch[r] > 0:
                    break
                q.popleft()
                self.n_waiting -= 1
                self.batch[r] += 1
                self.kv[r] += job.kv_tokens
                job.joined_step = self.step_index
                self._finishing.setdefault(self.step_index + job.steps - 1, []).append(job)
                self._running += 1
                self._joined.append(job)
            if not q:
                self._waiting_ranks.discard(r)

    def start_step(self, now: float) -> float:
        if self.n_waiting:
            self._admit()
        if not self._running:
            return 0.0
        duration = self.cost.decode_step_s(self.batch, self.kv, ep_size=self.ep_size)
        if self.jitter_cv > 0:
            duration *= max(0.5, self.rng.gauss(1.0, self.jitter_cv))
        total = int(self.batch.sum())
        self.running = DecodeStep(now, duration, total, int(self.batch.max()))
        self.running.first_token = [j.rid for j in self._joined]
        self._joined = []
        return duration

    def finish_step(self) -> DecodeStep:
        rec = self.running
        assert rec is not None, "finish_step without a running step"
        self.kv += self.batch
        jobs = self._finishing.pop(self.step_index, None)  # a job's last step is never in the past
        if jobs:
            jobs.sort(key=_rid)
            batch, kv = self.batch, self.kv
            for job in jobs:
                batch[job.rank] -= 1
                kv[job.rank] -= job.kv_tokens + job.steps
            rec.finished.extend(map(_rid, jobs))
            self._running -= len(jobs)
        self.step_index += 1
        self.running = None
        return rec

    def loads(self) -> tuple[RankLoad, ...]:
        cap = self.spec.kv_capacity_tokens
        batch, kv = self.batch.tolist(), self.kv.tolist()
        reserved, reserved_kv = self.reserved, self.reserved_kv
        return tuple(
            RankLoad(
                r,
                batch[r],
                len(q) + reserved[r],
                0,
                kv[r] + reserved_kv[r] + (sum(j.kv_tokens for j in q) if q else 0),
                cap,
            )
            for r, q in enumerate(self.waiting)
        )
