"""Decode timing measured on the relayed stream: TPOT per request and ITL per chunk.

The scheduler relays every stream, so it sees when each chunk leaves the decode. The token count
comes from what SGLang puts in the chunks: `meta_info.completion_tokens` in every `/generate`
chunk (cumulative), `usage.completion_tokens` in the last OpenAI chunk when the client asked for
usage (`stream_options.include_usage`). Without a count, nothing is observed.

- **TPOT** of a request: (the chunk with the last count − the first chunk) / (that count − 1), as
  `sbs-bench` and the simulator define it (the first token is TTFT's).
- **ITL** of a chunk after the first that carries a count: the gap since the previous chunk divided by
  the tokens it added (SGLang sends one chunk per `--stream-interval` tokens).
"""

from __future__ import annotations

import re

_COUNT = re.compile(rb'"completion_tokens"\s*:\s*(\d+)(?=\D)')
"""A count the chunk holds whole (one split across two reads is skipped, not misread)."""


class OutputTiming:
    def __init__(self) -> None:
        self.first_s: float | None = None
        self.tokens: int | None = None
        """The last completion-token count seen in the stream."""
        self._counted_s: float | None = None

    def chunk(self, data: bytes, now: float) -> float | None:
        """`data` was relayed to the client at `now`; the ITL it shows (per token since the previous
        counted chunk), if any."""
        if self.first_s is None:
            self.first_s = now
        found = _COUNT.findall(data)
        if not found:
            return None
        tokens, itl = int(found[-1]), None
        if self.tokens is not None and self._counted_s is not None and tokens > self.tokens:
            itl = (now - self._counted_s) / (tokens - self.tokens)
        if self.tokens is None or tokens > self.tokens:
            self.tokens, self._counted_s = tokens, now
        return itl

    def tpot_s(self) -> float | None:
        """The request's TPOT, or None (fewer than two tokens, or no count in the stream)."""
        if self.tokens is None or self.tokens < 2 or self.first_s is None or self._counted_s is None:
            return None
        return (self._counted_s - self.first_s) / (self.tokens - 1)
