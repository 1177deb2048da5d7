"""SGLang 0.5.23's prefill delayer (`--enable-prefill-delayer`), as a pure per-pass negotiation.

Under DP attention the ranks of an instance run their forward passes in lockstep, so a pass in which
only some ranks prefill leaves the others idle for the pass. With the delayer on, every scheduler
pass the ranks exchange what they could do (an all-gather) and all reach the same verdict
(`sglang/srt/managers/prefill_delayer.py`, `_negotiate_should_allow_prefill_pure`):

- **none** of the ranks can prefill: nothing to decide (allowed);
- **some** can ("mixed"): new prefills wait, pass after pass, until all ranks can, or
  `max_delay_passes` passes have been delayed (then it is allowed: `wait_timeout`);
- **all** can: allowed, unless the decode batch is nearly full (`max_running_requests` − the
  largest running batch < the largest recent prefill batch), which delays the same way (the first
  time it holds is let through);
- a rank whose KV usage is below `token_usage_low_watermark` (when set) lets the pass through at
  once in both the mixed and all cases.

A rank in the middle of a chunked prompt prefills its next chunk whatever the verdict; only new
requests wait. Not modelled: the opt-in queue trigger (`--prefill-delayer-queue-min-ratio`, with its
`--prefill-delayer-max-delay-ms`), refused by the emulator's settings.

`DelayerGate` is the delayer as an engine loop uses it around `PrefillEngine.start_step` (the
emulator's `EngineLoop` and the simulator's `Simulation` both go through it): it negotiates over
the ranks' queues and keeps each rank's recent batch sizes as SGLang's scheduler does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sbs.sim.engine import PrefillEngine

MAX_DELAY_PASSES = 30
"""SGLang's `--prefill-delayer-max-delay-passes` default."""
IDLE_PASS_MS = 1.0
"""Modelled milliseconds of a scheduler pass that runs no forward (the delayer held every queued
prompt and nothing else runs): input polling plus the delayer's all-gather over the TP group's CPU
(gloo) group across its nodes. SGLang does not sleep then; this is an estimate, not a GPU measurement.
The emulator's `idle_pass_ms` default and the simulator's held pass."""
MAX_PREFILL_BS_WINDOW = 16
"""Prefill attempts remembered per rank for the largest recent batch (SGLang's default window)."""


@dataclass(frozen=True, slots=True)
class RankPass:
    """What one rank reports in a pass."""

    prefillable: bool
    """It has a prompt to prefill (a new request or the next chunk of one)."""
    running: int = 0
    """Requests in its running (decode) batch."""
    max_prefill_bs: int = 0
    """The largest of its recent prefill batches."""
    token_usage: float = 1.0
    """Its KV pool's used fraction."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    reason: str
    """SGLang's `output_reason`: "", `no_wait`, `wait_success`, `wait_timeout`, `token_watermark`, `delay`."""


class PrefillDelayer:
    """One instance's delayer: `negotiate` once per pass with every rank's report."""

    def __init__(
        self,
        max_delay_passes: int = MAX_DELAY_PASSES,
        token_usage_low_watermark: float | None = None,
        *,
        max_running_per_rank: int = 0,
    ) -> None:
        if max_delay_passes < 1:
            raise ValueError(f"max_delay_passes must be >= 1, got {max_delay_passes}")
        self.max_delay_passes = max_delay_passes
        self.token_usage_low_watermark = token_usage_low_watermark
        self.max_running_per_rank = max_running_per_rank
        """SGLang's per-rank `max_running_requests` under DP attention; 0 = no cap (never full)."""
        self.delayed = 0
        """Passes delayed so far in the current wait (0: not waiting)."""
        self._first_slot_wait = True

    def negotiate(self, ranks: Sequence[RankPass]) -> Verdict:
        can = [r.prefillable for r in ranks]
        if not any(can):
            self.delayed = 0
            return Verdict(True, "")
        low = self.token_usage_low_watermark
        if low is not None and any(r.prefillable and r.token_usage < low for r in ranks):
            self.delayed = 0
            return Verdict(True, "token_watermark")
        if all(can):
            cap = self.max_running_per_rank
            free = cap - max(r.running for r in ranks)
            full = cap > 0 and free < max(r.max_prefill_bs for r in ranks)
            if not full:
                return self._release("wait_success" if self.delayed else "no_wait")
            if self._first_slot_wait:
                self._first_slot_wait = False
                return self._release("wait_success" if self.delayed else "no_wait")
        return self._delay()

    def _delay(self) -> Verdict:
        if self.delayed < self.max_delay_passes - 1:
            self.delayed += 1
            return Verdict(False, "delay")
        return self._release("wait_timeout")

    def _release(self, reason: str) -> Verdict:
        self.delayed = 0
        return Verdict(True, reason)


class RecentPrefillBatches:
    """The largest of a rank's last `MAX_PREFILL_BS_WINDOW` prefill attempts (SGLang's tracker)."""

    def __init__(self) -> None:
        self._sizes: deque[int] = deque(maxlen=MAX_PREFILL_BS_WINDOW)

    @property
    def largest(self) -> int:
        return max(self._sizes, default=0)

    def observe(self, batch_size: int) -> None:
        if batch_size > 0:
            self._sizes.append(batch_size)


class DelayerGate:
    """One prefill instance's delayer around `PrefillEngine.start_step`, pass by pass.

    Each pass every rank reports whether it has a prompt queued (`PrefillEngine.prefillable`), its
    running decode batch (none on a PD prefill: zeros) and its largest recent prefill batch; a held
    pass starts only the chunks already begun. Afterwards each rank that could prefill records one
    attempt, as SGLang's `RecentPrefillBatchSizeTracker` does: the batch it ran, or when it ran
    nothing, what it would have taken (its queue, capped by its free running slots).
    """

    def __init__(
        self, dp_size: int, max_delay_passes: int = MAX_DELAY_PASSES, *, max_running_per_rank: int = 0
    ) -> None:
        self.delayer = PrefillDelayer(max_delay_passes, max_running_per_rank=max_running_per_rank)
        self.batches = [RecentPrefillBatches() for _ in range(dp_size)]
        self.held = 0
        """Passes in which new prompts were held."""

    def start_step(self, engine: PrefillEngine, now: float, running: Sequence[int] | None = None) -> float:
        """One pass: negotiate, then `engine.start_step`; returns its duration (0.0: no step ran,
        though prompts may be queued, held)."""
        running = running if running is not None else [0] * len(self.batches)
        can = engine.prefillable()
        reports = [
            RankPass(c, running=running[r], max_prefill_bs=self.batches[r].largest) for r, c in enumerate(can)
        ]
        allow = self.delayer.negotiate(reports).allow
        self.held += not allow
        duration = engine.start_step(now, allow_new=allow)
        taken = engine.step_batches() if duration > 0 else [0] * len(can)
        cap = self.delayer.max_running_per_rank
        for r, q in enumerate(engine.queues):
            if taken[r]:
                self.batches[r].observe(taken[r])
            elif can[r]:
                self.batches[r].observe(min(len(q), max(cap - running[r], 1)) if cap else len(q))
        return duration
