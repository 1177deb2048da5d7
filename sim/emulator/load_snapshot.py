"""`LoadBook`: one engine's per-rank load counters and the `/v1/loads` snapshot it publishes.

The engine loop and the PD side record here what the engine models do not keep (bootstrap and
in-flight queues, prefill tokens and busy time, prefix-cache totals, decode moments, the last KV
transfer); `compute()` adds the engine models' own loads and shapes SGLang's per-rank entries.
As in SGLang, a snapshot is published every `load_snapshot_publish_interval` decode steps while the
engine runs and on demand while it is idle, so polled loads are as stale as a real engine's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sbs.sim.emulator.engine_runtime import Runtime


class LoadBook:
    """Per-rank counters, the published snapshot, and when it is due for a refresh."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        n = runtime.dp
        self.boot_reqs = [0] * n
        self.boot_tokens = [0] * n
        self.inflight_reqs = [0] * n
        self.inflight_tokens = [0] * n
        self._prefill_tokens = [0] * n
        self._prefill_busy_us = [0.0] * n
        self._prompt_total = [0] * n
        self._cached_total = [0] * n
        self._moments = [[0.0] * 6 for _ in range(n)]
        self._generated = [0] * n
        self._thr_mark: tuple[float, list[int]] | None = None
        self._thr = [0.0] * n
        self._kv_ms = 0.0
        self._kv_gbps = 0.0
        self._snapshot: list[dict[str, Any]] = []
        self.snapshot_due = True
        self.busy = False
        """A step is running: changes during it are published at the next snapshot, not on demand."""
        self._decode_count = 0

    # --- what the engine records ----------------------------------------------------------------
    def bootstrap_queue(self, rank: int, prompt_tokens: int, delta: int) -> None:
        self.boot_reqs[rank] += delta
        self.boot_tokens[rank] += delta * prompt_tokens

    def inflight(self, rank: int, prompt_tokens: int, delta: int) -> None:
        self.inflight_reqs[rank] += delta
        self.inflight_tokens[rank] += delta * prompt_tokens

    def prefill_step(self, rank_tokens: list[int], busy_us: float) -> None:
        for r, t in enumerate(rank_tokens):
            if t:
                self._prefill_tokens[r] += t
                self._prefill_busy_us[r] += busy_us

    def prefill_done(self, rank: int, prompt_tokens: int, cached: int) -> None:
        self._prompt_total[rank] += prompt_tokens
        self._cached_total[rank] += cached

    def decode_step_started(self) -> None:
        """Publish (or refresh the gauges) on SGLang's decode-step intervals; the step's own changes
        are published with a later snapshot."""
        self._decode_count += 1
        s = self.rt.settings
        if self._decode_count % s.load_snapshot_publish_interval == 0:
            self.publish(gauges=self._decode_count % s.decode_log_interval == 0)
        elif self._decode_count % s.decode_log_interval == 0:
            self.rt.metrics.set_gauges(self.compute())
        self.snapshot_due = False

    def decode_step(self, batch: list[int], step_us: float) -> None:
        for r, b in enumerate(batch):
            if b:
                m = self._moments[r]
                m[0] += 1
                m[1] += b
                m[2] += step_us
                m[3] += b * b
                m[4] += b * step_us
                m[5] += b
                self._generated[r] += b

    def kv_transfer(self, rank: int, latency_ms: float, gbps: float) -> None:
        self._kv_ms = latency_ms
        self._kv_gbps = gbps
        metrics = self.rt.metrics
        metrics.kv_transfer_latency_ms.labels(**metrics.rank(rank)).observe(latency_ms)

    # --- publication ----------------------------------------------------------------------------
    def changed(self) -> None:
        if not self.busy:
            self.snapshot_due = True

    def idle(self) -> None:
        """The loop has no work: what changes from now on is published on demand."""
        self.busy = False
        self.snapshot_due = True

    def publish(self, *, gauges: bool = True) -> None:
        published = time.time()  # noqa: TID251 (IO edge: SGLang stamps each rank's snapshot in wall time)
        self._snapshot = [{**entry, "timestamp": published} for entry in self.compute()]
        self.snapshot_due = False
        if gauges:
            self.rt.metrics.set_gauges(self._snapshot)

    def current(self) -> list[dict[str, Any]]:
        """The published per-rank load snapshot (`/v1/loads` entries), refreshed when idle."""
        if self.snapshot_due or not self._snapshot:
            self.publish()
        return self._snapshot

    def render_metrics(self) -> bytes:
        if self.snapshot_due:
            self.publish()
        return self.rt.metrics.render()

    def _throughput(self) -> list[float]:
        now = self.rt.now()
        if self._thr_mark is None:
            self._thr_mark = (now, list(self._generated))
        t0, g0 = self._thr_mark
        if now - t0 >= 0.5:
            self._thr = [(g - h) / (now - t0) for g, h in zip(self._generated, g0, strict=True)]
            self._thr_mark = (now, list(self._generated))
        return self._thr

    def compute(self) -> list[dict[str, Any]]:
        rt = self.rt
        s, cap, cost = rt.settings, rt.kv_capacity, rt.cost
        p, d = rt.prefill, rt.decode
        p_loads = p.loads() if p is not None else None
        d_loads = d.loads() if d is not None else None
        thr = self._throughput()
        weights_gb = round(cost.weights_per_gpu_bytes(rt.ep_size) / 1e9, 2)
        kv_gb = round(cap * cost.kv_bytes_per_token() / 1e9, 2)
        out = []
        for r in range(rt.dp):
            running = waiting = uncached = used = waiting_seq = queue_len = 0
            if p is not None and p_loads is not None:
                q = p.queues[r]
                queue_len += len(q)
                waiting += len(q) + self.boot_reqs[r]
                uncached += p_loads[r].num_waiting_uncached_tokens  # SGLang: not the bootstrap queue
                used += sum(j.done for j in q if j.remaining >= 0) + self.inflight_tokens[r]
                waiting_seq += p.queued_tokens[r] + self.boot_tokens[r]
            if d is not None and d_loads is not None:
                running += d_loads[r].num_running_reqs
                waiting += d_loads[r].num_waiting_reqs
                used += d_loads[r].num_used_tokens
                queue_len += len(d.waiting[r])
            prompt = self._prompt_total[r]
            out.append(
                {
                    "dp_rank": r,
                    "num_running_reqs": running,
                    "num_waiting_reqs": waiting,
                    "num_waiting_uncached_tokens": uncached,
                    "num_used_tokens": used,
                    "num_total_tokens": used + waiting_seq,
                    "max_total_num_tokens": cap,
                    "max_running_requests": s.max_running_per_rank,
                    "token_usage": round(used / cap, 4),
                    "gen_throughput": round(thr[r], 2),
                    "cache_hit_rate": round(self._cached_total[r] / prompt, 4) if prompt else 0.0,
                    "utilization": 0.0,
                    "total_prefill_uncached_tokens": self._prefill_tokens[r],
                    "total_prefill_busy_us": int(self._prefill_busy_us[r]),
                    "decode_moments": list(self._moments[r]),
                    "memory": {
                        "weight_gb": weights_gb,
                        "kv_cache_gb": kv_gb,
                        "graph_gb": 0.0,
                        "token_capacity": cap,
                    },
                    "disaggregation": {
                        "mode": s.mode,
                        "prefill_bootstrap_queue_reqs": self.boot_reqs[r],
                        "prefill_inflight_queue_reqs": self.inflight_reqs[r],
                        "decode_prealloc_queue_reqs": 0,
                        "decode_transfer_queue_reqs": d.reserved[r] if d is not None else 0,
                        "decode_retracted_queue_reqs": 0,
                        "kv_transfer_speed_gb_s": round(self._kv_gbps, 3),
                        "kv_transfer_latency_ms": round(self._kv_ms, 3),
                    },
                    "queues": {
                        "waiting": queue_len,
                        "grammar": 0,
                        "paused": 0,
                        "retracted": 0,
                        "prealloc_ready": 0,
                    },
                }
            )
        return out
