"""Simulated cluster shape: prefill and decode instances of DP+EP engines, and the simulation knobs.

The default (`ds3-h800`) follows DeepSeek's published H800 layout: prefill instances of 4 nodes
(DP32/EP32, 16,384 tokens per rank per step as in the LMSYS recipe) and decode instances of 18 nodes
(DP144/EP144). Four prefill instances against one decode instance keeps prefill the contended tier,
which is where staggered batching acts; decode has headroom, as in DeepSeek's 1:1.4 node ratio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sbs.scheduler.core.types import InstanceSpec, Role
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK
from sbs.sim import cost_override
from sbs.sim.costmodel import CostModel
from sbs.sim.errors import ClusterConfigError, SimInputError


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoleConfig(_Model):
    """One role's instances; every instance has the same shape."""

    instances: int = Field(ge=1)
    nodes_per_instance: int = Field(ge=1)
    gpus_per_node: int = Field(8, ge=1)
    chunk_tokens: int = Field(DEFAULT_CHUNK_PER_RANK, ge=64)
    """Per-DP-rank token budget of one forward step (SGLang `--chunked-prefill-size` / DP size)."""
    max_running_requests: int = Field(0, ge=0)
    """Per-rank cap on running requests (decode; 0 = bounded by KV only)."""
    kv_capacity_tokens: int | None = Field(None, ge=1024)
    """Per-rank KV capacity; None = derived from GPU memory by the cost model."""

    @property
    def dp_size(self) -> int:
        return self.nodes_per_instance * self.gpus_per_node


class ClusterConfig(_Model):
    """A P/D-disaggregated cluster plus the simulator's physical knobs."""

    name: str = "custom"
    prefill: RoleConfig
    decode: RoleConfig
    prefix_cache: bool = True
    """Prefill ranks keep a radix cache of prompt blocks (hash_ids); hits are not recomputed."""
    engine_balance: str = "round_robin"
    """In-engine DP balancing for requests that arrive without a rank (SGLang `--load-balance-method`)."""
    jitter_cv: float = Field(0.03, ge=0.0, le=0.5)
    """Coefficient of variation of step time around the cost model (kernel noise, routing skew)."""
    network_s: float = Field(0.001, ge=0.0)
    """Scheduler → engine request transit."""
    bootstrap_s: float = Field(0.0, ge=0.0)
    """PD handshake: a request that reached its prefill instance is schedulable there this much later
    (SGLang schedules only bootstrapped requests; 0 = at once)."""
    bootstrap_spread: Literal["none", "exponential"] = "none"
    """How the handshake time varies per request: not at all (`bootstrap_s` each), or exponentially
    around the mean `bootstrap_s`, so that requests released together become schedulable one by one
    (the emulator measures p50 ≈ 0.4 and p90 ≈ 3 × its mean)."""
    prealloc_per_decode_step: bool = False
    """The handshake also waits for its decode instance's next step boundary (SGLang's decode
    pre-allocates KV for new requests once per scheduler iteration, i.e. per decode step)."""
    step_reports: Literal["answered", "every"] = "answered"
    """Which prefill steps the scheduler hears of. `answered`: as the service does, only steps that
    finished requests, started when their answers' stamps say (`scheduler.core.step_report`; SGLang
    reports no steps). `every`: each step with its exact start (an idealisation, for ablation)."""
    report_delay_s: float = Field(0.002, ge=0.0)
    """Engine → scheduler report transit (step completions, finished requests, snapshots)."""
    loads_period_s: float = Field(1.0, gt=0.0)
    """Period of `/v1/loads` snapshots polled by the scheduler."""
    seed: int = 0
    scheduler_replicas: int = Field(1, ge=1)
    """Scheduler replicas, each owning a partition of the prefill instances (`sim/replicas.py`)."""
    replica_spread: Literal["round_robin", "random"] = "round_robin"
    """How arrivals are spread over the replicas (a Kubernetes Service: round robin or random)."""
    cost_overrides: dict[str, float] = Field(default_factory=dict)
    """`CostParams` fields changed in this cluster's cost model (`sim/cost_override.py`, --cost-override)."""

    @field_validator("cost_overrides")
    @classmethod
    def _check_cost_overrides(cls, value: dict[str, float]) -> dict[str, float]:
        try:
            cost_override.check(value)
        except SimInputError as exc:
            raise ValueError(str(exc)) from None
        return value

    def cost_model(self) -> CostModel:
        """The step-cost model of this cluster's engines and of the policies' capacity model."""
        return cost_override.cost_model(self.cost_overrides)

    def specs(self, role: Role, kv_capacity_tokens: int) -> list[InstanceSpec]:
        rc = self.prefill if role is Role.PREFILL else self.decode
        kv = rc.kv_capacity_tokens or kv_capacity_tokens
        return [
            InstanceSpec(f"{role.value}-{i}", role, rc.dp_size, rc.chunk_tokens, kv, rc.max_running_requests)
            for i in range(rc.instances)
        ]


PRESETS: dict[str, ClusterConfig] = {
    "ds3-h800": ClusterConfig(
        name="ds3-h800",
        prefill=RoleConfig(instances=4, nodes_per_instance=4, chunk_tokens=DEFAULT_CHUNK_PER_RANK),
        decode=RoleConfig(instances=1, nodes_per_instance=18, max_running_requests=256),
    ),
    "ds3-h800-dp72": ClusterConfig(
        name="ds3-h800-dp72",
        prefill=RoleConfig(instances=3, nodes_per_instance=4, chunk_tokens=DEFAULT_CHUNK_PER_RANK),
        decode=RoleConfig(instances=2, nodes_per_instance=9, max_running_requests=256),
    ),
    "ds3-h800-3200": ClusterConfig(
        name="ds3-h800-3200",
        prefill=RoleConfig(instances=64, nodes_per_instance=4, chunk_tokens=DEFAULT_CHUNK_PER_RANK),
        decode=RoleConfig(instances=8, nodes_per_instance=18, max_running_requests=256),
    ),
    "small": ClusterConfig(
        name="small",
        prefill=RoleConfig(instances=2, nodes_per_instance=2, chunk_tokens=8192),
        decode=RoleConfig(instances=1, nodes_per_instance=2, max_running_requests=256),
    ),
}


def load_cluster(name_or_path: str) -> ClusterConfig:
    """A preset by name, or a JSON file with ClusterConfig's fields."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise ClusterConfigError(
            f"cluster {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ClusterConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ClusterConfigError(f"{path}: field '{where}': {first['msg']}") from None
