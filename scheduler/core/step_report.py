"""When a reported prefill step began, from what SGLang's answers tell (shared by service and simulator).

SGLang reports no steps. A step is seen only through the answers of the requests it finished, each
stamped with the start of the step that ran its first chunk (`forward_entry_time`) and the end of the
step that finished it (`prefill_finished_time`). So a step that finished nothing goes unseen, and a step
that finished only the last chunks of chunked prompts has no stamp of its own start.
"""

from __future__ import annotations

import math

SAME_STEP_S = 0.001
"""Stamps this close are one step (each DP rank's scheduler stamps its own copy of the batch)."""


def step_start(latest_entry_s: float, previous_end_s: float, end_s: float) -> tuple[float, bool]:
    """(start, timed) of a step ending at `end_s`, the previous reported step having ended at
    `previous_end_s`. `latest_entry_s` is the latest `forward_entry_time` among the finished requests
    that fit in one chunk (-inf: none did), since a longer prompt entered in an earlier step.

    Timed: such a request entered after the previous reported step, so this step began then. Otherwise
    the step began no earlier than the previous reported end, which is its start unless an unreported
    step came between (not timed: its duration is only an upper bound; zero when nothing bounds it)."""
    if latest_entry_s > previous_end_s + SAME_STEP_S:
        return min(latest_entry_s, end_s), True
    start = max(previous_end_s, latest_entry_s)
    return (min(start, end_s) if start > -math.inf else end_s), False
