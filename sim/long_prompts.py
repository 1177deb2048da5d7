"""A workload mix: a trace plus long prompts, to test how a policy treats expensive prefills.

`with_long_prompts` adds `count` prompts of `tokens` tokens (or, with `tokens_hi`, of lengths drawn
uniformly from [tokens, tokens_hi] by a seeded RNG), evenly spread over the trace's span (the k-th at
(k + ½)/count of it), so the mix is deterministic and the long prompts never arrive together.
`parse_long_prompts` reads the `sbs-sim --long-prompts COUNT:TOKENS` flag, where COUNT may be a share
of the trace's requests (`1%`) and TOKENS a range (`64000-128000`). A count perturbs one run (added
after scaling, outside `--load`); a share is part of the workload (mixed into the base trace before
scaling, so `--load` and the nominal capacity count it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sbs.sim.errors import SimInputError
from sbs.sim.trace import Trace, build_trace

LONG_OUTPUT_TOKENS = 256
"""Output length of each added prompt (the mix tests prefill; its decode stays ordinary)."""


@dataclass(frozen=True)
class LongPrompts:
    """What `--long-prompts` asks for: a count or a percentage of the trace, and a length range."""

    count: int | None
    percent: float | None
    tokens: int
    tokens_hi: int

    def add_to(self, trace: Trace, *, seed: int = 0) -> Trace:
        count = self.count if self.count is not None else round(len(trace) * (self.percent or 0.0) / 100)
        return with_long_prompts(trace, count, self.tokens, tokens_hi=self.tokens_hi, seed=seed)


def with_long_prompts(
    trace: Trace,
    count: int,
    tokens: int,
    *,
    output_tokens: int = LONG_OUTPUT_TOKENS,
    tokens_hi: int | None = None,
    seed: int = 0,
) -> Trace:
    """`trace` with `count` prompts of `tokens` tokens (uniform in [tokens, tokens_hi] when given) added
    at (k + ½)/count of its span; the added requests carry no prefix hashes. Rids are renumbered in
    arrival order."""
    hi = tokens if tokens_hi is None else tokens_hi
    if count < 0 or tokens < 1 or output_tokens < 1 or hi < tokens:
        raise ValueError(
            f"need count >= 0, 1 <= tokens <= tokens_hi, output_tokens >= 1; got {count}, {tokens}, "
            f"{hi}, {output_tokens}"
        )
    if count == 0:
        return trace
    rng = random.Random(seed)
    lengths = [tokens if hi == tokens else rng.randint(tokens, hi) for _ in range(count)]
    span = trace.duration_s
    reqs = trace.requests
    arrivals = [r.arrival_s for r in reqs] + [(k + 0.5) / count * span for k in range(count)]
    prompts = [r.prompt_tokens for r in reqs] + lengths
    outputs = [r.output_tokens for r in reqs] + [output_tokens] * count
    hashes = [r.hash_ids for r in reqs] + [()] * count if trace.block_tokens else None
    size = f"{tokens}" if hi == tokens else f"{tokens}-{hi}"
    name = f"{trace.name} + {count}x{size} tok"
    return build_trace(name, arrivals, prompts, outputs, hashes, block_tokens=trace.block_tokens)


def parse_long_prompts(spec: str | None) -> LongPrompts | None:
    """`COUNT:TOKENS` as a `LongPrompts`: COUNT a positive integer or a percentage (`1%`, `0.5%`),
    TOKENS a positive integer or a range `LO-HI`; None for no flag."""
    if spec is None:
        return None
    count_s, sep, tokens_s = spec.partition(":")
    lo_s, dash, hi_s = tokens_s.partition("-")
    try:
        percent = float(count_s[:-1]) if count_s.endswith("%") else None
        count = None if percent is not None else int(count_s)
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
    except ValueError:
        percent, count, lo, hi = None, 0, 0, 0
    good = (count or 0) >= 1 or (percent is not None and 0 < percent <= 100)
    if not sep or not good or lo < 1 or hi < lo:
        raise SimInputError(
            "--long-prompts: expected COUNT:TOKENS (COUNT a positive integer or a percentage like 1%, "
            f"TOKENS a positive integer or a range LO-HI), got {spec!r}"
        )
    return LongPrompts(count, percent, lo, hi)
