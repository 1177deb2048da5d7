"""`Req`: one request's state inside the engine, which the HTTP layer watches.

Stages: `bootstrap` (PD prefill waiting for its decode's handshake) → `prefill` (in a rank queue or
being prefilled) → `transfer` (prefill: KV on the wire; decode: waiting for the prefill's KV) →
`decode` (waiting for a batch slot or running) → `done`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sbs.sim.emulator import bootstrap
from sbs.sim.emulator.requests import GenRequest, RequestError


@dataclass(eq=False, slots=True)
class Req:
    """One request inside the engine; the HTTP layer waits on `changed` / `done`."""

    gen: GenRequest
    rid: str
    num: int
    """The integer id the engine models know the request by."""
    arrival_s: float
    rank: int = -1
    stage: str = "new"
    output_tokens: int = 0
    """Tokens generated so far (SGLang streams the cumulative text of these)."""
    cached_tokens: int = 0
    first_token_s: float | None = None
    finished_s: float | None = None
    finish_reason: dict[str, Any] | None = None
    error: RequestError | None = None
    task: asyncio.Task[None] | None = None
    transfer_start_s: float = 0.0
    waiting_s: float = 0.0
    """When it joined a rank's waiting queue (PD prefill: after the handshake)."""
    forward_entry_s: float = 0.0
    """Start of the step that ran its first prefill chunk (0 = not yet)."""
    prefill_finished_s: float = 0.0
    """End of the step that finished its prefill (0 = not yet)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def fake_bootstrap(self) -> bool:
        return self.gen.bootstrap_host == bootstrap.FAKE_BOOTSTRAP_HOST
