"""The faults: each scenario's `inject(ctx)` runs beside the load (`runner.run`).

- prefill-crash, decode-crash (engine crash): SIGKILL a group leader of the role every `kill_every_s`;
- decode-hang (hang): SIGSTOP a decode leader for `hang_s`, then SIGCONT;
- prefill-slow (slowness): a third prefill group whose engine runs 3× slower joins, then leaves;
- operator-kills (control plane): SIGKILL the operator pod `operator_kills` times while a second
  deployment is created, scaled and rolled;
- apiserver-restart, etcd-restart (control plane): restart the component, then scale: the operator's
  and the scheduler's watches must carry the change;
- scheduler-loss (scheduler loss): SIGKILL the scheduler pod;
- node-loss (node loss): a decode group's node dies (its kubelet, its processes) and goes NotReady.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import socket
import threading
import time
from typing import Any

from sbs.bench.chaos.cluster import OPERATOR_LABELS, OPERATOR_NS, Shape, Stack, pod_ready
from sbs.bench.chaos.runner import (
    Context,
    engine_in_flight,
    engine_loads,
    engine_served,
    in_flight,
    in_flight_across,
)
from sbs.kube import labels

TARGET_RECOVERY_S = 30.0


def leader(stack: Stack, role: str, index: int, *, name: str | None = None) -> dict[str, Any] | None:
    """The Ready leader pod of group `index` of `role` (of deployment `name`, default the stack's)."""
    sel = {**labels.engine_selector(name or stack.name), labels.ROLE: role, labels.LEADER: "true",
           labels.GROUP: str(index)}  # fmt: skip
    ready = [p for p in stack.pods(labels.selector_string(sel)) if pod_ready(p)]
    return ready[0] if ready else None


def _wait_replaced(stack: Stack, role: str, index: int, uid: str, timeout_s: float = 120.0) -> float:
    """Seconds until group `index` of `role` has a Ready leader other than pod `uid` (inf: never)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        p = leader(stack, role, index)
        if p is not None and p["metadata"]["uid"] != uid:
            return time.monotonic() - t0
        time.sleep(0.25)
    return float("inf")


def _recovery_target(ctx: Context, what: str, times: list[float], limit: float = TARGET_RECOVERY_S) -> None:
    worst = max(times, default=0.0)
    shown = ", ".join("never" if t == float("inf") else f"{t:.1f}" for t in times)
    ctx.target(f"{what} <= {limit:g} s", worst <= limit, f"max {worst:.1f} s ({shown})")


@dataclasses.dataclass
class EngineCrash:
    """SIGKILL a leader of `role` every `kill_every_s`, groups in turn."""

    role: str
    kind: str = "engine crash"

    @property
    def name(self) -> str:
        return f"{self.role}-crash"

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        groups = s.shape.prefill_groups if self.role == "prefill" else s.shape.decode_groups
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        times: list[float] = []
        watchers = []
        kills = max(1, int(t.fault_s // t.kill_every_s))
        for k in range(kills):
            ctx.sleep_until(t.warmup_s + k * t.kill_every_s)
            index = k % groups
            pod = _wait_for(lambda i=index: leader(s, self.role, i), t.kill_every_s)
            if pod is None:
                ctx.notes.append(f"kill {k}: no Ready {self.role} leader of group {index} to kill")
                continue
            ctx.in_flight += in_flight_across(s, pod, lambda p=pod: s.signal_pod(p, signal.SIGKILL))
            w = threading.Thread(target=lambda i=index, u=pod["metadata"]["uid"]:
                                 times.append(_wait_replaced(s, self.role, i, u)))  # fmt: skip
            w.start()
            watchers.append(w)
        ctx.sleep_until(t.warmup_s + t.fault_s)
        ctx.fault_end = time.monotonic()
        for w in watchers:
            w.join()
        ctx.notes.append(f"{len(times)} {self.role} leaders killed")
        _recovery_target(ctx, "group recovery", times)


def _wait_for(probe: Any, timeout_s: float) -> Any:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        got = probe()
        if got:
            return got
        time.sleep(0.25)
    return None


@dataclasses.dataclass
class Hang:
    """SIGSTOP a decode leader for `hang_s`, then SIGCONT: its connections stay open meanwhile."""

    role: str = "decode"
    kind: str = "hang"

    @property
    def name(self) -> str:
        return f"{self.role}-hang"

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        pod = leader(s, self.role, 0)
        assert pod is not None, f"no Ready {self.role} leader to hang"
        ctx.sleep_until(t.warmup_s)
        served = engine_served(pod)
        ctx.fault_start = time.monotonic()
        s.signal_pod(pod, signal.SIGSTOP)
        try:
            ctx.sleep_until(t.warmup_s + t.hang_s)
        finally:
            s.signal_pod(pod, signal.SIGCONT)
        ctx.fault_end = time.monotonic()
        # On the hung engine: what it held when it stopped and what it was sent meanwhile, i.e. what
        # it finished or aborted since, plus what it still holds once it caught up.
        time.sleep(2.0)
        ctx.in_flight += max(engine_served(pod) - served + engine_in_flight(pod), in_flight(s, pod))


@dataclasses.dataclass
class Slow:
    """A prefill group 3× slower than its peers joins for the fault window: the scheduler must mark
    it suspect or feed it less than its share, never stall on it."""

    slowdown: float = 3.0
    name: str = "prefill-slow"
    kind: str = "slowness"

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        base = s.shape
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        slow_index = base.prefill_groups
        s.slow_groups[("prefill", slow_index)] = self.slowdown
        s.scale(dataclasses.replace(base, prefill_groups=base.prefill_groups + 1))
        slow = _wait_for(lambda: leader(s, "prefill", slow_index), 60)
        states: set[str] = set()
        start = {p["metadata"]["name"]: _prefill_tokens(p) for p in _leaders(s, "prefill")}
        while time.monotonic() < ctx.t0 + t.warmup_s + t.fault_s:
            states |= {e["state"] for e in s.engines() if slow and e["url"].startswith(_url(slow))}
            time.sleep(1.0)
        work = {p["metadata"]["name"]: _prefill_tokens(p) - start.get(p["metadata"]["name"], 0)
                for p in _leaders(s, "prefill")}  # fmt: skip
        s.scale(base)
        s.slow_groups.clear()
        ctx.fault_end = time.monotonic()
        total = sum(work.values()) or 1
        share = work.get(slow["metadata"]["name"], 0) / total if slow else float("nan")
        fair = 1 / (base.prefill_groups + 1)
        ctx.notes.append(f"slow engine states {sorted(states)}; its share of prefill tokens {share:.0%} "
                         f"(fair share {fair:.0%})")  # fmt: skip
        ctx.target("slow engine fed less than its share", slow is not None and share < fair,
                   f"{share:.0%} < {fair:.0%}")  # fmt: skip


def _leaders(s: Stack, role: str) -> list[dict[str, Any]]:
    return [p for p in s.pods(s.engine_selector(role, leader=True)) if pod_ready(p)]


def _url(pod: dict[str, Any]) -> str:
    return f"http://{pod['status']['podIP']}:"


def _prefill_tokens(pod: dict[str, Any]) -> int:
    return sum(int(x.get("total_prefill_uncached_tokens", 0)) for x in engine_loads(pod))


@dataclasses.dataclass
class OperatorKills:
    """SIGKILL the operator pod at random points while a second deployment is created, scaled and
    rolled; each time the operator must converge within 30 s, with no duplicate or orphaned group
    and no group restart (no engine failed)."""

    name: str = "operator-kills"
    kind: str = "control plane"
    seed: int = 13

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        rng = random.Random(self.seed)
        other = "chaos-b"
        steps = _steps(t.operator_kills)
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        times: list[float] = []
        for i, (what, shape, roll) in enumerate(steps):
            s.apply_other(other, shape, roll=roll, create=i == 0)
            time.sleep(rng.uniform(0.0, 3.0))
            op = s.operator_pod()
            if op is not None:
                s.signal_pod(op, signal.SIGKILL)
            t_kill = time.monotonic()
            _wait_for(lambda want=shape: s.converged(other, want), 120)
            times.append(time.monotonic() - t_kill)
            ctx.notes.append(f"{what}: converged {times[-1]:.1f} s after the kill")
        ctx.fault_end = time.monotonic()
        _recovery_target(ctx, "operator convergence", times)
        problems = s.group_problems(other, steps[-1][1])
        ctx.target("no duplicate, orphaned or restarted group", not problems, "; ".join(problems) or "none")
        s.delete_other(other)
        failed = [p for p in s.pods(OPERATOR_LABELS, OPERATOR_NS) if p["status"].get("phase") == "Failed"]
        ctx.notes.append(f"{len(failed)} operator pods Failed (killed), each replaced by the Deployment")


def _steps(n: int) -> list[tuple[str, Shape, int]]:
    """`n` changes of a small deployment: create, then a scale and a roll in turn (each a change)."""
    shapes = [(1, 2), (2, 2), (2, 1), (1, 1)]
    out, roll = [("create 1P+1D", Shape(prefill_groups=1, decode_groups=1), 0)], 0
    for i in range(1, n):
        if i % 2:
            p, d = shapes[(i // 2) % len(shapes)]
            out.append((f"scale to {p}P+{d}D", Shape(prefill_groups=p, decode_groups=d), roll))
        else:
            roll += 1
            out.append((f"roll #{roll}", out[-1][1], roll))
    return out


@dataclasses.dataclass
class Restart:
    """Restart a control-plane component; then changes must still reach the operator and the
    scheduler (their watches re-established): a decode scale-up served and converged in 30 s."""

    component: str
    kind: str = "control plane"

    @property
    def name(self) -> str:
        return f"{self.component.removeprefix('kube-')}-restart"

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        base = s.shape
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        down = s.plane.restart(self.component)
        ctx.notes.append(f"{self.component} back in {down:.1f} s")
        t1 = time.monotonic()
        s.scale(dataclasses.replace(base, decode_groups=base.decode_groups + 1), wait=False)
        seen = _wait_for(lambda: s.converged() and _decode_engines(s) == base.decode_groups + 1, 120)
        took = time.monotonic() - t1
        ctx.target("scale-up converged and discovered <= 30 s", bool(seen) and took <= TARGET_RECOVERY_S,
                   f"{took:.1f} s")  # fmt: skip
        s.scale(base)
        ctx.fault_end = time.monotonic()


def _decode_engines(s: Stack) -> int:
    return sum(1 for e in s.engines() if e["role"] == "decode" and e["state"] == "usable")


@dataclasses.dataclass
class NodeLoss:
    """The node under a decode group dies: the group must come back on a healthy node."""

    name: str = "node-loss"
    kind: str = "node loss"
    limit_s: float = 60.0

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        index = s.shape.decode_groups - 1
        pod = leader(s, "decode", index)
        assert pod is not None, "no Ready decode leader"
        node = pod["spec"]["nodeName"]
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        ctx.in_flight += in_flight_across(s, pod, lambda: s.lose_node(node))
        took = _wait_replaced(s, "decode", index, pod["metadata"]["uid"], 180)
        ctx.fault_end = time.monotonic()
        back = leader(s, "decode", index)
        elsewhere = back is not None and back["spec"]["nodeName"] != node
        ctx.notes.append(f"node {node} lost; group decode/{index} back in {took:.1f} s")
        ok = elsewhere and took <= self.limit_s
        ctx.target(f"group recreated on a healthy node <= {self.limit_s:g} s", ok, f"{took:.1f} s")
        s.restore_nodes()  # the node is repaired: later scenarios and tests find every node


@dataclasses.dataclass
class SchedulerLoss:
    """SIGKILL the scheduler pod: its Deployment brings it back; requests it held end at once."""

    name: str = "scheduler-loss"
    kind: str = "scheduler loss"

    def inject(self, ctx: Context) -> None:
        s, t = ctx.stack, ctx.timing
        (pod,) = s.ready_pods(s.namespace, s.scheduler_selector)
        url = f"http://{pod['status']['podIP']}:{s.shape.scheduler_port}"
        ctx.sleep_until(t.warmup_s)
        ctx.fault_start = time.monotonic()
        ctx.deaths.counted[url] = s.scheduler_in_flight(url)
        s.signal_pod(pod, signal.SIGKILL)
        ctx.deaths.at[url] = time.monotonic()
        ctx.deaths.closed[url] = _refused_at(pod["status"]["podIP"], s.shape.scheduler_port)
        uid = pod["metadata"]["uid"]
        back = _wait_for(lambda: [p for p in s.ready_pods(s.namespace, s.scheduler_selector)
                                  if p["metadata"]["uid"] != uid], 120)  # fmt: skip
        ctx.fault_end = time.monotonic()
        took = ctx.fault_end - ctx.fault_start
        ctx.target("scheduler back <= 30 s", bool(back) and took <= TARGET_RECOVERY_S, f"{took:.1f} s")


def _refused_at(host: str, port: int, timeout_s: float = 5.0) -> float:
    """When a connection to `host:port` is first refused (a killed process's socket closed), polled
    every 10 ms; the deadline's time if it never is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            return time.monotonic()
        time.sleep(0.01)
    return deadline


def matrix() -> list[Any]:
    """Every scenario, in the order `make chaos` runs them (node loss last: it keeps its node)."""
    return [EngineCrash("prefill"), EngineCrash("decode"), Hang(), Slow(), OperatorKills(),
            Restart("kube-apiserver"), Restart("etcd"), SchedulerLoss(), NodeLoss()]  # fmt: skip
