"""A workload mix: a trace plus a few long prompts, to test how a policy treats expensive prefills.

`with_long_prompts` adds `count` prompts of `tokens` tokens, evenly spread over the trace's span (the
k-th at (k + ½)/count of it), so the mix is deterministic and the long prompts never arrive together.
`parse_long_prompts` reads the `sbs-sim --long-prompts COUNT:TOKENS` flag.
"""

from __future__ import annotations

from sbs.sim.errors import SimInputError
from sbs.sim.trace import Trace, build_trace

LONG_OUTPUT_TOKENS = 256
"""Output length of each added prompt (the mix tests prefill; its decode stays ordinary)."""


def with_long_prompts(
    trace: Trace, count: int, tokens: int, *, output_tokens: int = LONG_OUTPUT_TOKENS
) -> Trace:
    """`trace` with `count` prompts of `tokens` tokens added at (k + ½)/count of its span; the added
    requests carry no prefix hashes. Rids are renumbered in arrival order."""
    if count < 0 or tokens < 1 or output_tokens < 1:
        raise ValueError(
            f"need count >= 0, tokens >= 1, output_tokens >= 1; got {count}, {tokens}, {output_tokens}"
        )
    if count == 0:
        return trace
    span = trace.duration_s
    reqs = trace.requests
    arrivals = [r.arrival_s for r in reqs] + [(k + 0.5) / count * span for k in range(count)]
    prompts = [r.prompt_tokens for r in reqs] + [tokens] * count
    outputs = [r.output_tokens for r in reqs] + [output_tokens] * count
    hashes = [r.hash_ids for r in reqs] + [()] * count if trace.block_tokens else None
    name = f"{trace.name} + {count}x{tokens} tok"
    return build_trace(name, arrivals, prompts, outputs, hashes, block_tokens=trace.block_tokens)


def parse_long_prompts(spec: str | None) -> tuple[int, int] | None:
    """`COUNT:TOKENS` (both positive integers) as (count, tokens); None for no flag."""
    if spec is None:
        return None
    count, sep, tokens = spec.partition(":")
    try:
        parsed = int(count), int(tokens)
    except ValueError:
        parsed = (0, 0)
    if not sep or min(parsed) < 1:
        raise SimInputError(f"--long-prompts: expected COUNT:TOKENS (positive integers), got {spec!r}")
    return parsed
