"""Discrete-event simulation of a P/D-disaggregated DP+EP cluster driving the real scheduling core.

The loop pops (time, seq) from an `EventHeap`, which owns the sequence counter, so ties break in the
order events were created and a run is reproducible. Arrivals are not in the heap: they are merged
from the trace, ahead of any heap event at the same time (as if pushed before all of them). The
scheduler under test is the same `Scheduler` the live service runs, fed the same events
(`RequestArrived`, `StepCompleted`, `LoadReported`, `RequestFinished`) with report delays, and woken at
its own `next_deadline()`; with `scheduler_replicas` > 1 there is one per replica (`sim/replicas.py`).
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sbs.scheduler.core.capacity import PrefillCapacityModel
from sbs.scheduler.core.events import LoadReported, RequestFinished, StepCompleted
from sbs.scheduler.core.policies.oracle import Clairvoyant, Foresight
from sbs.scheduler.core.scheduler import Scheduler
from sbs.scheduler.core.step_report import step_start
from sbs.scheduler.core.types import Decision, Dispatch, InstanceSpec, Reject, Role
from sbs.settings import scheduling
from sbs.settings.service import EnginesSettings
from sbs.sim.cluster import ClusterConfig
from sbs.sim.core_loop import DISPATCH, FIRST_FREE_KIND, TIMER
from sbs.sim.costmodel import CostModel
from sbs.sim.engine import DecodeEngine, DecodeJob, PrefillEngine, PrefillJob
from sbs.sim.engine_priority import PriorityOrder
from sbs.sim.errors import ClusterConfigError
from sbs.sim.prefill_delayer import IDLE_PASS_MS, DelayerGate
from sbs.sim.recorder import Recorder
from sbs.sim.replicas import Replicas
from sbs.sim.trace import Trace

_P_END, _KV, _D_END, _REPORT, _POLL, _PASS, _ADMIT, _START = range(FIRST_FREE_KIND, FIRST_FREE_KIND + 8)


@dataclass(frozen=True)
class SimResult:
    policy: str
    recorder: Recorder
    events: int
    scheduler_stats: dict[str, int]


class Simulation:
    """One run: a trace, a cluster, a policy."""

    def __init__(
        self,
        trace: Trace,
        cluster: ClusterConfig,
        policy: scheduling.PolicySettings,
        *,
        cost: CostModel | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.trace = trace
        self.cluster = cluster
        self.cost = cost or cluster.cost_model()
        self.policy = policy
        self.progress = progress
        kv_p = self.cost.kv_capacity_tokens_per_rank(ep_size=cluster.prefill.dp_size)
        kv_d = self.cost.kv_capacity_tokens_per_rank(ep_size=cluster.decode.dp_size)
        for role, rc, kv in (("prefill", cluster.prefill, kv_p), ("decode", cluster.decode, kv_d)):
            if (rc.kv_capacity_tokens or kv) <= 0:
                raise ClusterConfigError(
                    f"cluster {cluster.name!r}: field '{role}.nodes_per_instance' = {rc.nodes_per_instance} "
                    f"gives EP{rc.dp_size}, where the weights leave no GPU memory for KV; use more nodes"
                )
        self.prefill_specs = cluster.specs(Role.PREFILL, kv_p)
        self.decode_specs = cluster.specs(Role.DECODE, kv_d)
        longest = max((r.prompt_tokens + r.output_tokens for r in trace.requests), default=0)
        cap = self.decode_specs[0].kv_capacity_tokens
        if longest > cap:
            raise ClusterConfigError(
                f"cluster {cluster.name!r}: a decode rank holds {cap} KV tokens but trace {trace.name!r} "
                f"has a request needing {longest} (prompt + output); use a larger decode KV capacity"
            )
        fixed, per_token, per_pair = self.cost.prefill_coefficients(ep_size=cluster.prefill.dp_size)
        self.capacity = PrefillCapacityModel(fixed, per_token, per_pair)
        self.replicas = Replicas(
            self._make_scheduler,
            self.prefill_specs,
            count=cluster.scheduler_replicas,
            spread=cluster.replica_spread,
            transit_s=cluster.network_s,
            seed=cluster.seed,
            requests=len(trace.requests),
        )
        self.scheduler = self.replicas.cores[0].scheduler
        """The (first replica's) scheduling core."""
        self.oracle = self._attach_oracle(policy, cluster, trace)
        """The `oracle` policy, fed the future and exact step times; None for any other policy."""
        self.report_delay_s = 0.0 if self.oracle is not None else cluster.report_delay_s
        """The oracle hears every report at once."""
        balance = (
            policy.engine_balance if isinstance(policy, scheduling.SglangPolicy) else cluster.engine_balance
        )
        prio = (  # `+prio`: every engine runs --enable-priority-scheduling (default order)
            PriorityOrder()
            if isinstance(policy, scheduling.ImmediatePolicy) and policy.engine_priority
            else None
        )
        self.prefill = [
            PrefillEngine(
                s,
                self.cost,
                balance=balance,
                block_tokens=trace.block_tokens,
                prefix_cache=cluster.prefix_cache,
                jitter_cv=cluster.jitter_cv,
                rng=random.Random(cluster.seed * 1000 + i),
                priority=prio,
            )
            for i, s in enumerate(self.prefill_specs)
        ]
        self.decode = [
            DecodeEngine(
                s,
                self.cost,
                jitter_cv=cluster.jitter_cv,
                rng=random.Random(cluster.seed * 1000 + 500 + i),
                priority=prio,
            )
            for i, s in enumerate(self.decode_specs)
        ]
        self.rec = Recorder(len(trace.requests))
        self.rec.prompt[:] = [r.prompt_tokens for r in trace.requests]
        self.rec.output[:] = [r.output_tokens for r in trace.requests]
        self.events = self.replicas.events
        delayer = isinstance(policy, scheduling.ImmediatePolicy) and policy.engine_delayer
        self.gates = [
            DelayerGate(s.dp_size, max_running_per_rank=s.max_running_requests) if delayer else None
            for s in self.prefill_specs
        ]
        """`+delayer`: each prefill instance's SGLang prefill delayer (a held pass re-checks a pass later)."""
        self._in_pass = [False] * len(self.prefill_specs)
        self._decode_step_end = [0.0] * len(self.decode_specs)
        """End of each decode instance's current (or last) step: its next pre-allocation."""
        self._handshake_rng = random.Random(cluster.seed * 1000 + 999)
        self._merge_s = EnginesSettings().step_merge_s
        """The service's window for answers of one step (`engines.step_merge_s`)."""
        self._bootstrapping = [0] * len(self.prefill_specs)
        """Per prefill instance: requests dispatched to it and still in the PD handshake."""
        self._reported_end = [-math.inf] * len(self.prefill_specs)
        """End of each prefill instance's latest step the scheduler heard of (`step_reports` answered)."""
        self._admission: dict[int, float] = {}
        """rid → its dispatch → schedulable lag, until its prefill completes (with a handshake model)."""
        self._decode_of: dict[int, tuple[int, int, int | None]] = {}
        """rid → (decode instance, rank, priority) while its prefill and KV transfer run."""
        self._requests = trace.requests
        self._open = 0
        self._arrived = 0

    def _attach_oracle(
        self, policy: scheduling.PolicySettings, cluster: ClusterConfig, trace: Trace
    ) -> Clairvoyant | None:
        """The clairvoyant policy's hooks: the arrivals of its horizon and the true dispatch transit."""
        if not isinstance(policy, scheduling.OraclePolicy):
            return None
        if cluster.scheduler_replicas != 1:
            raise ClusterConfigError(
                f"cluster {cluster.name!r}: the oracle policy is one clairvoyant scheduler; "
                f"scheduler_replicas must be 1, got {cluster.scheduler_replicas}"
            )
        oracle = self.scheduler.policy
        assert isinstance(oracle, Clairvoyant)
        oracle.attach(Foresight(trace.requests, policy.horizon_s), cluster.network_s)
        return oracle

    def _make_scheduler(self, prefill: Sequence[InstanceSpec], replica: int) -> Scheduler:
        return Scheduler(
            prefill,
            self.decode_specs,
            settings=scheduling.SchedulerSettings(policy=self.policy, seed=self.cluster.seed + replica),
            capacity=self.capacity,
            block_tokens=self.trace.block_tokens,
        )

    def run(self) -> SimResult:
        """Simulate the whole trace. The cyclic garbage collector is paused meanwhile: the loop makes no
        reference cycles to speak of, and its full collections, each scanning every live request and
        event, would take ~15 % of a large run."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if paused:
                gc.enable()

    def _run(self) -> SimResult:
        requests = self._requests
        n = len(requests)
        self.events.push(0.0, _POLL)
        events = 0
        report_every = max(1, n // 100)
        heap = self.events.heap
        pop = heapq.heappop
        replicas = self.replicas
        rec = self.rec
        record = self._record
        nxt = 0
        next_arrival = requests[0].arrival_s if n else math.inf
        while True:
            events += 1
            if next_arrival <= (heap[0][0] if heap else math.inf):  # arrivals win ties (pushed first)
                if nxt == n:  # no arrival left and an empty heap
                    events -= 1
                    break
                req = requests[nxt]
                t = next_arrival
                nxt += 1
                next_arrival = requests[nxt].arrival_s if nxt < n else math.inf
                rec.arrival[req.rid] = t
                self._open += 1
                self._arrived += 1
                if self.progress and self._arrived % report_every == 0:
                    self.progress(self._arrived / n)
                record(replicas.arrive(req, t), t)
                continue
            t, _, kind, payload = pop(heap)
            if kind == DISPATCH:
                self._on_dispatch(payload, t)  # type: ignore[arg-type]
            elif kind == _P_END:
                self._on_prefill_end(payload, t)  # type: ignore[arg-type]
            elif kind == _KV:
                self._on_kv(payload, t)  # type: ignore[arg-type]
            elif kind == _D_END:
                self._on_decode_end(payload, t)  # type: ignore[arg-type]
            elif kind == TIMER:
                record(replicas.on_timer(payload, t), t)
            elif kind == _REPORT:
                for ev in payload:  # type: ignore[attr-defined]
                    record(replicas.deliver(ev, t), t)
            elif kind == _POLL:
                self._on_poll(t)
            elif kind == _PASS:
                self._in_pass[payload] = False  # type: ignore[index]
                self._start_prefill(payload, t)  # type: ignore[arg-type]
            elif kind == _ADMIT:
                self._admit(payload, t)  # type: ignore[arg-type]
            elif kind == _START:
                self._start_if_idle(payload, t)  # type: ignore[arg-type]
        if self.progress:
            self.progress(1.0)
        return SimResult(self.policy.name, self.rec, events, replicas.stats())

    def _record(self, decisions: list[Decision], t: float) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                self.rec.dispatched[d.rid] = t
            elif isinstance(d, Reject):
                self._open -= 1

    def _on_dispatch(self, batch: list[Dispatch], t: float) -> None:
        handshake = self.cluster.bootstrap_s > 0 or self.cluster.prealloc_per_decode_step
        for d in batch:
            req = self._requests[d.rid]
            dec = self.decode[d.decode_instance]
            rank = d.decode_rank if d.decode_rank is not None else dec.pick_rank()
            dec.reserve(rank, req.prompt_tokens + 1)
            self._decode_of[d.rid] = (d.decode_instance, rank, d.priority)
            if handshake:
                self._bootstrapping[d.prefill_instance] += 1
                self.events.push(self._admitted_at(d.decode_instance, t), _ADMIT, d)
            else:
                self._submit(d)
        if not handshake:
            self._start_if_idle(batch[0].prefill_instance, t)

    def _admitted_at(self, decode: int, t: float) -> float:
        """When a request that reached its prefill at `t` has bootstrapped."""
        if self.cluster.prealloc_per_decode_step:
            t = max(t, self._decode_step_end[decode])
        if self.cluster.bootstrap_spread == "exponential" and self.cluster.bootstrap_s > 0:
            return t + self._handshake_rng.expovariate(1.0 / self.cluster.bootstrap_s)
        return t + self.cluster.bootstrap_s

    def _admit(self, d: Dispatch, t: float) -> None:
        self._admission[d.rid] = t - self.rec.dispatched[d.rid]
        self._bootstrapping[d.prefill_instance] -= 1
        self._submit(d)
        self.events.push(t, _START, d.prefill_instance)  # after the admissions of this same instant

    def _submit(self, d: Dispatch) -> None:
        req = self._requests[d.rid]
        self.prefill[d.prefill_instance].submit(
            PrefillJob(req.rid, req.prompt_tokens, req.hash_ids, priority=d.priority), d.prefill_rank
        )

    def _start_if_idle(self, instance: int, t: float) -> None:
        if not self.prefill[instance].busy() and not self._in_pass[instance]:
            self._start_prefill(instance, t)

    def _start_prefill(self, i: int, t: float) -> None:
        eng, gate = self.prefill[i], self.gates[i]
        dur = eng.start_step(t) if gate is None else gate.start_step(eng, t)  # PD prefill: no decode batch
        if dur > 0:
            self.events.push(t + dur, _P_END, i)
            if self.oracle is not None:  # it knows the step's true duration at once
                self.oracle.step_started(i, t, dur)
                self._record(self.replicas.cores[0].handle(None, t), t)
        elif gate is not None and eng.has_work():  # held: SGLang's loop passes again
            self._in_pass[i] = True
            self.events.push(t + IDLE_PASS_MS / 1e3, _PASS, i)

    def _on_prefill_end(self, i: int, t: float) -> None:
        eng = self.prefill[i]
        rec = eng.finish_step()
        self.rec.on_prefill_step(rec.rank_tokens, eng.spec.chunk_tokens, rec.duration_s, rec.balance)
        for job in rec.finished:
            self.rec.cached[job.rid] = job.cached
            self.events.push(t + self.cost.kv_transfer_s(job.prompt_tokens), _KV, job.rid)
        queued = eng.has_work()
        lag = max((self._admission.pop(j.rid, 0.0) for j in rec.finished), default=0.0)
        rids = tuple(j.rid for j in rec.finished)
        if self.oracle is not None or self.cluster.step_reports == "every":
            report = StepCompleted(i, rec.started_s, rec.duration_s, rids, queued, admission_s=lag)
            if self.oracle is not None:  # heard before the next step starts
                self._record(self.replicas.deliver(report, t), t)
            else:
                self.events.push(t + self.report_delay_s, _REPORT, (report,))
        elif rids:
            self._report_answers(i, t, rec.finished, queued, lag)
        if queued:
            self._start_prefill(i, t)

    def _report_answers(self, i: int, t: float, finished: list[PrefillJob], queued: bool, lag: float) -> None:
        """What the service learns of a step from its answers (`step_reports` answered). Each answer
        comes when its KV transfer is done; those within `step_merge_s` of the first make the step's
        report, later ones a report of the same end with their requests only. Until they come, their
        requests count as sent and not answered, i.e. as more work; so do requests in their handshake.
        The start is `step_report.step_start`'s, from the entry stamps."""
        chunk = self.prefill_specs[i].chunk_tokens  # a longer prompt entered in an earlier step
        entry = max((j.entered_s for j in finished if j.prompt_tokens <= chunk), default=-math.inf)
        start, timed = step_start(entry, self._reported_end[i], t)
        self._reported_end[i] = t
        arrive = sorted((self.cost.kv_transfer_s(j.prompt_tokens), j.rid) for j in finished)
        first = [rid for kv, rid in arrive if kv <= arrive[0][0] + self._merge_s]
        rest = arrive[len(first) :]
        queued = queued or bool(rest) or self._bootstrapping[i] > 0
        delay = t + self.report_delay_s
        report = StepCompleted(i, start, t - start, tuple(first), queued, admission_s=lag, timed=timed)
        self.events.push(delay + arrive[0][0], _REPORT, (report,))
        for kv, rid in rest:
            late = StepCompleted(i, t - 1e-6, 1e-6, (rid,), queued, timed=False)
            self.events.push(delay + kv, _REPORT, (late,))

    def _on_kv(self, rid: int, t: float) -> None:
        req = self._requests[rid]
        inst, rank, priority = self._decode_of.pop(rid)
        dec = self.decode[inst]
        dec.add(DecodeJob(rid, rank, req.prompt_tokens + 1, max(1, req.output_tokens - 1), priority=priority))
        if not dec.busy():
            self._start_decode(inst, t)

    def _start_decode(self, i: int, t: float) -> None:
        dur = self.decode[i].start_step(t)
        if dur > 0:
            self.events.push(t + dur, _D_END, i)
            self._decode_step_end[i] = t + dur

    def _on_decode_end(self, i: int, t: float) -> None:
        dec = self.decode[i]
        rec = dec.finish_step()
        self.rec.on_decode_step(rec.duration_s, rec.batch, rec.max_rank_batch, dec.spec.dp_size)
        for rid in rec.first_token:
            self.rec.first_token[rid] = t
        if rec.finished:
            for rid in rec.finished:
                self.rec.finished[rid] = t
            self._open -= len(rec.finished)
            reports = tuple(RequestFinished(rid, t) for rid in rec.finished)
            self.events.push(t + self.report_delay_s, _REPORT, reports)
        if dec.has_work():
            self._start_decode(i, t)

    def _on_poll(self, t: float) -> None:
        delay = self.report_delay_s
        reports = [LoadReported(Role.PREFILL, i, t, e.loads()) for i, e in enumerate(self.prefill)]
        reports += [LoadReported(Role.DECODE, i, t, e.loads()) for i, e in enumerate(self.decode)]
        self.events.push(t + delay, _REPORT, tuple(reports))
        if self._open > 0 or self._arrived < len(self._requests):
            self.events.push(t + self.cluster.loads_period_s, _POLL)
