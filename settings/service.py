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

from pydantic import Field, ValidationError, field_validator, model_validator
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
    """Prefill answers of one instance within this window are reported together: grouped into steps by
    SGLang's time stamps, or (an engine without them) taken as one forward step."""
    hung_after_s: float = Field(10.0, gt=0.0)
    """An engine with no successful poll for this long is hung: the requests in flight on it end (sent
    again elsewhere before their prefill completed, a retryable error after). Longer than
    `stale_after_s`, so a merely slow HTTP front is avoided for new requests before its running ones
    are given up."""
    stream_idle_timeout_s: float = Field(60.0, gt=0.0)
    """Once a decode stream has sent output, the longest silence tolerated before it is ended with a
    retryable error. SGLang streams every `--stream-interval` tokens (a decode step, well under a
    second) unless it retracts the request under KV pressure; the wait for the first output
    (queueing, a long prefill) is bounded by the engine's health and the request's deadline instead."""
    idle_connection_s: float = Field(15.0, gt=0.0)
    """An engine connection left idle this long is closed (aiohttp's keep-alive default): after a
    load peak, the pool shrinks back instead of holding every connection the peak opened."""
    api_key_file: str | None = None
    """A file holding the engines' API key (SGLang `--api-key`); when set, every engine call sends
    `Authorization: Bearer <key>`. Re-read when it changes."""


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
    max_bytes_per_token: float = Field(8.0, gt=0.0)
    """An upper bound of the tokenizer's bytes per token over a long text: a text prompt is refused as
    too long only when even this many bytes per token exceed the limit (the engine judges closer ones)."""


class CapacitySettings(SettingsModel):
    """The SBS prefill capacity model (per rank and step: fixed + per_token·tokens + per_pair·pairs).

    Defaults are the shared cost model's DeepSeek-V3 H800 EP32 coefficients; the core corrects them
    online with the measured/predicted step-time ratio, so they need to be right only within ~4×."""

    fixed_s: float = Field(0.0146, ge=0.0)
    per_token_s: float = Field(1.08e-4, ge=0.0)
    per_pair_s: float = Field(4.57e-9, ge=0.0)


class LimitsSettings(SettingsModel):
    """What one client connection or request may cost the service (docs/service.md, "Limits")."""

    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    """Largest request body; beyond it, 413."""
    header_timeout_s: float = Field(10.0, gt=0.0)
    """A request's head (request line and headers) must arrive within this time of its first byte (a
    new connection: of connecting); else the connection is closed (408 when part of a head came)."""
    body_timeout_s: float = Field(30.0, gt=0.0)
    """A request's body must arrive within this time of its head; else 408 and the connection closes."""
    keepalive_timeout_s: float = Field(75.0, gt=0.0)
    """An idle keep-alive connection is closed after this long (above common load balancers' 60 s)."""
    max_connections: int = Field(8192, ge=1)
    """Open client connections. At the cap a new connection closes the longest-idle one; when none is
    idle it is answered 503. Capped further by the process's open-file limit (3 per busy connection)."""
    max_json_depth: int = Field(64, ge=2)
    """Deepest nesting of arrays and objects in a JSON body; deeper is a 400."""
    inline_parse_bytes: int = Field(16 * 1024, ge=0)
    """Bodies up to this size are parsed on the event loop (at most ~5 ms, measured on hostile shapes);
    larger ones in `parse_workers` processes (~1 ms more), so a large body never stalls the others."""
    parse_workers: int = Field(2, ge=1)
    """Processes parsing large bodies (started on the first one)."""
    max_prompt_tokens: int | None = Field(None, ge=1)
    """Longest prompt accepted; None = the engines' own limit from `/server_info` (`max_req_input_len`,
    else `context_length`), unchecked when neither is known or the engines truncate."""
    max_request_id_length: int = Field(128, ge=1)
    """Longest client request id (`X-Request-Id` or `rid`): visible ASCII only, else 400."""


class AuthSettings(SettingsModel):
    """Bearer-token authentication of the service's API (`/health`, `/readyz`, `/metrics` and
    `/openapi.json` stay open)."""

    tokens_file: str = Field(min_length=1)
    """A file with one accepted token per line (blank lines ignored); re-read when it changes."""


class ReplicasSettings(SettingsModel):
    """Several scheduler replicas in front of one deployment (`docs/scaling.md`). Each replica holds a
    lease renewed every `renew_interval_s`; the live replicas partition the prefill instances
    (`sbs.scheduler.core.ownership`), each deciding only for its own; decode is shared. A replica that
    owns no prefill instance forwards requests to one that does."""

    backend: Literal["kubernetes", "directory"]
    """`kubernetes`: coordination.k8s.io Leases in `engines.kubernetes`'s namespace, labelled with its
    deployment; `directory`: lease files in `directory` (replicas on one host, e.g. benchmarks)."""
    directory: str | None = None
    id: str | None = Field(None, min_length=1, max_length=200)
    """This replica's name among its peers; None: $POD_NAME, else host name and port."""
    advertise_url: str | None = Field(None, pattern=r"^https?://")
    """Where peers send forwarded requests; None: http://$POD_IP:port (or 127.0.0.1 without $POD_IP)."""
    lease_duration_s: float = Field(2.0, gt=0.0, le=60.0)
    """A replica whose lease has not been renewed for this long is gone: its instances move."""
    renew_interval_s: float = Field(0.5, gt=0.0, le=20.0)
    """How often a replica renews its lease and lists its peers' (a dead one is noticed within
    `lease_duration_s` + 2 × this; a newcomer claims its share at its second renewal)."""

    @model_validator(mode="after")
    def _check(self) -> ReplicasSettings:
        if self.backend == "directory" and not self.directory:
            raise ValueError("backend 'directory' needs 'directory' (a folder shared by the replicas)")
        if self.renew_interval_s * 2 > self.lease_duration_s:
            raise ValueError(
                f"renew_interval_s ({self.renew_interval_s:g}) must be at most half of "
                f"lease_duration_s ({self.lease_duration_s:g})"
            )
        return self


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
    limits: LimitsSettings = LimitsSettings()
    auth: AuthSettings | None = None
    """None: the API is open (behind a NetworkPolicy, say); set: a token is required."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """`auto`: uvloop where it is installed (a dependency on Linux), else asyncio's own loop."""
    replicas: ReplicasSettings | None = None
    """None: this process is the deployment's only scheduler."""

    @model_validator(mode="after")
    def _replicas_backend(self) -> ServiceSettings:
        r = self.replicas
        if r is not None and r.backend == "kubernetes" and not self.engines.kubernetes:
            raise ValueError("replicas.backend 'kubernetes' needs engines.kubernetes (namespace, deployment)")
        return self

    @model_validator(mode="after")
    def _live_policy(self) -> ServiceSettings:
        name = self.scheduler.policy.type
        if name in scheduling.SIM_ONLY_POLICIES:
            raise ValueError(
                f"scheduler.policy {name!r} is the simulator's clairvoyant reference (it sees future "
                f"arrivals and exact step times); the live service cannot run it: use one of "
                f"{', '.join(scheduling.POLICY_NAMES)}"
            )
        return self


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
