"""Value types shared by the scheduling core, the simulator and the service.

Everything here is immutable (frozen dataclasses; `Dispatch` is a named tuple, so that `dispatches`
builds one release's decisions in C): decisions are pure functions of (state, requests, now), so the
values that flow in and out must not change under a caller's feet. Times are seconds (float) on the
caller's clock; the core never reads a clock of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple


class Role(enum.StrEnum):
    """Which side of a P/D-disaggregated deployment an engine instance serves."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the scheduler sees it.

    `output_tokens` is the number of tokens the request will generate (a trace gives it; the live
    service uses `max_new_tokens` as an upper bound). `hash_ids` are the prefix-block hashes of the
    prompt (Mooncake convention: one hash per `block_tokens` tokens), used for prefix-cache credit.
    """

    rid: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.rid}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.rid}: output_tokens must be >= 1, got {self.output_tokens}")


@dataclass(frozen=True, slots=True, order=True)
class RankRef:
    """One DP rank of one engine instance (`instance` indexes the role's instance list)."""

    instance: int
    rank: int


@dataclass(slots=True)
class Carry:
    """The rest of a chunked prompt, committed to one rank for the following steps."""

    rid: int
    rank: int
    remaining: int
    done: int
    """Tokens of the prompt already prefilled (the prefix the next chunk attends to)."""


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Static shape of one engine instance, as the scheduler needs to know it.

    `chunk_tokens` is the per-DP-rank token budget of one forward step (SGLang's chunked-prefill size
    per rank); `kv_capacity_tokens` the KV-cache capacity of one rank; `max_running_requests` the
    per-rank cap on concurrently decoding requests (decode only; 0 = unlimited).
    """

    name: str
    role: Role
    dp_size: int
    chunk_tokens: int
    kv_capacity_tokens: int
    max_running_requests: int = 0


class Dispatch(NamedTuple):
    """Decision: send `rid` to this prefill rank and this decode rank (SGLang PD bootstrap pair).

    `prefill.rank` / `decode.rank` are None when the engine's own DP balancer picks the rank
    (the `sglang` baseline); otherwise the request is pinned (`routed_dp_rank`).
    `reason` says which rule released it (for logs and metrics, never parsed).
    `priority` is the SGLang request priority to send (engines run `--enable-priority-scheduling`;
    higher values go first), or None to send none.
    """

    rid: int
    prefill_instance: int
    prefill_rank: int | None
    decode_instance: int
    decode_rank: int | None
    reason: str = ""
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Decision: the request cannot be served (e.g. longer than any rank's KV capacity)."""

    rid: int
    reason: str
    retryable: bool = False


Decision = Dispatch | Reject


def dispatches(
    rids: Sequence[int],
    prefill_instance: int,
    prefill_ranks: Sequence[int],
    decode_instances: Sequence[int],
    decode_ranks: Sequence[int],
    reason: str,
) -> list[Dispatch]:
    """`[Dispatch(rid, prefill_instance, pr, di, dr, reason) for ...]` for one release (no priority),
    built from zipped columns (a third of the constructor's time per request)."""
    n = len(rids)
    if not len(prefill_ranks) == len(decode_instances) == len(decode_ranks) == n:
        raise ValueError("dispatches: the columns differ in length")
    rows = zip(
        rids,
        repeat(prefill_instance),
        prefill_ranks,
        decode_instances,
        decode_ranks,
        repeat(reason),
        repeat(None),
    )
    return list(map(tuple.__new__, repeat(Dispatch), rows))  # in C, without the Python-level `__new__`


@dataclass(frozen=True, slots=True)
class RankLoad:
    """Per-DP-rank load snapshot, in the shape of one entry of SGLang's `GET /v1/loads`."""

    dp_rank: int
    num_running_reqs: int
    num_waiting_reqs: int
    num_waiting_uncached_tokens: int
    num_used_tokens: int
    max_total_num_tokens: int
