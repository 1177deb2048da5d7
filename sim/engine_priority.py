"""SGLang's priority scheduling (`--enable-priority-scheduling`) as the engine models apply it.

What SGLang 0.5.23 does, and what of it reaches a PD-disaggregated DP-attention deployment:

- A request carries `priority` (an optional signed 64-bit integer; `GenerateReqInput.priority` in
  `managers/io_struct.py`, the same field on the OpenAI completion and chat requests in
  `entrypoints/openai/protocol.py`). `managers/tokenizer_manager.py` fills in `--default-priority-value`
  when priority scheduling is on and the request has none, and refuses values outside int64.
- Each DP rank runs its own scheduler (`managers/scheduler.py`). `_set_or_validate_priority` gives a
  request without a priority the lowest one (-maxsize-1, or +maxsize with
  `--schedule-low-priority-values-first`); without the flag a priority is ignored, or the request is
  aborted when `--abort-on-priority-when-disabled` is set.
- Prefill (`disaggregation/prefill.py`): bootstrapped requests join the waiting queue, stamped with
  their entry time; every pass `SchedulePolicy.calc_priority` (`managers/schedule_policy.py`, policy
  `fcfs`, which the flag requires with `lof`) sorts it by (priority, entry time): higher values first
  by default, lower first with `--schedule-low-priority-values-first`. The request being chunked
  (`chunked_req`) is outside the waiting queue and is continued first, whatever arrives.
- Preemption (`--priority-scheduling-preemption-threshold`, `PrefillAdder.preempt_to_schedule`) evicts
  requests of the *running* batch. A PD prefill never keeps a running batch (finished prompts go to
  the KV-transfer queue), so it does not apply to the prefill path: not modelled.
- Decode (`disaggregation/decode.py`): the preallocation queue is sorted by priority, and the queue of
  transferred requests waiting for a batch slot by (priority, entry time) through the same
  `calc_priority`. The decode model has no preallocation queue (a dispatch only reserves); its waiting
  queue is ordered here. `--retraction-policy priority` (decode retraction) is not modelled.
- Not modelled either: the `max_queued_requests` eviction by priority (not on the PD path) and the
  priority label on metrics.

`PriorityOrder` keeps a queue sorted as SGLang's sort leaves it: by key, then in entry order, so a new
request goes behind every request of the same or a better priority.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class _Prioritised(Protocol):
    @property
    def priority(self) -> int | None: ...


J = TypeVar("J", bound=_Prioritised)


@dataclass(frozen=True, slots=True)
class PriorityOrder:
    """How one engine orders its waiting queues with priority scheduling on."""

    low_values_first: bool = False
    """SGLang `--schedule-low-priority-values-first`; by default higher values go first."""
    default: int | None = None
    """SGLang `--default-priority-value`: the priority of a request sent without one."""

    def key(self, priority: int | None) -> int:
        """Sort key (smaller goes first). No priority and no default: SGLang's lowest priority."""
        if priority is None:
            priority = self.default
        if priority is None:
            priority = sys.maxsize if self.low_values_first else -sys.maxsize - 1
        return priority if self.low_values_first else -priority

    def insert(self, queue: deque[J], job: J, fixed: Callable[[J], bool] | None = None) -> None:
        """Put `job` into `queue` (sorted by key, then entry order): behind every job of the same or a
        better key, and behind the leading jobs that are `fixed` (started ones, not to be passed)."""
        key = self.key(job.priority)
        i = len(queue)
        while i and self.key(queue[i - 1].priority) > key and not (fixed and fixed(queue[i - 1])):
            i -= 1
        queue.insert(i, job)
