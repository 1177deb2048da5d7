"""The `SBSDeployment` API (`sbs.dev/v1alpha1`), defined once: the CRD in `crds/` is generated from it.

A deployment serves one model with prefill/decode disaggregation. Each role runs `groups` engine
groups; a group is one multi-node SGLang server (one pod per node, rank 0 the leader) with
DP-attention and expert parallelism over `nodesPerGroup × gpusPerNode` GPUs. The SBS scheduler
sits in front of the leaders.

Cross-field rules (`crd_model.Rule`) are checked by the API server (CEL) and by pydantic alike.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field
from sbs.operator.api_refs import EnvVar, NetworkPolicyPeer, SchedulerAuth, SecretKeyRef
from sbs.operator.crd_model import ApiModel, Rule, StatusModel, rules_config
from sbs.operator.placement_spec import GangScheduling, Placement

GROUP = "sbs.dev"
VERSION = "v1alpha1"
KIND = "SBSDeployment"
PLURAL = "sbsdeployments"
SINGULAR = "sbsdeployment"
SHORT_NAMES = ("sbsd",)
API_VERSION = f"{GROUP}/{VERSION}"

MAX_NAME_LENGTH = 40
"""Deployment names are short so that child names (`<name>-prefill-3-ab12c-17`) stay DNS labels."""

H800_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H800"}
SGLANG_IMAGE = "lmsysorg/sglang:v0.5.23"
SBS_IMAGE = "ghcr.io/sbs-project/sbs:0.1.0"

TransferBackend = Literal["mooncake", "nixl", "mori", "mooncake_tcp", "fake"]
A2ABackend = Literal["none", "deepep", "mooncake", "nixl", "mori", "flashinfer"]
DeepEPMode = Literal["auto", "normal", "low_latency"]
PolicyName = Literal[
    "sbs", "sbs-fcfs", "eft", "round_robin", "random", "least_load", "power_of_two", "sglang"
]


class ModelSource(ApiModel):
    """The model to serve."""

    path: str = Field(min_length=1, max_length=1024, description="`--model-path`: a local path or hub id.")
    served_name: str | None = Field(
        default=None,
        max_length=256,
        description="`--served-model-name`; the path's last component by default.",
    )
    trust_remote_code: bool = Field(
        default=False, description="`--trust-remote-code`: run Python code shipped with the model."
    )
    revision: str | None = Field(default=None, max_length=128, description="`--revision` on the hub.")


ENGINE_SETTINGS_RULES = (
    Rule(
        "self.port != self.bootstrapPort",
        "must differ from port",
        ".bootstrapPort",
        lambda s: s.port != s.bootstrap_port,
    ),
    Rule(
        "self.distInitPort != self.port && self.distInitPort != self.bootstrapPort",
        "must differ from port and bootstrapPort",
        ".distInitPort",
        lambda s: s.dist_init_port not in (s.port, s.bootstrap_port),
    ),
)


class EngineSettings(ApiModel):
    """What every engine pod of the deployment shares."""

    model_config = rules_config(ENGINE_SETTINGS_RULES)
    rules: ClassVar[tuple[Rule, ...]] = ENGINE_SETTINGS_RULES

    image: str = Field(default=SGLANG_IMAGE, min_length=1, max_length=512, description="SGLang image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    port: int = Field(default=30000, ge=1024, le=65535, description="HTTP port of each leader.")
    bootstrap_port: int = Field(
        default=8998, ge=1024, le=65535, description="`--disaggregation-bootstrap-port` of prefill leaders."
    )
    dist_init_port: int = Field(default=5757, ge=1024, le=65535, description="Port of `--dist-init-addr`.")
    transfer_backend: TransferBackend = Field(
        default="mooncake", description="`--disaggregation-transfer-backend` (KV transfer between roles)."
    )
    ib_devices: str | None = Field(
        default=None, max_length=1024, description="`--disaggregation-ib-device`, e.g. mlx5_0,mlx5_1."
    )
    shm_size: str = Field(
        default="64Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$", description="Size of the memory-backed /dev/shm."
    )
    host_network: bool = Field(
        default=False,
        description="Run engine pods in the host network (RDMA); NetworkPolicies then do not apply to them.",
    )
    ipc_lock: bool = Field(
        default=True,
        description="Add the IPC_LOCK capability (memory pinned for RDMA); the namespace must then allow Pod "
        "Security `privileged`. Off: `baseline` suffices, where the runtime's memlock limit is unlimited.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="SGLang flags appended to every engine's command line.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Literals or Secret/ConfigMap keys (`valueFrom`)."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="A Secret key holding the engines' `--api-key`; the scheduler sends it to them.",
    )


class Parallelism(ApiModel):
    """Parallelism of one engine group; 0 means "every GPU of the group" (nodesPerGroup × gpusPerNode)."""

    tp: int = Field(default=0, ge=0, le=4096, description="`--tp-size`.")
    attn_dp: int = Field(default=0, ge=0, le=4096, description="`--attn-dp-size` (DP attention ranks).")
    ep: int = Field(default=0, ge=0, le=4096, description="`--ep-size` (expert parallelism).")


class RdmaResource(ApiModel):
    name: str = Field(
        default="rdma/ib", min_length=1, max_length=253, description="Device-plugin resource name."
    )
    count: int = Field(default=8, ge=0, le=64, description="Devices per pod (0: none requested).")


class Resources(ApiModel):
    """Per-pod resources; GPUs are `gpusPerNode` of `nvidia.com/gpu`."""

    cpu: str = Field(default="64", pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    memory: str = Field(default="1024Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")
    rdma: RdmaResource = Field(default_factory=RdmaResource)


ROLE_SPEC_RULES = (
    Rule(
        "self.parallelism.tp == 0 || self.parallelism.tp == self.nodesPerGroup * self.gpusPerNode",
        "must equal nodesPerGroup × gpusPerNode (one rank per GPU)",
        ".parallelism.tp",
        lambda r: r.parallelism.tp in (0, r.nodes_per_group * r.gpus_per_node),
    ),
    Rule(
        "self.parallelism.attnDp == 0 "
        "|| (self.nodesPerGroup * self.gpusPerNode) % self.parallelism.attnDp == 0",
        "must divide nodesPerGroup × gpusPerNode",
        ".parallelism.attnDp",
        lambda r: (
            r.parallelism.attn_dp == 0 or (r.nodes_per_group * r.gpus_per_node) % r.parallelism.attn_dp == 0
        ),
    ),
    Rule(
        "self.parallelism.ep == 0 || (self.nodesPerGroup * self.gpusPerNode) % self.parallelism.ep == 0",
        "must divide nodesPerGroup × gpusPerNode",
        ".parallelism.ep",
        lambda r: r.parallelism.ep == 0 or (r.nodes_per_group * r.gpus_per_node) % r.parallelism.ep == 0,
    ),
    Rule(
        "!has(self.chunkedPrefillSize) || self.chunkedPrefillSize == 0 || self.chunkedPrefillSize % "
        "(self.parallelism.attnDp == 0 ? self.nodesPerGroup * self.gpusPerNode "
        ": self.parallelism.attnDp) == 0",
        "must be a multiple of the DP-attention size (each rank gets chunkedPrefillSize / attnDp tokens)",
        ".chunkedPrefillSize",
        lambda r: not r.chunked_prefill_size or r.chunked_prefill_size % r.attn_dp_size == 0,
    ),
)


class RoleSpec(ApiModel):
    """One role's engine groups."""

    model_config = rules_config(ROLE_SPEC_RULES)
    rules: ClassVar[tuple[Rule, ...]] = ROLE_SPEC_RULES

    groups: int = Field(default=1, ge=0, le=256, description="Engine groups (replicas) of this role.")
    groups_owner: Literal["Static", "External"] = Field(
        default="Static",
        description="Static: `groups` rules. External: the role's SBSRoleScaler (HPA, KEDA, a policy) rules.",
    )
    nodes_per_group: int = Field(default=1, ge=1, le=64, description="Nodes (pods) per engine group.")
    gpus_per_node: int = Field(default=8, ge=1, le=16, description="GPUs per node, all used by one pod.")
    parallelism: Parallelism = Field(default_factory=Parallelism)
    moe_a2a_backend: A2ABackend = Field(default="deepep", description="`--moe-a2a-backend`.")
    deepep_mode: DeepEPMode | None = Field(
        default=None, description="`--deepep-mode`; normal for prefill and low_latency for decode by default."
    )
    chunked_prefill_size: int | None = Field(
        default=None, ge=0, le=16_777_216, description="`--chunked-prefill-size` for the whole group."
    )
    max_running_requests: int | None = Field(
        default=None, ge=1, le=1_000_000, description="`--max-running-requests`."
    )
    mem_fraction_static: float | None = Field(
        default=None, gt=0, lt=1, description="`--mem-fraction-static`."
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(
        default_factory=lambda: dict(H800_SELECTOR),
        description="Node labels the pods require (H800 by default).",
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] | None = Field(default=None, description="Extra pod affinity terms (merged).")
    topology_key: str = Field(
        default="network.topology.kubernetes.io/block",
        max_length=253,
        description="Pods of a group share one domain of this node label (empty: no packing).",
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=128, description="Flags for this role only."
    )

    @property
    def gpus_per_group(self) -> int:
        return self.nodes_per_group * self.gpus_per_node

    @property
    def tp_size(self) -> int:
        return self.parallelism.tp or self.gpus_per_group

    @property
    def attn_dp_size(self) -> int:
        return self.parallelism.attn_dp or self.gpus_per_group

    @property
    def ep_size(self) -> int:
        return self.parallelism.ep or self.gpus_per_group


def _prefill_default() -> RoleSpec:
    return RoleSpec(groups=1, nodes_per_group=4, chunked_prefill_size=524_288)


def _decode_default() -> RoleSpec:
    return RoleSpec(groups=1, nodes_per_group=9)


class SchedulerSpec(ApiModel):
    """The SBS scheduler in front of the leaders."""

    replicas: int = Field(default=1, ge=0, le=16)
    image: str = Field(default=SBS_IMAGE, min_length=1, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    port: int = Field(default=8000, ge=1, le=65535)
    policy: PolicyName = Field(default="sbs", description="`sbs` or an immediate baseline, for A/B.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="SBS parameters (the scheduler's `SchedulerSettings` fields: batching, decode, sync).",
    )
    cpu: str = Field(default="4", pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    memory: str = Field(default="8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")
    auth: SchedulerAuth | None = Field(default=None, description="Require a token on the scheduler's API.")
    allowed_clients: list[NetworkPolicyPeer] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Who may reach the scheduler's port (NetworkPolicy peers); default: pods of the "
        "deployment's namespace and the SBS operator's pods.",
    )


UPDATE_STRATEGY_RULES = (
    Rule(
        "self.maxUnavailable > 0 || self.maxSurge > 0",
        "maxSurge and maxUnavailable cannot both be 0",
        ".maxSurge",
        lambda u: u.max_unavailable > 0 or u.max_surge > 0,
    ),
)


class UpdateStrategy(ApiModel):
    """How a change to engine pods rolls out: group by group, both roles together."""

    model_config = rules_config(UPDATE_STRATEGY_RULES)
    rules: ClassVar[tuple[Rule, ...]] = UPDATE_STRATEGY_RULES

    max_unavailable: int = Field(default=0, ge=0, le=256, description="Groups per role that may be down.")
    max_surge: int = Field(default=1, ge=0, le=256, description="Extra groups per role during an update.")
    max_skew_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="How far (in % of groups) one role's rollout may lead the other's.",
    )
    drain_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="A replaced group gets no new requests this long before deletion.",
    )


RESTART_POLICY_RULES = (
    Rule(
        "self.maxBackoffSeconds >= self.backoffSeconds",
        "must be at least backoffSeconds",
        ".maxBackoffSeconds",
        lambda r: r.max_backoff_seconds >= r.backoff_seconds,
    ),
)


class RestartPolicy(ApiModel):
    """What happens when a pod of a group fails: the whole group is recreated."""

    model_config = rules_config(RESTART_POLICY_RULES)
    rules: ClassVar[tuple[Rule, ...]] = RESTART_POLICY_RULES

    policy: Literal["RecreateGroup", "None"] = "RecreateGroup"
    backoff_seconds: int = Field(default=10, ge=0, le=3600, description="Delay before the first recreation.")
    max_backoff_seconds: int = Field(default=300, ge=0, le=86_400, description="Cap of the doubling backoff.")
    max_restarts: int = Field(
        default=5, ge=0, le=1000, description="Recreations of one group before it is marked failed."
    )
    reset_after_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="A group Ready this long after its last recreation starts afresh.",
    )
    not_ready_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description=(
            "A group with a pod Running but not Ready (after its startup probe passed: a hung engine), "
            "or on a NotReady node, this long is recreated, and its pods stuck Terminating on a NotReady "
            "node are force-deleted; 0: never."
        ),
    )


SPEC_RULES = (
    Rule(
        "self.engine.transferBackend != 'fake' || self.prefill.groups == 0 || self.decode.groups == 0",
        "the fake transfer backend moves no KV between roles; set mooncake, nixl or mori",
        ".engine.transferBackend",
        lambda s: s.engine.transfer_backend != "fake" or s.prefill.groups == 0 or s.decode.groups == 0,
    ),
    Rule(
        "!has(self.prefill.chunkedPrefillSize) || self.prefill.chunkedPrefillSize != 0",
        "the prefill role needs a chunked-prefill size (or leave it unset)",
        ".prefill.chunkedPrefillSize",
        lambda s: s.prefill.chunked_prefill_size != 0,
    ),
)


class SBSDeploymentSpec(ApiModel):
    """Desired state of an SBSDeployment."""

    model_config = rules_config(SPEC_RULES)
    rules: ClassVar[tuple[Rule, ...]] = SPEC_RULES

    model: ModelSource
    engine: EngineSettings = Field(default_factory=EngineSettings)
    prefill: RoleSpec = Field(default_factory=_prefill_default)
    decode: RoleSpec = Field(default_factory=_decode_default)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    update_strategy: UpdateStrategy = Field(default_factory=UpdateStrategy)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    gang_scheduling: GangScheduling = Field(default_factory=GangScheduling)
    placement: Placement = Field(default_factory=Placement)

    def role(self, name: str) -> RoleSpec:
        return self.prefill if name == "prefill" else self.decode


ROLES = ("prefill", "decode")

# ---- status (written by the operator only) -------------------------------------------------------


class Condition(StatusModel):
    """A `metav1.Condition`."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int = 0


class RoleStatus(StatusModel):
    desired: int = 0
    ready: int = 0
    updated: int = 0
    summary: str = Field(default="0/0", description="ready/desired, for `kubectl get`.")
    revision: str = ""


class GroupRestart(StatusModel):
    role: str
    index: int
    count: int = 0
    last_restart_time: str = ""
    failed: bool = False


class SchedulerStatus(StatusModel):
    endpoint: str = ""
    ready: int = 0
    desired: int = 0
    summary: str = "0/0"


class SBSDeploymentStatus(StatusModel):
    observed_generation: int = 0
    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] = "Pending"
    revision: str = Field(
        default="", description="Serving revision: prefill and decode pair only within one."
    )
    prefill: RoleStatus = Field(default_factory=RoleStatus)
    decode: RoleStatus = Field(default_factory=RoleStatus)
    scheduler: SchedulerStatus = Field(default_factory=SchedulerStatus)
    group_restarts: list[GroupRestart] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)

    def role(self, name: str) -> RoleStatus:
        return self.prefill if name == "prefill" else self.decode


NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

ROOT_RULES = (
    Rule(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"at most {MAX_NAME_LENGTH} characters (child objects are named after it)",
        ".metadata.name",
        lambda d: len(d.metadata.get("name", "")) <= MAX_NAME_LENGTH,
    ),
    Rule(
        f"self.metadata.name.matches('{NAME_PATTERN}')",
        "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter "
        "(it names Services)",
        ".metadata.name",
        lambda d: re.fullmatch(NAME_PATTERN, d.metadata.get("name", "")) is not None,
    ),
)


class SBSDeployment(StatusModel):
    """The whole object as the operator reads it."""

    rules: ClassVar[tuple[Rule, ...]] = ROOT_RULES
    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SBSDeploymentSpec
    status: SBSDeploymentStatus = Field(default_factory=SBSDeploymentStatus)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace", "default")

    @property
    def uid(self) -> str:
        return self.metadata.get("uid", "")

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 0))
