"""Accepted client requests ("jobs") as the service tracks them, and admission's refusal."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sbs.scheduler.core.types import Decision, Dispatch, Request
from sbs.scheduler.service import protocol
from sbs.scheduler.service.engine_registry import Engine

if TYPE_CHECKING:
    from sbs.scheduler.service.pools import Pool


class Overloaded(Exception):
    """Admission refused; `status` is 429 (overload) or 503 (no usable engines)."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


class JobState(enum.Enum):
    BUFFERED = "buffered"
    DISPATCHED = "dispatched"
    DONE = "done"


@dataclass(eq=False, slots=True)
class Job:
    """One accepted client request, from acceptance to its single completion or error."""

    rid: int
    request_id: str
    """The client's id (or one made up): logged and echoed, never sent to the engines."""
    engine_rid: str
    """The engines' `rid` (unique; `-<n>` is appended on the n-th re-dispatch)."""
    endpoint: str
    payload: bytes
    """The client's body for the engines (`upstream.engine_prefix`)."""
    parsed: protocol.Parsed
    request: Request
    arrival_s: float
    deadline_s: float
    pool: Pool
    generation: int
    decision: asyncio.Future[Decision]
    state: JobState = JobState.BUFFERED
    attempts: int = 0
    dispatch: Dispatch | None = None
    prefill_engine: Engine | None = None
    decode_engine: Engine | None = None
    prefilled: bool = False
    """The current attempt's prefill completed (prefill answered or the decode produced output)."""
    dispatched_s: float = 0.0
    on_engine_lost: Callable[[Engine], None] | None = None
    """Called when an engine of the current attempt is found hung (the relay ends what waits on it)."""
