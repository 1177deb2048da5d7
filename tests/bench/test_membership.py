"""`sbs-bench membership`: a prefill group drained and re-added under load, end to end on a tiny
cluster (accounting and phases, not the latency target), and the pieces it reports with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sbs.bench import cli, membership, systems
from sbs.bench.client import Measurements
from sbs.bench.emulated_cluster import BenchCluster
from sbs.bench.procs import BenchError
from sbs.scheduler.service.file_discovery import file_records
from sbs.sim.loaders import load_trace
from sbs.sim.trace import build_trace


def test_the_timeline_refuses_windows_that_overlap_the_next_change() -> None:
    t = membership.Timeline(warmup_s=5, steady_s=10, drain_s=2, out_s=8, after_s=8, window_s=8)
    t.check()
    assert (t.drain_at_s, t.readd_at_s, t.total_s) == (15, 23, 31)
    with pytest.raises(BenchError, match="--window"):
        membership.Timeline(out_s=20, window_s=30).check()
    with pytest.raises(BenchError, match="--drain"):
        membership.Timeline(drain_s=40, out_s=30).check()
    with pytest.raises(BenchError, match="--steady"):
        membership.Timeline(steady_s=0).check()


def test_load_is_measured_against_the_cluster_without_the_drained_group() -> None:
    assert membership.reduced(BenchCluster(prefill_instances=4)).prefill_instances == 3
    with pytest.raises(BenchError, match="at least 2"):
        membership.reduced(BenchCluster(prefill_instances=1))


def test_poisson_arrivals_offer_the_load_steadily(tiny_trace: Path) -> None:
    timeline = membership.Timeline(warmup_s=10, steady_s=50, drain_s=10, out_s=30, after_s=30, window_s=30)
    cluster = BenchCluster(prefill_instances=3, prefill_dp=2, decode_instances=1, decode_dp=2)
    kw = {"load": 0.5, "timeline": timeline, "cluster": cluster, "seed": 1}
    trace, nominal, full = membership.make_trace(str(tiny_trace), None, arrivals="poisson", **kw)
    assert nominal == membership.reduced(cluster).nominal_prefill_tok_s(load_trace(str(tiny_trace)))
    assert full == cluster.nominal_prefill_tok_s(load_trace(str(tiny_trace))) > nominal
    assert trace.duration_s == pytest.approx(timeline.total_s, rel=0.05)
    assert 0.4 < trace.prompt_tokens_per_s / nominal < 0.6
    halves = np.histogram([r.arrival_s for r in trace.requests], bins=2, range=(0, timeline.total_s))[0]
    assert abs(halves[0] - halves[1]) < 0.2 * len(trace)
    again, _, _ = membership.make_trace(str(tiny_trace), None, arrivals="poisson", **kw)
    assert again.requests == trace.requests
    replayed, _, _ = membership.make_trace(str(tiny_trace), None, arrivals="trace", **kw)
    assert replayed.prompt_tokens_per_s / nominal == pytest.approx(0.5, rel=0.1)


def test_the_engines_file_marks_then_leaves_out_the_drained_group() -> None:
    eng = systems.Engines(prefill=[("http://p0:1", 10), ("http://p1:2", 11)], decode=["http://d0:3"])
    for doc in (membership.engines_doc(eng), membership.engines_doc(eng, draining=1)):
        recs = file_records(doc, "engines.json")  # what the scheduler reads
        assert sorted(recs) == ["decode@http://d0:3", "prefill@http://p0:1", "prefill@http://p1:2"]
    assert file_records(membership.engines_doc(eng, draining=1), "f")["prefill@http://p1:2"].draining
    assert not file_records(membership.engines_doc(eng), "f")["prefill@http://p1:2"].draining
    assert sorted(file_records(membership.engines_doc(eng, without=1), "f")) == [
        "decode@http://d0:3",
        "prefill@http://p0:1",
    ]


def test_phases_count_requests_by_send_time_and_judge_p90_against_steady_state() -> None:
    trace = build_trace("t", [0, 1, 2, 3, 4], [100, 100, 300, 300, 300], [5] * 5)
    m = Measurements(5)
    m.sent[:] = [2.0, 4.0, 6.0, 8.0, 8.5]  # wall s; time factor 2 → engine s 1, 2, 3, 4, 4.25
    m.first[:] = [2.2, 4.2, 7.0, 9.0, np.nan]
    m.ok[:] = [True, True, True, True, False]
    m.errors["HTTP 503"] = 1
    steady = membership.phase_stats(m, trace, 2.0, 0.0, 2.5)
    assert (steady["count"], steady["completed"], steady["errors"]) == (2, 2, 0)
    assert steady["ttft_p90_s"] == pytest.approx(0.1)
    assert steady["prompt_tok_s"] == pytest.approx(200 / 2.5)
    later = membership.phase_stats(m, trace, 2.0, 2.5, 5.0)
    assert (later["count"], later["completed"], later["errors"]) == (3, 2, 1)
    assert later["ttft_p90_s"] == pytest.approx(0.5)
    empty = membership.phase_stats(m, trace, 2.0, 10.0, 20.0)
    assert empty["count"] == 0 and empty["ttft_p90_s"] is None
    v = membership.verdict({"steady": steady, "after_drain": later, "after_readd": steady})
    assert v["after_drain"]["ratio"] == pytest.approx(5.0) and not v["after_drain"]["pass"]
    assert v["after_readd"]["ratio"] == pytest.approx(1.0) and v["after_readd"]["pass"]
    assert not membership.verdict({"steady": steady, "after_drain": empty, "after_readd": steady})[
        "after_drain"
    ]["pass"]
    acc = membership.accounting(m)
    assert acc == {"accepted": 5, "completed": 4, "errors": 1, "lost": 0}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--window", "40"], "--window"),
        (["--drain", "-1"], "--drain"),
        (["--prefill", "1x8"], "--prefill"),
        (["--load", "0"], "--load"),
        (["--time-factor", "0"], "--time-factor"),
        (["--policy", "vllm"], "--policy"),
        (["--arrivals", "bursty"], "--arrivals"),
    ],
)
def test_bad_membership_option_exits_2_naming_it(
    args: list[str], needle: str, tiny_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["membership", "--trace", str(tiny_trace), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sbs-bench: error:") and needle in err and "\n" not in err


def test_a_group_drained_and_readded_under_load_loses_no_request(tiny_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "membership.json"
    argv = [
        "membership", "--trace", str(tiny_trace), "--load", "0.5", "--prefill", "2x2", "--decode", "1x2",
        "--time-factor", "1", "--stream-interval", "2", "--warmup", "1", "--steady", "2", "--drain", "0.5",
        "--out", "2", "--after", "2", "--window", "2", "--drain-timeout", "60",
        "--log-dir", str(tmp_path / "logs"), "--json", str(out),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    doc = json.loads(out.read_text())
    acc = doc["accounting"]
    assert acc["accepted"] == doc["requests"] > 0
    assert acc["lost"] == 0 and acc["completed"] + acc["errors"] == acc["accepted"]
    assert acc["errors"] == 0, doc["errors_by_kind"]
    sc = doc["scheduler_counters"]
    assert sc["accepted"] == sc["completed"] + sc["errored"] == doc["requests"]
    at = doc["changes_at_engine_s"]
    assert (
        at["drain"] < at["drain_seen"] <= at["remove"] < at["remove_seen"] <= at["readd"] < at["readd_seen"]
    )
    assert set(doc["phases"]) == {"steady", "after_drain", "after_readd", "out_settled"}
    for phase in doc["phases"].values():
        assert phase["count"] > 0 and phase["completed"] + phase["errors"] == phase["count"]
        assert phase["ttft_p90_s"] is not None
    assert set(doc["verdict"]) == {"target_ratio", "after_drain", "after_readd"}
    assert doc["drained"].startswith("prefill@http://127.0.0.1:")
