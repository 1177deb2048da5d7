"""Engine shape facts shared by every layer: the per-rank prefill budget and how SGLang splits it.

Under DP attention SGLang divides a whole instance's `--chunked-prefill-size` (and
`--max-running-requests`) evenly over its DP ranks; the scheduler, the simulator, the emulator and the
operator's sizing all reason per rank, so they convert with `per_rank`.
"""

from __future__ import annotations

DEFAULT_CHUNK_PER_RANK = 16_384
"""Per-rank prefill tokens per step when nothing says otherwise (the LMSYS DeepSeek-V3 recipe:
524,288 over DP32)."""


def per_rank(total: int, dp_size: int) -> int:
    """A whole-instance budget as each of `dp_size` DP ranks sees it (at least 1)."""
    return max(1, total // dp_size)
