"""TPOT and ITL from the relayed stream: SGLang's own token counts, chunks split anywhere."""

from __future__ import annotations

import pytest
from sbs.scheduler.service.output_timing import OutputTiming


def gen_chunk(n: int) -> bytes:
    return (
        b'data: {"text":"'
        + b"x" * n
        + b'","meta_info":{"id":"a","completion_tokens":%d,"e2e_latency":1.0}}\n\n' % n
    )


def test_tpot_and_itl_from_generate_chunks() -> None:
    t = OutputTiming()
    itl = [
        t.chunk(gen_chunk(1), 10.0),  # the first token (TTFT's)
        t.chunk(gen_chunk(9), 10.4),  # 8 tokens in 0.4 s
        t.chunk(gen_chunk(17), 10.6),  # 8 in 0.2 s
        t.chunk(b"data: [DONE]\n\n", 10.7),
    ]
    assert itl[0] is None and itl[3] is None
    assert itl[1:3] == pytest.approx([0.05, 0.025])
    assert t.tpot_s() == pytest.approx(0.6 / 16)


def test_a_count_split_across_two_reads_is_skipped_not_misread() -> None:
    t = OutputTiming()
    t.chunk(gen_chunk(1), 0.0)
    whole = gen_chunk(64)
    cut = whole.index(b"64") + 1  # `..."completion_tokens":6` | `4,...`
    t.chunk(whole[:cut], 1.0)
    t.chunk(whole[cut:], 1.0)
    assert t.tokens == 1 and t.tpot_s() is None
    t.chunk(gen_chunk(65), 2.0)
    assert t.tpot_s() == pytest.approx(2.0 / 64)


def test_openai_usage_counts_and_streams_without_counts() -> None:
    t = OutputTiming()
    t.chunk(b'data: {"choices":[{"text":"a"}]}\n\n', 0.0)
    t.chunk(
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":11,"total_tokens":16}}\n\n', 2.0
    )
    assert t.tpot_s() == pytest.approx(0.2)
    bare = OutputTiming()
    gaps = [
        bare.chunk(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 0.0),
        bare.chunk(b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n', 1.0),
    ]
    assert bare.tpot_s() is None and gaps == [None, None]
