"""Scheduler settings: one pydantic model per concern, frozen, unknown keys refused.

The live service reads the same models from its config file, the simulator from its CLI flags, and
the operator writes them into the scheduler's ConfigMap, so the schema is defined here once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SettingsModel(BaseModel):
    """Frozen, unknown keys refused: the base of every settings model."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchingSettings(SettingsModel):
    """Staggered batcher: when buffered requests are released to a prefill instance."""

    lead_s: float = Field(0.002, ge=0.0)
    """Release a batch this long before the instance's predicted free time, so the batch is in the
    engine when its current step ends (covers scheduler → engine transit; 2 ms on a LAN), plus the
    instance's measured admission lag (below)."""

    admission_lead_max_s: float = Field(0.5, ge=0.0)
    """Also release earlier by the instance's measured admission lag (dispatch → schedulable: transit
    and SGLang's PD bootstrap handshake) and twice the running step's expected error, at most this
    much or a quarter of that step, whichever is more; 0 = do not."""

    bypass: bool = True
    """Low-load bypass: an idle instance gets buffered work at once. Buffering must never add latency
    when there is no queue."""

    max_hold_s: float = Field(10.0, gt=0.0)
    """A request is never held longer than this: if no instance was predicted free in time (stale
    state, stuck engine) it is sent to the instance predicted to free first and waits there."""

    min_interval_s: float = Field(0.005, gt=0.0)
    """Lower clamp of the adaptive release interval (T̂ / instances)."""

    max_interval_s: float = Field(2.0, gt=0.0)
    """Upper clamp of the adaptive release interval."""

    ewma_alpha: float = Field(0.2, gt=0.0, le=1.0)
    """Weight of the newest measurement in the step-time and prediction-error averages."""

    fill_target: float = Field(1.0, gt=0.0, le=1.0)
    """Fraction of each rank's chunk budget a release fills at most (1.0 = full chunks)."""

    adaptive_cap: bool = True
    """Each release picks its per-rank step cap from the buffered prompts (`policies/sbs_cap.py`), at
    most `fill_target` × the chunk: full while a buffered prompt is longer than a chunk, else 3 × the
    buffer's median prompt (at least 1/16 of a chunk, and more under a backlog), raised to the largest
    prompt the release takes first. Short prompts then do not wait behind full-chunk lockstep steps,
    and long ones keep full chunks (docs/scheduling.md, "Adaptive step cap"). Off: every release fills
    to `fill_target` (and by default in `sbs-fcfs`, the paper's order, and the oracle, which picks its
    cap in hindsight)."""

    size_priority: float = Field(5.0, ge=0.0)
    """Buffered requests are released in order of arrival + this × their predicted prefill time
    (0 = strict arrival order): in a burst short prompts do not wait behind long ones. Only a
    buffering scheduler can do this; immediate dispatch leaves the order to each engine's queue."""

    size_priority_max_s: float = Field(2.0, ge=0.0)
    """The most a request is put back by `size_priority`, so long prompts never starve (it is a
    bounded unfairness: a long prompt's TTFT grows by at most this under a sustained burst)."""

    level_fill: bool = True
    """Straggler-aware release: a step's level is the predicted time of its slowest rank (its oldest
    request, the chunks committed by prompts in progress, or the buffered work spread over the ranks);
    every rank is filled up to that time and requests costing more wait for a step whose level they
    set, so short prompts do not wait behind a long one in the same lockstep step."""

    isolate_slow_steps: bool = True
    """A step whose committed chunks (a late chunk of a long prompt, attending to its whole prefix) take
    longer than a full fresh chunk gets no prompt of a chunk or less while another instance is predicted
    to end a step sooner: short prompts do not ride a step many times their own length. Prompts longer
    than a chunk wait for a long-prompt lane (an instance whose next step is such a slow continuation
    anyway), subject to `lane_cost`."""

    lane_cost: bool = True
    """A long prompt waits for (or is forced into) a lane only when the lane costs it less — its extra
    wait plus, per chunk, the lane's step above this instance's mean step — than starting it here costs
    the short prompts: `lane_short_weight` × their arrival rate ÷ the live instances × its own prefill
    time × its mean step (prefill time ÷ chunks) (`policies/sbs_lanes.py`). Off: every long prompt
    waits for a lane."""

    sooner_elsewhere: bool = True
    """A prompt longer than a chunk offered a step waits for another instance whose coming steps
    finish it sooner (each of its chunks as slow as the costliest chunk that instance carries into the
    same step), when it gains more there than starting it there costs the short prompts (`lane_cost`'s
    short cost; none where the next step is slow anyway): long prompts leave slow steps for faster
    ones instead of being stretched by deeper chunks (`policies/sbs_lanes.py`). Not for a prompt whose
    prefix is cached on the instance at hand. Needs `isolate_slow_steps`. Off: it starts where offered."""

    lane_rate_window_s: float = Field(30.0, gt=0.0)
    """The window over which `lane_cost` measures the short prompts' arrival rate."""

    lane_short_weight: float = Field(1.0, ge=0.0)
    """`lane_cost`'s weight (beta) of the short prompts' cost against the long prompt's own (0: no long
    prompt waits for a lane)."""

    lane_load_scaled: bool = True
    """Scale `lane_cost`'s short cost by rho / (1 - rho), rho the short prompts' load (tokens/s over the
    window) on the live instances other than the long prompt's and the lanes: at low load a long
    prompt starts at once instead of herding into a lane; near saturation it waits more readily. Off:
    the unscaled cost (issue 11's longmix at 0.1 of capacity: TTFT mean +17 % against eft)."""


class DecodeSettings(SettingsModel):
    """IQR-masked lexicographic decode placement (the paper's Algorithm 3)."""

    iqr_k: float = Field(1.5, ge=0.0)
    """Tukey fence: ranks with KV load above Q3 + k·IQR are masked for the round."""

    min_candidates: int = Field(4, ge=1)
    """Below this many candidate ranks the IQR mask is skipped (quartiles of few points are noise)."""

    output_kv_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the expected output length counted into a request's KV estimate at placement."""


class SyncSettings(SettingsModel):
    """Multi-tier state synchronisation with the engines."""

    transit_s: float = Field(0.005, ge=0.0)
    """Dispatches younger than a snapshot minus this are assumed unseen by it and re-applied on top."""

    suspect_overrun: float = Field(3.0, gt=1.0)
    """An instance whose step overruns its prediction by this factor (and 1 s) is marked suspect and
    skipped until it reports again."""


class StaggeredPolicy(SettingsModel):
    """What both staggered policies (`sbs`, `sbs-fcfs`) share: buffer, release just in time, water-fill
    prefill ranks, IQR decode."""

    batching: BatchingSettings = BatchingSettings()
    decode: DecodeSettings = DecodeSettings()
    prefix_credit: bool = True
    """Credit prefix-cache hits (from the requests' `hash_ids`) in the prefill capacity model."""
    chunk_sync: bool = True
    """Set the chunked prompts' carries from each prefill `/v1/loads` snapshot (`core.chunk_sync`).
    Off: they follow the core's own step predictions only (the ablation)."""

    @property
    def fcfs(self) -> bool:
        """Releases in arrival order, no request skipping a step's level (`sbs-fcfs`)."""
        return False

    @property
    def name(self) -> str:
        """The policy's name, as `policy_settings` parses it."""
        return self.type  # type: ignore[attr-defined]


class SbsPolicy(StaggeredPolicy):
    """Staggered Batch Scheduling with the size-aware release order (`batching.size_priority`)."""

    type: Literal["sbs"] = "sbs"


class SbsFcfsPolicy(StaggeredPolicy):
    """Staggered Batch Scheduling with the paper's FCFS release order: buffered requests go in arrival
    order (carries first), and none skips a step's level; everything else as `sbs`. Beside `sbs` it
    shows what the size-aware order is worth."""

    type: Literal["sbs-fcfs"] = "sbs-fcfs"
    batching: BatchingSettings = BatchingSettings(size_priority=0.0, adaptive_cap=False)

    @field_validator("batching", mode="before")
    @classmethod
    def _arrival_order(cls, value: object) -> object:
        """`size_priority` defaults to 0 here; any other value contradicts the policy and is refused.
        `adaptive_cap` defaults to off (the paper's full-fill steps; with the cap, arrival order lost
        7 % on Azure at 0.9)."""
        if isinstance(value, dict):
            return {"size_priority": 0.0, "adaptive_cap": False, **value}
        return value

    @field_validator("batching")
    @classmethod
    def _no_size_priority(cls, value: BatchingSettings) -> BatchingSettings:
        if value.size_priority:
            raise ValueError("sbs-fcfs releases in arrival order: batching.size_priority must be 0")
        return value

    @property
    def fcfs(self) -> bool:
        return True


class ImmediatePolicy(SettingsModel):
    """What every immediate-dispatch policy shares: the SGLang engine options a user of a plain router
    would switch on instead of installing SBS (`+delayer`, `+prio` after the policy's name)."""

    engine_delayer: bool = False
    """The prefill engines run SGLang's `--enable-prefill-delayer` (`sbs.sim.prefill_delayer`)."""
    engine_priority: bool = False
    """The engines run `--enable-priority-scheduling` and each request carries SBS's size-aware
    priority (arrival + `size_priority` × predicted prefill time, capped as SBS caps it)."""

    @property
    def name(self) -> str:
        """The policy's name with its engine options, as `policy_settings` parses it."""
        mods = [m for m, on in (("delayer", self.engine_delayer), ("prio", self.engine_priority)) if on]
        return "+".join([self.type, *mods])  # type: ignore[attr-defined]


DecodeRule = Literal["lexicographic", "round_robin", "random", "least_load", "power_of_two"]
"""How an immediate policy picks a decode rank: SBS's IQR-masked (batch, KV) rule, or a rank picker."""


class PickerPolicy(ImmediatePolicy):
    """An immediate policy that picks the decode rank itself (all but `sglang`, whose engines do).
    Every one gets the best simple decode rule by default, so TTFT and TPOT compare like for like."""

    decode_rule: DecodeRule = "lexicographic"
    """The decode rank: SBS's IQR-masked (batch, KV) rule, measured best for every picker
    (docs/scheduling.md), or a picker's own (`round_robin`, `random`, `least_load`, `power_of_two`)."""
    decode: DecodeSettings = DecodeSettings()
    """The lexicographic rule's IQR mask."""


class RoundRobinPolicy(PickerPolicy):
    """Immediate dispatch, cycling over all (instance, DP rank) pairs (router `--dp-aware`)."""

    type: Literal["round_robin"] = "round_robin"


class RandomPolicy(PickerPolicy):
    """Immediate dispatch to a uniformly random (instance, DP rank)."""

    type: Literal["random"] = "random"


class LeastLoadPolicy(PickerPolicy):
    """Immediate dispatch to the rank with the fewest outstanding tokens (in-flight accounting +
    engine snapshots, as SMG's `least_load` and Dynamo's KV router do)."""

    type: Literal["least_load"] = "least_load"


class PowerOfTwoPolicy(PickerPolicy):
    """Immediate dispatch: sample two ranks, take the less loaded (outstanding tokens)."""

    type: Literal["power_of_two"] = "power_of_two"


class SglangPolicy(ImmediatePolicy):
    """SGLang's own in-engine DP balancing: the router picks the instance (round robin, as
    sglang-router's PD mode without `--dp-aware`), the engine's DP controller picks the rank."""

    type: Literal["sglang"] = "sglang"
    engine_balance: Literal["round_robin", "follow_bootstrap_room", "total_requests", "total_tokens"] = (
        "total_tokens"
    )
    """SGLang `--load-balance-method` on the engines (`total_tokens` is the strongest)."""


class EftPolicy(PickerPolicy):
    """Immediate dispatch, earliest finish: each request, in arrival order, to the prefill instance and
    DP rank whose lockstep steps are predicted (capacity model, step reports) to finish it first."""

    type: Literal["eft"] = "eft"
    prefix_credit: bool = True
    """Charge each rank only the prompt tokens its prefix cache holds (from the requests' `hash_ids`, by
    the index SBS keeps), so the finish time weighs cache affinity against load, as cache-aware routers
    do. Off: every rank is charged the whole prompt (eft before 2026-12-07)."""


class OraclePolicy(StaggeredPolicy):
    """The simulator's clairvoyant reference (`sbs.scheduler.core.policies.oracle`): SBS's staggered
    batching fed exact step times and the arrivals of the next `horizon_s`, releasing shortest predicted
    prefill first, and holding an instance for an imminent request when that lowers the summed TTFT.
    Simulator only: the live service refuses it (it needs the future)."""

    type: Literal["oracle"] = "oracle"
    batching: BatchingSettings = BatchingSettings(
        size_priority=1000.0, size_priority_max_s=1000.0, adaptive_cap=False
    )
    """Shortest predicted prefill first (the order minimising the mean wait), in effect without a cap;
    the step cap is `fill_target`, picked in hindsight from `fill_targets` (no `adaptive_cap`)."""
    horizon_s: float = Field(2.0, ge=0.0)
    """How far ahead the simulator shows it the arrivals (0: exact step times only)."""
    fill_targets: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = (1.0, 0.5, 0.25)
    """Step caps (`batching.fill_target`) the simulator tries, keeping the run of lowest TTFT mean (a
    choice made in hindsight: small steps suit short prompts, full chunks long ones); empty: only
    `batching.fill_target`."""


AnyPolicy = (
    SbsPolicy
    | SbsFcfsPolicy
    | EftPolicy
    | RoundRobinPolicy
    | RandomPolicy
    | LeastLoadPolicy
    | PowerOfTwoPolicy
    | SglangPolicy
    | OraclePolicy
)

PolicySettings = Annotated[AnyPolicy, Field(discriminator="type")]

_CLASSES: dict[str, type[AnyPolicy]] = {
    "sbs": SbsPolicy,
    "sbs-fcfs": SbsFcfsPolicy,
    "eft": EftPolicy,
    "round_robin": RoundRobinPolicy,
    "random": RandomPolicy,
    "least_load": LeastLoadPolicy,
    "power_of_two": PowerOfTwoPolicy,
    "sglang": SglangPolicy,
    "oracle": OraclePolicy,
}

SIM_ONLY_POLICIES = ("oracle",)
"""Policies only the simulator runs: `policy_settings` knows them, the live service refuses them."""
POLICY_NAMES: tuple[str, ...] = tuple(n for n in _CLASSES if n not in SIM_ONLY_POLICIES)
"""The policies the live service runs."""
SIM_POLICY_NAMES: tuple[str, ...] = tuple(_CLASSES)
"""Every policy the simulator runs."""


class SchedulerSettings(SettingsModel):
    """Everything the core scheduler needs besides the cluster shape and the cost estimate."""

    policy: PolicySettings = SbsPolicy()
    sync: SyncSettings = SyncSettings()
    seed: int = 0
    """Seed of the scheduler's own RNG (random and power-of-two baselines)."""


ENGINE_OPTIONS = {"delayer": "engine_delayer", "prio": "engine_priority"}
"""Suffixes of an immediate policy's name (`sglang+delayer`, `eft+prio`) and the fields they set."""


def policy_settings(name: str) -> AnyPolicy:
    """Default settings of a policy by name, engine options after `+`; unknown names list the valid
    ones."""
    base, *mods = name.split("+")
    cls = _CLASSES.get(base)
    if cls is None:
        raise ValueError(
            f"unknown policy {base!r}; valid: {', '.join(POLICY_NAMES)} (simulator only: "
            f"{', '.join(SIM_ONLY_POLICIES)})"
        )
    bad = [m for m in mods if m not in ENGINE_OPTIONS]
    if bad:
        raise ValueError(f"policy {name!r}: unknown option {bad[0]!r} after '+'; options: delayer, prio")
    if mods and not issubclass(cls, ImmediatePolicy):
        raise ValueError(
            f"policy {name!r}: engine options (+{'/+'.join(ENGINE_OPTIONS)}) are for the "
            f"immediate policies; {base} decides the order and timing itself"
        )
    return cls(**{ENGINE_OPTIONS[m]: True for m in mods})
