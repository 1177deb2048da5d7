"""`EngineSettings`: everything one emulated SGLang engine instance is started with.

Field names follow SGLang's server args where one exists (`chunked_prefill_size`, `max_running_requests`,
`max_total_tokens`, `load_balance_method`, ...), with the same meaning and the same per-rank split
under DP attention; the emulator's own knobs (`time_factor`, `hardware`, `jitter_cv`) say so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK, per_rank
from sbs.sim.engine_priority import INT64_MAX, INT64_MIN, PriorityOrder
from sbs.sim.prefill_delayer import IDLE_PASS_MS, MAX_DELAY_PASSES

Mode = Literal["null", "prefill", "decode"]
BalanceMethod = Literal["auto", "round_robin", "follow_bootstrap_room", "total_requests", "total_tokens"]

MIN_DEFAULT_EP = 32
"""Smallest EP size assumed when `ep_size` is unset (see `EngineSettings.ep_size`)."""


class EngineSettings(BaseModel):
    """One engine instance (the leader of an engine group). Frozen; unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "null"
    """SGLang `--disaggregation-mode`: `prefill` or `decode` half of a PD pair, or `null` (both)."""
    host: str = "127.0.0.1"
    """Address the HTTP API (and, on a prefill, the bootstrap server) binds to."""
    port: int = Field(30000, ge=0, le=65535)
    """HTTP API port; 0 binds a free port (tests), reported by `RunningEngine.port`."""
    bootstrap_port: int = Field(8998, ge=0, le=65535)
    """`--disaggregation-bootstrap-port`, served by prefill engines only; 0 binds a free port."""
    dp_size: int = Field(1, ge=1)
    """DP-attention ranks of the instance (`--attn-dp-size`, or the classic `--dp-size` with
    `--enable-dp-attention`). Ranks run in lockstep, one queue and one KV pool each."""
    ep_size: int | None = Field(None, ge=1)
    """Expert-parallel size for the cost model (experts per rank, all-to-all fan-out). None = dp_size,
    but at least 32: DeepSeek-V3's experts need an EP group of about 32 GPUs to leave room for KV, so
    a small instance (tests, laptops) is costed as ranks of an EP32 group."""
    server_info_dp_size: int | None = Field(None, ge=1)
    """The `dp_size` that `/server_info` reports; None = `dp_size`. SGLang 0.5.23 reports 1 when the
    ranks came from `--attn-dp-size` (the CLI sets that); routers that read only `dp_size` see it."""
    model_name: str = "deepseek-ai/DeepSeek-V3"
    """`--model-path`: reported by `/model_info`, `/server_info` and metric labels; nothing is loaded."""
    served_model_name: str | None = None
    """`--served-model-name`; None = `model_name`. The `model` of OpenAI responses and `/v1/models`."""
    context_length: int = Field(163_840, ge=16)
    """Longest prompt + output accepted (DeepSeek-V3's 160k). Longer prompts get SGLang's 400."""

    time_factor: float = Field(1.0, ge=0.0)
    """Wall seconds per modelled second. 0.05 runs 20× faster than the hardware would; 0 answers at
    once (step times become zero), for measuring the overhead of what sits in front of the engine."""
    hardware: Literal["h800", "h200"] = "h800"
    """GPU the cost model describes (`CostParams.h800()` / `.h200()`)."""
    jitter_cv: float = Field(0.0, ge=0.0, le=0.5)
    """Coefficient of variation of step time around the cost model; 0 = deterministic steps."""
    seed: int = 0
    """Seeds the step-time jitter."""

    chunked_prefill_size: int | None = Field(None, ge=1)
    """SGLang `--chunked-prefill-size`: the instance's prefill budget per step, split evenly over the
    DP ranks (size // dp_size per rank). None = 16,384 per rank (the LMSYS DeepSeek recipe)."""
    max_running_requests: int | None = Field(None, ge=1)
    """SGLang `--max-running-requests` for the whole instance (max // dp_size per rank, as SGLang
    divides it under DP attention); caps decode batches. None = bounded by KV capacity only."""
    max_total_tokens: int | None = Field(None, ge=16)
    """SGLang `--max-total-tokens`: KV-pool tokens of one rank. None = what GPU memory leaves after
    the weights, from the cost model (`kv_capacity_tokens_per_rank`)."""
    load_balance_method: BalanceMethod = "auto"
    """In-engine DP balancing of requests without `routed_dp_rank`. `auto` = `follow_bootstrap_room`
    on a PD prefill (rank = room % dp_size) and `round_robin` elsewhere, as in 0.5.23."""
    stream_interval: int = Field(1, ge=1)
    """SGLang `--stream-interval`: a stream gets a chunk every this many tokens (and at the end)."""
    disable_radix_cache: bool = False
    """SGLang `--disable-radix-cache`: no prefix reuse on the prefill side."""
    prefix_block_tokens: int = Field(64, ge=1)
    """Granularity of the emulated radix cache: prompts match in whole blocks of this many tokens."""

    bootstrap_timeout_s: float = Field(300.0, gt=0.0)
    """How long a PD prefill waits for its decode's handshake (SGLang
    `SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT`, 300 s). Wall seconds, not scaled by `time_factor`."""
    waiting_timeout_s: float = Field(300.0, gt=0.0)
    """How long a PD decode waits for its prefill's KV, queueing at the prefill included (SGLang
    `SGLANG_DISAGGREGATION_WAITING_TIMEOUT`, 300 s). Wall seconds, not scaled by `time_factor`."""
    force_query_prefill_dp_rank: bool = False
    """SGLang `SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK=1`: a prefill whose rank does not
    follow the bootstrap room registers the room instead of failing the request."""
    load_snapshot_publish_interval: int = Field(15, ge=1)
    """SGLang `--load-snapshot-publish-interval`: `/v1/loads` is refreshed every this many decode
    steps; prefill steps and idle passes refresh it at once."""
    decode_log_interval: int = Field(40, ge=1)
    """SGLang `--decode-log-interval`: the `/metrics` scheduler gauges of a busy decode are refreshed
    every this many decode steps (on prefill steps and idle passes at once)."""

    enable_prefill_delayer: bool = False
    """SGLang `--enable-prefill-delayer`: the DP ranks negotiate each pass and hold new prefills until
    all ranks have one, or `prefill_delayer_max_delay_passes` passes (`sbs.sim.prefill_delayer`).
    Ignored on a decode engine, as SGLang does."""
    prefill_delayer_max_delay_passes: int = Field(MAX_DELAY_PASSES, ge=1)
    """SGLang `--prefill-delayer-max-delay-passes` (default 30)."""
    idle_pass_ms: float = Field(IDLE_PASS_MS, ge=0.0)
    """The emulator's own: modelled milliseconds of a scheduler pass that runs no forward (a pass the
    delayer held with nothing else to do); the default is the simulator's held pass too
    (`sbs.sim.prefill_delayer.IDLE_PASS_MS`: about a millisecond, an estimate, not a GPU measurement)."""

    enable_priority_scheduling: bool = False
    """SGLang `--enable-priority-scheduling`: waiting queues (each prefill rank's, each decode rank's
    queue of transferred requests) are sorted by the requests' `priority`, then by arrival; a prompt
    being chunked is finished first (`sbs.sim.engine_priority`). Off: `priority` is ignored."""
    schedule_low_priority_values_first: bool = False
    """SGLang `--schedule-low-priority-values-first`: lower `priority` values go first (default: higher)."""
    default_priority_value: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    """SGLang `--default-priority-value`: the priority of a request sent without one (with priority
    scheduling on). None: such a request gets the lowest priority, as in SGLang."""
    abort_on_priority_when_disabled: bool = False
    """SGLang `--abort-on-priority-when-disabled`: without priority scheduling, a request that sends a
    `priority` is refused (503) instead of having it ignored."""

    api_key: str | None = Field(None, repr=False)
    """SGLang `--api-key`: every route but `/health*`, `/ready*` and `/metrics*` (and OPTIONS) wants
    `Authorization: Bearer <key>`, else 401 `{"error": "Unauthorized"}` (`sglang.srt.utils.auth`)."""

    nnodes: int = Field(1, ge=1)
    """`--nnodes` of the engine group (reported only)."""
    node_rank: int = Field(0, ge=0)
    """`--node-rank`. Only node 0 (the group leader) serves the API; a node with rank > 0 is a worker
    that answers `/health` and nothing else, as a real non-leader node has no HTTP server to speak of."""

    @model_validator(mode="after")
    def _consistent(self) -> EngineSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank must be below nnodes ({self.nnodes}), got {self.node_rank}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size < self.dp_size:
            raise ValueError(
                f"chunked_prefill_size must give each of the {self.dp_size} DP ranks at least one token, "
                f"got {self.chunked_prefill_size}"
            )
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model_name

    @property
    def resolved_ep_size(self) -> int:
        return self.ep_size or max(self.dp_size, MIN_DEFAULT_EP)

    @property
    def chunk_tokens_per_rank(self) -> int:
        if self.chunked_prefill_size is None:
            return DEFAULT_CHUNK_PER_RANK
        return per_rank(self.chunked_prefill_size, self.dp_size)

    @property
    def max_running_per_rank(self) -> int:
        """0 = no cap beyond KV capacity."""
        if self.max_running_requests is None:
            return 0
        return per_rank(self.max_running_requests, self.dp_size)

    @property
    def resolved_balance(self) -> str:
        if self.load_balance_method != "auto":
            return self.load_balance_method
        return "follow_bootstrap_room" if self.mode == "prefill" else "round_robin"

    @property
    def priority_order(self) -> PriorityOrder | None:
        """How the engine models order their queues; None without priority scheduling (FCFS)."""
        if not self.enable_priority_scheduling:
            return None
        return PriorityOrder(self.schedule_low_priority_values_first, self.default_priority_value)

    @property
    def engine_type(self) -> str:
        """The `engine_type` metric label: `unified`, `prefill` or `decode`."""
        return "unified" if self.mode == "null" else self.mode


def describe_error(exc: ValidationError) -> str:
    """One line for the first error of a validation failure: the field, the problem, the value."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "settings"
    value = first.get("input")
    got = "" if isinstance(value, dict) else f", got {value!r}"
    return f"field '{where}': {first['msg']}{got}"
