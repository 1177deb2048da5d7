"""The emulated cluster of the live benchmarks: its shape, the engines' command lines, and the same
shape for the simulator (capacity, `--load`, cross-check).

The default is 2 prefill instances × DP8 and 1 decode instance × DP16, each costed as the ranks of an
EP32 group (the emulator's default: DeepSeek-V3's experts need about 32 GPUs to leave room for KV).
The simulator ties EP to DP (`RoleConfig.dp_size`), so `PinnedEpCost` hands it the cluster's EP size
instead; everything else (step costs, KV capacity, the capacity yardstick of `--load`) is the
simulator's own code.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbs.bench import procs
from sbs.settings.engine_shape import DEFAULT_CHUNK_PER_RANK
from sbs.sim.cluster import ClusterConfig, RoleConfig
from sbs.sim.costmodel import CostModel
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.trace import Trace

ENGINE_BALANCE = "total_tokens"
"""SGLang `--load-balance-method` of every engine, whichever system is in front. It is the strongest
in-engine DP balancer (the simulator's `sglang` policy default), so routers that do not pin DP ranks
get SGLang's best rank choice; systems that pin ranks (`routed_dp_rank`) are not affected by it. It
also lets SMG's `--dp-aware` work: SMG does not align the bootstrap room with the prefill rank, which
a prefill following the room (`auto`) refuses."""


BOOTSTRAP_TIMEOUT_S = 60.0
"""Wall seconds a PD prefill waits for its decode's handshake (SGLang's default is 300 s). Far above
any wait of a working handshake at the loads we run, and short enough that a handshake that never
completes does not hold the end of a run for five minutes. A decode's wait for the KV, queueing at
the prefill included, keeps SGLang's 300 s: long prompts queue for longer than a minute near capacity."""


class PinnedEpCost(CostModel):
    """The shared cost model with every `ep_size` argument replaced by one EP size (the simulator
    passes the DP size; our instances are ranks of a larger EP group, as in the emulator)."""

    def __init__(self, ep_size: int) -> None:
        super().__init__()
        self.pinned_ep = ep_size

    def prefill_step_s(self, *args, ep_size: int, **kwargs):  # type: ignore[no-untyped-def,override]
        return super().prefill_step_s(*args, ep_size=self.pinned_ep, **kwargs)

    def decode_step_s(self, rank_batch, rank_kv_tokens, *, ep_size: int) -> float:  # type: ignore[no-untyped-def]
        return super().decode_step_s(rank_batch, rank_kv_tokens, ep_size=self.pinned_ep)

    def prefill_coefficients(self, *, ep_size: int) -> tuple[float, float, float]:
        return super().prefill_coefficients(ep_size=self.pinned_ep)

    def kv_capacity_tokens_per_rank(self, *, ep_size: int) -> int:
        return super().kv_capacity_tokens_per_rank(ep_size=self.pinned_ep)


@dataclass(frozen=True)
class BenchCluster:
    """Shape of the emulated cluster. Every instance is one `sbs-engine` process."""

    prefill_instances: int = 2
    prefill_dp: int = 8
    decode_instances: int = 1
    decode_dp: int = 16
    chunk_tokens: int = DEFAULT_CHUNK_PER_RANK
    """Per-rank prefill budget of one step (SGLang `--chunked-prefill-size` = this × DP)."""
    decode_max_running: int = 256
    """Per-rank running cap of the decode (SGLang `--max-running-requests` = this × DP), as the
    simulator's presets."""
    ep_size: int = 32
    """EP size the cost model charges every instance with."""
    jitter_cv: float = 0.03
    """Step-time noise, the simulator's default (seeded per engine)."""
    engine_balance: str = ENGINE_BALANCE
    """The engines' `--load-balance-method` (see `ENGINE_BALANCE`)."""

    def describe(self) -> str:
        return (
            f"{self.prefill_instances}× prefill DP{self.prefill_dp} (chunk {self.chunk_tokens}/rank) + "
            f"{self.decode_instances}× decode DP{self.decode_dp} (≤{self.decode_max_running} running/rank), "
            f"costed as EP{self.ep_size}, H800"
        )

    def cost(self) -> PinnedEpCost:
        return PinnedEpCost(self.ep_size)

    def sim_cluster(self, *, loads_period_s: float = 0.5) -> ClusterConfig:
        """The same cluster for `sbs.sim` (with `cost()`): KV capacity from the cost model at our EP
        size, the engines' balancer and step noise, the service's default load-poll period."""
        kv = self.cost().kv_capacity_tokens_per_rank(ep_size=self.ep_size)
        return ClusterConfig(
            name="bench",
            prefill=RoleConfig(
                instances=self.prefill_instances,
                nodes_per_instance=1,
                gpus_per_node=self.prefill_dp,
                chunk_tokens=self.chunk_tokens,
                kv_capacity_tokens=kv,
            ),
            decode=RoleConfig(
                instances=self.decode_instances,
                nodes_per_instance=1,
                gpus_per_node=self.decode_dp,
                chunk_tokens=self.chunk_tokens,
                max_running_requests=self.decode_max_running,
                kv_capacity_tokens=kv,
            ),
            engine_balance="round_robin" if self.engine_balance == "auto" else self.engine_balance,
            jitter_cv=self.jitter_cv,
            loads_period_s=loads_period_s,
        )

    def nominal_prefill_tok_s(self, trace: Trace) -> float:
        """`sbs.sim.nominal_capacity.nominal_prefill_tok_s` of this cluster: the yardstick of `--load`."""
        return nominal_prefill_tok_s(self.sim_cluster(), self.cost(), trace)

    def engine_argv(
        self,
        role: str,
        index: int,
        *,
        port: int,
        bootstrap_port: int | None,
        time_factor: float,
        stream_interval: int,
    ) -> list[str]:
        """`sbs-engine` with SGLang's own flags (0.5.23 spelling `--attn-dp-size`, so `/server_info`
        reports `dp_size` 1 and `attn_dp_size` N as SGLang 0.5.23 does)."""
        dp = self.prefill_dp if role == "prefill" else self.decode_dp
        argv = [
            *procs.console_script("sbs-engine", "sbs.sim.emulator.cli"),
            "--disaggregation-mode",
            role,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--attn-dp-size",
            str(dp),
            "--tp-size",
            str(dp),
            "--ep-size",
            str(self.ep_size),
            "--chunked-prefill-size",
            str(self.chunk_tokens * dp),
            "--load-balance-method",
            self.engine_balance,
            "--time-factor",
            f"{time_factor:g}",
            "--jitter-cv",
            f"{self.jitter_cv:g}",
            "--seed",
            str(index + (0 if role == "prefill" else 100)),
            "--bootstrap-timeout",
            f"{BOOTSTRAP_TIMEOUT_S:g}",
            "--log-level",
            "warning",
        ]
        if role == "prefill":
            assert bootstrap_port is not None
            argv += ["--disaggregation-bootstrap-port", str(bootstrap_port)]
        else:
            argv += [
                "--max-running-requests",
                str(self.decode_max_running * dp),
                "--stream-interval",
                str(stream_interval),
            ]
        return argv
