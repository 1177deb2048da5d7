"""The scheduler service's settings (`sbs-scheduler run --config`): one pydantic model per concern,
frozen, unknown keys refused.

`ServiceSettings` embeds the core's `SchedulerSettings` (policy, sync) unchanged, so a config file, the
operator's ConfigMap and the simulator share one schema. The operator writes these models and the
service reads them, so they live here, below both. Any error names the field, e.g.
``config.yaml: field 'admission.max_buffered_requests': Input should be greater than or equal to 0``
(`validation_message`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator
from sbs.settings import scheduling
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK
from sbs.settings.scheduling import SettingsModel


class EngineConfig(SettingsModel):
    """One statically configured engine (the leader of a group: the URL clients would call)."""

    url: str
    """Base URL of the engine's HTTP server, e.g. ``http://10.0.0.5:30000``."""
    bootstrap_port: int | None = Field(None, ge=1, le=65535)
    """Prefill only: its `--disaggregation-bootstrap-port`; None = read from `/server_info`."""
    bootstrap_host: str | None = None
    """Prefill only: the host decodes pull KV from; None = the URL's host."""
    dp_size: int | None = Field(None, ge=1)
    """DP ranks of the engine; None = read from `/server_info` (its per-rank `internal_states`)."""
    chunk_tokens: int | None = Field(None, ge=1)
    """Per-rank token budget of one prefill step; None = `/server_info` or `instance_defaults`."""
    kv_capacity_tokens: int | None = Field(None, ge=1)
    """Per-rank KV capacity; None = `/server_info` or `instance_defaults`."""
    max_running_requests: int | None = Field(None, ge=0)
    """Per-rank running cap (decode; 0 = unlimited); None = `/server_info` or `instance_defaults`."""
    group: str = ""
    revision: str = "static"
    """Prefill and decode engines are paired only within one revision."""
    draining: bool = False
    """A draining engine gets no new requests; its in-flight ones finish."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


class InstanceDefaults(SettingsModel):
    """Engine shape used when neither the config nor the engine's `/server_info` says."""

    chunk_tokens: int = Field(DEFAULT_CHUNK_PER_RANK, ge=1)
    """Per-rank prefill budget."""
    kv_capacity_tokens: int = Field(131072, ge=2)
    max_running_requests: int = Field(0, ge=0)


class KubernetesDiscovery(SettingsModel):
    """Engines = the Ready leader pods of one SBSDeployment (what the operator configures)."""

    namespace: str = Field(min_length=1)
    deployment: str = Field(min_length=1)
    kubeconfig: str | None = None
    """None: the pod's ServiceAccount in a cluster, else $KUBECONFIG or ~/.kube/config."""
    default_port: int = Field(30000, ge=1, le=65535)
    """Engine HTTP port when a pod declares no `http` container port."""


class EnginesSettings(SettingsModel):
    """Discovery and synchronisation with the engines."""

    prefill: tuple[EngineConfig, ...] = ()
    decode: tuple[EngineConfig, ...] = ()
    kubernetes: KubernetesDiscovery | None = None
    """Discover engines from Kubernetes (in addition to any static ones)."""
    instance_defaults: InstanceDefaults = InstanceDefaults()
    loads_period_s: float = Field(0.5, gt=0.0)
    """Period of the per-engine `GET /v1/loads` poll (tier 3 of the state sync). SGLang republishes
    snapshots every 15 decode iterations, so polling faster than ~0.1 s buys nothing."""
    poll_timeout_s: float = Field(2.0, gt=0.0)
    """A poll taking longer than this counts as a failure."""
    fail_threshold: int = Field(2, ge=1)
    """Consecutive failed polls before an engine is marked suspect (a refused dispatch marks it at once)."""
    stale_after_s: float = Field(5.0, gt=0.0)
    """An engine with no successful poll for this long is suspect even if polls merely hang."""
    metrics_fallback: bool = True
    """When `/v1/loads` is missing (older SGLang), read per-rank gauges from `/metrics` instead."""
    resolve_retry_s: float = Field(1.0, gt=0.0)
    """How often an engine whose shape is not yet known (`/server_info` failing) is asked again."""
    step_merge_s: float = Field(0.002, ge=0.0)
    """Prefill completions of one instance within this window are inferred to be one forward step."""


class AdmissionSettings(SettingsModel):
    """Overload control: what is accepted, for how long, and how often it is retried."""

    max_buffered_requests: int = Field(4096, ge=0)
    """Requests waiting in the scheduler's buffer (accepted, not yet dispatched); beyond it, 429."""
    max_outstanding_requests: int = Field(16384, ge=1)
    """Accepted requests not yet finished, buffered or running; beyond it, 429."""
    retry_after_s: int = Field(1, ge=0)
    """`Retry-After` sent with 429 and retryable 503 answers."""
    request_timeout_s: float = Field(600.0, gt=0.0)
    """Per-request deadline from arrival to the last byte; a client's `X-Request-Timeout` may shorten it."""
    max_redispatches: int = Field(2, ge=0)
    """Times a request whose engine failed before its prefill completed is sent again elsewhere."""
    connect_timeout_s: float = Field(2.0, gt=0.0)
    """TCP connect timeout of the requests to the engines (a dead engine is found this fast)."""


class EstimateSettings(SettingsModel):
    """How the scheduler sizes a request without a tokenizer."""

    chars_per_token: float = Field(4.0, gt=0.0)
    """Prompt text is counted as len(utf-8 bytes) / this (`input_ids` are counted exactly)."""
    default_max_tokens: int = Field(256, ge=1)
    """Output estimate for chat requests without `max_tokens` (`/generate` defaults to SGLang's 128,
    `/v1/completions` to OpenAI's 16)."""
    prefix_block_tokens: int = Field(0, ge=0)
    """Block size of the prompt-prefix hashes the SBS policy credits cache hits with; 0 = off."""


class CapacitySettings(SettingsModel):
    """The SBS prefill capacity model (per rank and step: fixed + per_token·tokens + per_pair·pairs).

    Defaults are the shared cost model's DeepSeek-V3 H800 EP32 coefficients; the core corrects them
    online with the measured/predicted step-time ratio, so they need to be right only within ~4×."""

    fixed_s: float = Field(0.0146, ge=0.0)
    per_token_s: float = Field(1.08e-4, ge=0.0)
    per_pair_s: float = Field(4.57e-9, ge=0.0)


class ServiceSettings(SettingsModel):
    """Everything `sbs-scheduler` needs."""

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    """0 = any free port (tests)."""
    scheduler: scheduling.SchedulerSettings = scheduling.SchedulerSettings()
    engines: EnginesSettings = EnginesSettings()
    admission: AdmissionSettings = AdmissionSettings()
    estimate: EstimateSettings = EstimateSettings()
    capacity: CapacitySettings = CapacitySettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def validation_message(exc: ValidationError, where: str = "") -> str:
    """One line naming the first offending field: ``<where>: field 'a.b': <msg>, got <input>``."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # A discriminated union puts the tag into the path (`policy.sbs.batching`); users wrote `policy.batching`.
    loc = [
        p for i, p in enumerate(loc) if not (i and loc[i - 1] == "policy" and p in scheduling.POLICY_NAMES)
    ]
    field = ".".join(loc) or "(root)"
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f", got {got!r}"
    prefix = f"{where}: " if where else ""
    return f"{prefix}field '{field}': {first['msg']}{shown}"
