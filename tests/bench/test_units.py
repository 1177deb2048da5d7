"""Pure pieces of the live benchmarks: trace slicing, prompts, system names, ratios, tables, the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from sbs.bench import client, overhead, report, systems
from sbs.bench.emulated_cluster import BenchCluster, PinnedEpCost
from sbs.bench.h2h import shape_trace
from sbs.bench.procs import BenchError
from sbs.sim.costmodel import CostModel
from sbs.sim.emulator import tokens
from sbs.sim.trace import build_trace

from tests.sim.test_report import summary


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


def test_long_prompts_join_the_trace_before_the_load_is_set(tiny_trace: Path) -> None:
    cluster = BenchCluster(prefill_instances=1, prefill_dp=2, decode_instances=1, decode_dp=2)
    trace, nominal = shape_trace(
        str(tiny_trace), None, load=0.5, duration_s=2.0, cluster=cluster, long_prompts="25%:5000-6000"
    )
    longs = [r.prompt_tokens for r in trace.requests if r.prompt_tokens >= 5000]
    assert longs and all(5000 <= n <= 6000 for n in longs)
    assert trace.prompt_tokens_per_s / nominal == pytest.approx(0.5, rel=0.05)  # the long ones counted


@pytest.mark.parametrize(
    ("spec", "names"), [("3:5000", "give a share"), ("lots", "--long-prompts: expected COUNT:TOKENS")]
)
def test_long_prompts_are_a_share_of_the_trace(tiny_trace: Path, spec: str, names: str) -> None:
    with pytest.raises(BenchError, match=names):
        shape_trace(
            str(tiny_trace), None, load=0.5, duration_s=2.0, cluster=BenchCluster(), long_prompts=spec
        )


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


def test_the_default_h2h_field_is_issue_12s() -> None:
    # SBS, SGLang's routers plain and with the engines' prefill delayer, and our strongest immediate
    # baseline (eft, on the same step model as SBS).
    from sbs.bench.cli import DEFAULT_SYSTEMS

    specs = {s.name: s for s in systems.parse_systems(DEFAULT_SYSTEMS)}
    assert set(specs) == {"sbs", "eft", "sglang-router", "smg", "sglang-router+delayer", "smg+delayer"}
    assert specs["eft"].kind == "sbs-scheduler" and specs["smg+delayer"].prefill_flags


def test_a_delayer_variant_runs_the_same_system_before_delayer_prefills() -> None:
    plain, delayed = systems.parse_systems("smg:power_of_two,smg+delayer:power_of_two")
    assert (delayed.kind, delayed.policy, delayed.dp_aware) == (plain.kind, plain.policy, plain.dp_aware)
    assert plain.prefill_flags == () and delayed.prefill_flags == ("--enable-prefill-delayer",)
    assert delayed.name == "smg+delayer:power_of_two"


@pytest.mark.parametrize(
    "text", ["sbs,sbs", "direct", "sglang-router:least_load", "nginx", "smg+slow", "nginx+delayer"]
)
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


def test_client_summary_in_engine_time_with_itl_only_when_measured() -> None:
    trace = build_trace("t", [0.0, 1.0], [100, 200], [3, 1])
    m = client.Measurements(2)
    m.sent[:] = [0.0, 2.0]
    m.first[:] = [1.0, 3.0]
    m.end[:] = [2.0, 3.0]
    m.ok[:] = True
    no_gaps = m.summary(trace, 2.0, slo_ttft_s=1.0, slo_tpot_s=1.0)
    assert no_gaps["itl_p99_s"] is None and no_gaps["errors"] == 0
    assert no_gaps["ttft_mean_s"] == 0.5 and no_gaps["completed"] == 2
    m.itl_gaps += [0.4, 0.6]
    m.itl_weights += [1, 1]
    assert m.summary(trace, 2.0, slo_ttft_s=1.0, slo_tpot_s=1.0)["itl_p99_s"] == 0.3


FIXTURES = Path(__file__).parent / "fixtures"


def test_h2h_table_is_unchanged() -> None:
    summaries = {
        "sbs": {**summary(1.0), "errors": 0},
        "sglang-router": {**summary(2.0), "errors": 3, "itl_p99_s": None},
        "smg": {**summary(1.5), "errors": 50, "ttft_p90_s": 0.2},
    }
    got = report.table(summaries, units="(engine time: s)")
    assert got + "\n" == (FIXTURES / "h2h_table.txt").read_text()


def test_h2h_target_needs_both_mean_and_p90_35_percent_lower() -> None:
    summaries = {"sbs": {**summary(0.7), "errors": 0}, "smg": {**summary(1.0), "errors": 0}}
    summaries["sbs"]["ttft_p90_s"] = summaries["smg"]["ttft_p90_s"] * 0.6
    lines = report.table(summaries, units="").splitlines()[-2:]
    assert lines[0].startswith("sbs TTFT mean 30% lower") and lines[0].endswith("NOT met)")
    assert lines[1].startswith("sbs TTFT p90 40% lower") and lines[1].endswith(": met)")


def test_overhead_table_is_unchanged() -> None:
    def system(*figures: float | None, errors: tuple[int, int] = (0, 0)) -> dict[str, float | None]:
        keys = (
            "latency_p50_ms",
            "latency_p99_ms",
            "overhead_p50_ms",
            "overhead_p99_ms",
            "nonstream_latency_p50_ms",
            "overhead_nonstream_p50_ms",
            "nonstream_latency_p99_ms",
            "overhead_nonstream_p99_ms",
            "throughput_rps",
            "process_cpu_s",
            "rps_per_cpu_core",
            "cpu_us_per_request",
        )
        r = {k: v for k, v in zip(keys, figures, strict=True) if v is not None or k == "process_cpu_s"}
        r["latency_errors"], r["throughput_errors"] = errors
        return r

    nan = float("nan")
    doc = {
        "systems": {
            "direct": system(1.234, 5.6, None, None, 1.0, None, 4.0, None, 1234.5, None, nan, None),
            "sbs": system(1.9, 7.0, 0.666, 1.4, 1.5, 0.5, 5.0, 1.0, 900.0, 12.34, 300.0, 3333, errors=(1, 2)),
            "sglang-router": system(2.5, 9.0, 1.266, 3.4, 2.0, 1.0, 6.0, 2.0, 800.0, 10.0, 250.0, 4000.0),
            "smg": {"failed": "boom"},
        }
    }
    got = overhead.table(doc)
    assert got + "\n" == (FIXTURES / "overhead_table.txt").read_text()


def test_cpu_seconds_counts_the_processes_a_system_starts(tmp_path: Path) -> None:
    """A launcher whose work runs in a child is charged that child's CPU, while the child runs and
    after it has exited (reaped: the launcher's cutime/cstime)."""
    import subprocess
    import sys
    import time

    work = "import time; sum(range(2 * 10**7)); open({!r}, 'w').write(str(time.process_time())){}"
    for running in (True, False):
        out = tmp_path / f"cpu-{running}"
        child = work.format(str(out), "; time.sleep(30)" if running else "")
        proc = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "{child}"; sleep 30'])
        try:
            deadline = time.monotonic() + 60
            while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the child sleeps, or has exited and been reaped by sh
            child_cpu = float(out.read_text())
            assert overhead.cpu_seconds(proc.pid) >= 0.9 * child_cpu, running
        finally:
            proc.kill()
            proc.wait()
