"""Pure pieces of the live benchmarks: trace slicing, prompts, system names, ratios, the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from sbs.bench import client, report, systems
from sbs.bench.cluster import BenchCluster, PinnedEpCost
from sbs.bench.h2h import shape_trace
from sbs.bench.procs import BenchError
from sbs.sim.costmodel import CostModel
from sbs.sim.emulator import tokens


@pytest.mark.parametrize("load", [0.3, 0.85, 1.2])
def test_slice_offers_the_load_it_asks_for(tiny_trace: Path, load: float) -> None:
    cluster = BenchCluster(prefill_instances=1, prefill_dp=2, decode_instances=1, decode_dp=2)
    trace, nominal = shape_trace(str(tiny_trace), None, load=load, duration_s=1.0, cluster=cluster)
    assert trace.prompt_tokens_per_s / nominal == pytest.approx(load, rel=0.02)
    assert trace.duration_s == pytest.approx(1.0, rel=0.3)


def test_short_trace_is_repeated_to_the_duration(tiny_trace: Path) -> None:
    trace, _ = shape_trace(str(tiny_trace), None, load=0.1, duration_s=600.0, cluster=BenchCluster())
    assert 590 < trace.duration_s <= 600
    assert len(trace) > 24


@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_prompt_text_is_exactly_n_emulated_tokens(n: int) -> None:
    assert len(tokens.encode(client.prompt_text(123, n))) == n


def test_prompts_never_share_a_prefix_block() -> None:
    heads = {tuple(tokens.encode(client.prompt_text(i, 64))[:3]) for i in range(20000)}
    assert len(heads) == 20000


def test_system_names_parse_with_default_router_policies() -> None:
    specs = systems.parse_systems("sbs,least_load,sglang-router,smg:power_of_two")
    assert [(s.kind, s.policy) for s in specs] == [
        ("sbs-scheduler", "sbs"),
        ("sbs-scheduler", "least_load"),
        ("sglang-router", systems.DEFAULT_ROUTER_POLICY["sglang-router"]),
        ("smg", "power_of_two"),
    ]


@pytest.mark.parametrize("text", ["sbs,sbs", "direct", "sglang-router:least_load", "nginx"])
def test_bad_system_names_are_refused(text: str) -> None:
    with pytest.raises(BenchError, match="--systems"):
        systems.parse_systems(text)


def test_best_other_is_the_lowest_p90_with_at_most_1pct_errors() -> None:
    s = {
        "sbs": {"ttft_p90_s": 1.0, "ttft_mean_s": 0.5, "errors": 0, "completed": 1000},
        "a": {"ttft_p90_s": 2.0, "ttft_mean_s": 1.0, "errors": 8, "completed": 992},
        "b": {"ttft_p90_s": 1.5, "ttft_mean_s": 1.0, "errors": 30, "completed": 970},
        "c": {"ttft_p90_s": 3.0, "ttft_mean_s": 0.1, "errors": 0, "completed": 1000},
    }
    assert report.best_other(s) == "a"
    r = report.ratios(s, "a")
    assert r["sbs"]["ttft_p90_s"] == 0.5
    assert r["b"]["errors_minus_base"] == 22


def test_pinned_ep_cost_charges_the_pinned_ep() -> None:
    plain, pinned = CostModel(), PinnedEpCost(32)
    assert pinned.kv_capacity_tokens_per_rank(ep_size=8) == plain.kv_capacity_tokens_per_rank(ep_size=32)
    assert pinned.prefill_coefficients(ep_size=8) == plain.prefill_coefficients(ep_size=32)
    step = pinned.prefill_step_s([4096] * 8, [4096.0 * 1000] * 8, ep_size=8)
    assert step == plain.prefill_step_s([4096] * 8, [4096.0 * 1000] * 8, ep_size=32)


def test_sim_cluster_has_the_emulated_shape() -> None:
    c = BenchCluster()
    sim = c.sim_cluster()
    assert (sim.prefill.instances, sim.prefill.dp_size) == (2, 8)
    assert (sim.decode.instances, sim.decode.dp_size) == (1, 16)
    assert sim.decode.max_running_requests == 256
    argv = c.engine_argv("decode", 0, port=1, bootstrap_port=None, time_factor=1.0, stream_interval=8)
    assert argv[argv.index("--max-running-requests") + 1] == str(256 * 16)
    assert argv[argv.index("--chunked-prefill-size") + 1] == str(16384 * 16)
