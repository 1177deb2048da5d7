"""SBS's per-release step cap (issue 11): how many tokens a release may put on each DP rank.

A lockstep step lasts as long as its slowest rank, and a short prompt released behind a full chunk
waits the whole of it. Small steps suit short prompts (Azure conversation: a quarter chunk, with
shortest-first order, comes within a few % of the oracle), full chunks long ones (Mooncake: a quarter
chunk costs 20 %+). With `batching.adaptive_cap` the cap follows the buffered prompts, release by
release:

- a buffered prompt longer than a chunk (a chunked prompt): full chunks, so long prompts progress at
  the engine's own chunk size and the other ranks fill the slow steps they make;
- else `CAP_MEDIAN_MULTIPLE` × the buffer's median prompt, at least `CAP_FLOOR_FRACTION` of a chunk:
  a step packs a few typical prompts per rank, and no typical prompt waits behind a step many times
  its own length;
- at least the buffered tokens ÷ (`BACKLOG_RELEASES` × the instance's ranks): under a backlog the
  cap grows, so it never costs capacity (without this, Azure's capacity fell 11 % and ShareGPT's
  2.5 %);
- raised to the largest prompt among those the release would take first (the release order's head,
  up to the instance's ranks × the cap in tokens): the engine runs a prompt of at most a chunk whole,
  so a cap below it would only mispredict the step and leave a phantom carry on its rank (with
  arrival order and before the backlog rule that lost capacity: Azure at 0.9 went from 2.0 to 8.8 s
  TTFT mean).

Never above `fill_target` × the chunk. Without `adaptive_cap` the cap is `fill_target` × the chunk.
A pure function of the buffered prompt sizes and the instance's shape: deterministic, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sbs.scheduler.core.compiled import jit
from sbs.scheduler.core.types import InstanceSpec
from sbs.settings.scheduling import BatchingSettings

CAP_MEDIAN_MULTIPLE = 3.0
"""The cap in multiples of the buffer's median prompt (chosen on Azure at 0.5/0.7/0.9 of capacity:
2 was worse at 0.9, 4 and 6 gave up part of the gain at 0.5 and 0.7)."""

CAP_FLOOR_FRACTION = 1.0 / 16.0
"""The smallest cap, as a fraction of the chunk (a buffer of tiny prompts still packs a rank)."""

BACKLOG_RELEASES = 10
"""The cap grows once the buffer holds more than this many capped releases of the instance (chosen on
Azure's and ShareGPT's capacity: 10 keeps both within 0.2 % of full chunks')."""


def release_chunk(spec: InstanceSpec, b: BatchingSettings, queue_tokens: Sequence[int] | np.ndarray) -> int:
    """Per-rank token cap of one release to an instance of shape `spec`, given the buffered prompts'
    sizes in release order (`queue_tokens`, a list or an int64 array). Compiled (`_cap_kernel`): it runs
    on every release, over the whole buffer."""
    chunk = spec.chunk_tokens
    ceiling = max(1, int(chunk * b.fill_target))
    n = len(queue_tokens)
    if not b.adaptive_cap or not n:
        return ceiling
    q = queue_tokens if isinstance(queue_tokens, np.ndarray) else np.fromiter(queue_tokens, np.int64, n)
    floor = int(chunk * CAP_FLOOR_FRACTION)
    return int(
        _cap_kernel(
            q, chunk, ceiling, floor, CAP_MEDIAN_MULTIPLE, BACKLOG_RELEASES * spec.dp_size, spec.dp_size
        )
    )


def release_chunk_numpy(spec: InstanceSpec, b: BatchingSettings, queue_tokens: Sequence[int]) -> int:
    """`release_chunk` in plain numpy (the reference the kernel is tested against)."""
    chunk = spec.chunk_tokens
    ceiling = max(1, int(chunk * b.fill_target))
    n = len(queue_tokens)
    if not b.adaptive_cap or not n:
        return ceiling
    q = np.fromiter(queue_tokens, np.int64, n)  # prompt sizes: far below int64's range
    if q.max() > chunk:
        return ceiling
    median = int(np.partition(q, n // 2)[n // 2])  # sorted(q)[n // 2]
    backlog = int(q.sum()) // (BACKLOG_RELEASES * spec.dp_size)
    cap = max(int(chunk * CAP_FLOOR_FRACTION), int(CAP_MEDIAN_MULTIPLE * median), backlog)
    return max(1, min(ceiling, _head_fit(q, cap, spec.dp_size)))


def _head_fit(q: np.ndarray, cap: int, ranks: int) -> int:
    """`cap`, raised to the largest of the first prompts in release order that fill `ranks` × `cap`
    tokens (each counted at most `cap`): prompt i is among them while the ones before it hold less."""
    before = np.cumsum(np.minimum(q[:-1], cap))  # tokens of the prompts before prompt i + 1
    head = 1 + int(np.searchsorted(before, ranks * cap, "left"))
    return max(cap, int(q[:head].max()))


@jit
def _cap_kernel(
    q: np.ndarray, chunk: int, ceiling: int, floor: int, multiple: float, backlog_div: int, ranks: int
) -> int:
    """`release_chunk_numpy` past its setting checks, for a non-empty `q`, in one pass plus a selection."""
    n = q.shape[0]
    top = q.max()
    if top > chunk:
        return ceiling
    median = np.partition(q, n // 2)[n // 2]
    cap = max(floor, int(multiple * median), q.sum() // backlog_div)
    target = ranks * cap
    head_max = q[0]  # the largest of the release head: prompt i joins while those before hold less
    before = 0
    for i in range(n - 1):
        before += min(q[i], cap)
        if before >= target:
            break
        head_max = max(head_max, q[i + 1])
    return max(1, min(ceiling, max(cap, head_max)))
