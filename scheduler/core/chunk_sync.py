"""Which chunk each rank's long prompt is really on, from the engine's `/v1/loads` snapshot.

The core follows a chunked prompt (`Carry`) by the steps it believes the engine ran. A step that
finishes nothing sends no answer, so those beliefs rest on predicted step ends; when a step runs late
the core counts a chunk the engine has not started, believes the rank has room, and its release waits
a step behind work it thought done, while the rest of the step's ranks idle.

SGLang's snapshot corrects this. Per rank, `num_waiting_uncached_tokens` is the waiting queue's
uncached tokens plus what the chunked request has left to compute, counted before the step that is
running (its `prefix_len` moves when a chunk is done). Requests still in their PD handshake are not
in it. So the remaining of a prompt the core planned in chunks is the snapshot's tokens less those of
the requests waiting behind it on that rank. Each prefill snapshot sets the carries so
(`ClusterState.on_loads`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sbs.scheduler.core.types import Carry, RankLoad

if TYPE_CHECKING:
    from sbs.scheduler.core.state import PrefillInstanceState

Queued = tuple[int, float, bool]
"""A prefill booked on a rank (`ClusterState.queued`): uncached tokens, sent at, planned in chunks."""

EngineChunk = tuple[int, int, int]
"""(rid, uncached tokens left before the running step, its uncached tokens in all)."""


def in_progress(
    queued: Sequence[Mapping[int, Queued]], loads: Sequence[RankLoad], cutoff_s: float
) -> dict[int, EngineChunk]:
    """Per rank of one instance (`queued[rank]`: rid → (uncached tokens, sent at, planned in chunks),
    oldest first; `loads` its snapshot): the prompt planned in chunks that the engine has started and
    not finished there, if the snapshot says so: the oldest prompt planned in chunks (a rank's
    requests start in arrival order, those of one release in the order their handshakes end, so only
    a prompt known to be chunked is taken for the one in progress). Its remaining is the snapshot's
    tokens less those of the requests sent after it, which wait behind it. Left out, so that a
    remaining can only be over-, not under-stated: requests sent after `cutoff_s`, which may not have
    reached the queue the snapshot counts, and requests sent with it or before, which may have
    finished with their answers in transit. A rank whose numbers do not fit (nothing done yet, a
    prefix cache counted otherwise) has none."""
    out: dict[int, EngineChunk] = {}
    for load in loads:
        q = queued[load.dp_rank] if load.dp_rank < len(queued) else {}
        if not q or load.num_waiting_uncached_tokens <= 0:
            continue
        head: tuple[int, int, float] | None = None
        behind = 0
        for rid, (tokens, sent_s, chunked) in q.items():
            if sent_s > cutoff_s:
                break
            if head is None:
                if chunked:
                    head = rid, tokens, sent_s
            elif sent_s > head[2]:
                behind += tokens
        if head is None:
            continue
        left = load.num_waiting_uncached_tokens - behind
        if 0 < left < head[1]:
            out[load.dp_rank] = (head[0], left, head[1])
    return out


def resync(
    st: PrefillInstanceState,
    queued: Sequence[Mapping[int, Queued]],
    loads: Sequence[RankLoad],
    cutoff_s: float,
) -> None:
    """Set `st`'s carries to what its snapshot (`loads`, `queued` its ranks' queues, `cutoff_s` as in
    `in_progress`) says: each prompt in progress loses the chunk the running step takes, and what is
    left is the carry the next step continues; a prompt the running step finishes loses its carry.
    Steps that start later are the core's to count, as ever. A carry of a prompt the snapshot did not
    see started is kept."""
    size = st.spec.chunk_tokens
    for rank, (rid, left, total) in in_progress(queued, loads, cutoff_s).items():
        after = left - min(left, size)
        carry = st.carries.get(rank)
        if after > 0:
            st.carries[rank] = Carry(rid, rank, after, total - after)
        elif carry is not None and carry.rid == rid:
            del st.carries[rank]
