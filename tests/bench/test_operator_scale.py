"""`sbs-bench operator-scale` at small scale on the real control plane, and its metric helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sbs.bench import operator_scale, scale_metrics
from sbs.bench.procs import BenchError

BUCKETS = {0.1: 2.0, 0.5: 6.0, 1.0: 10.0, math.inf: 10.0}


def test_quantile_interpolates_within_the_bucket_like_prometheus():
    assert scale_metrics.quantile(0.5, BUCKETS) == pytest.approx(0.1 + 0.4 * (3 / 4))
    assert scale_metrics.quantile(0.99, BUCKETS) == pytest.approx(0.5 + 0.5 * (3.9 / 4))
    later = {**BUCKETS, 0.1: 12.0, 0.5: 16.0, 1.0: 20.0, math.inf: 20.0}
    assert scale_metrics.quantile(0.5, later, BUCKETS) == pytest.approx(0.1 * 5 / 10)  # only the new ten
    assert math.isnan(scale_metrics.quantile(0.5, BUCKETS, BUCKETS))
    assert scale_metrics.observations(later, BUCKETS) == 10


def test_flow_schemas_put_each_request_of_the_account_in_one_class_at_its_usual_priority():
    schemas = scale_metrics.flow_schemas("p", "ns", "sa")
    assert [s["metadata"]["name"] for s in schemas] == ["p-lease", "p-write", "p-read"]
    precedences = [s["spec"]["matchingPrecedence"] for s in schemas]
    assert precedences == sorted(precedences) and min(precedences) > 1  # after `exempt` only
    for s in schemas:
        assert s["spec"]["priorityLevelConfiguration"]["name"] == "workload-low"
        (rule,) = s["spec"]["rules"]
        assert rule["subjects"] == [
            {"kind": "ServiceAccount", "serviceAccount": {"name": "sa", "namespace": "ns"}}
        ]


def test_client_count_reads_only_the_accounts_flow_schemas():
    page = "\n".join([
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="p-read",priority_level="w"} 7',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="p-write",priority_level="w"} 3',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="global-default",priority_level="x"} 50',
        'apiserver_flowcontrol_rejected_requests_total{flow_schema="p-read",priority_level="x",reason="q"} 1',
        'apiserver_request_total{code="200",verb="GET"} 100',
        'apiserver_request_total{code="201",verb="POST"} 20',
    ])  # fmt: skip
    first = scale_metrics.client_count(page, "p", t=0.0, wall=0.0)
    assert first.by_class == {"lease": 0.0, "write": 3.0, "read": 7.0}
    assert first.total == 11 and first.all_clients == 120
    later = scale_metrics.client_count(page.replace("} 7", "} 27"), "p", t=10.0, wall=10.0)
    window = later.minus(first)
    assert window["requests"] == 20 and window["per_s"] == 2.0 and window["by_class"]["read"] == 20


def test_bad_shapes_are_refused_before_anything_starts():
    with pytest.raises(BenchError, match="need 68 nodes"):
        operator_scale.ScaleRun(nodes=40, deployments=2).check()
    with pytest.raises(BenchError, match="GROUPSxNODES"):
        operator_scale.parse_groups("4x0", "--prefill-groups")


@pytest.mark.e2e
def test_small_run_brings_every_deployment_to_ready_and_counts_the_operators_requests(tmp_path: Path):
    run = operator_scale.ScaleRun(
        nodes=40,
        deployments=2,
        prefill=(1, 4),
        decode=(1, 9),
        idle_s=12,
        slice_s=3,
        ready_timeout_s=120,
        log_dir=tmp_path,
    )
    lines: list[str] = []
    report = operator_scale.run_scale(run, lines.append)

    assert any("all 2 Ready" in line for line in lines)
    cp = report["control_plane"]
    assert cp["timings_s"]["nodes_ready"] > 0
    for when in ("rss_mib_at_start", "rss_mib_converged", "rss_mib_end"):
        rss = cp[when]
        assert all(rss[n] > 0 for n in ("kube-apiserver", "etcd", "kwok"))
        assert rss["total"] >= rss["kube-apiserver"] + rss["etcd"] + rss["kwok"]
    conv = report["convergence"]
    assert conv["deployments_ready"] == 2 and conv["engine_pods_ready"] == conv["engine_pods"] == 26
    assert conv["apply_to_all_ready_s"] > 0
    during, after = (
        report["operator_requests"]["convergence"],
        report["operator_requests"]["after_convergence"],
    )
    # The operator created every engine pod itself: the API server counted them under its identity.
    assert during["audit_calls"]["create pods"] >= 26
    assert during["by_class"]["write"] >= 26 and during["per_s"] > 0
    # Both of the API server's records of the operator agree, but for the requests at a window's
    # edges: the audit log stamps them on arrival, the counters count them on dispatch, and each
    # counter read is stamped at its middle (`edge_s` sums the reads' half-durations). On a busy
    # machine a short window at 100 requests/s moves by a dozen that way.
    for window in (during, after):
        slack = 3 + window["per_s"] * (window["edge_s"] + 0.05)
        assert abs(window["audit_requests"] - window["requests"]) <= slack, window
    assert after["by_class"]["lease"] > 0  # it kept renewing its Lease
    rec = report["reconcile"]["convergence"]
    assert rec["reconciles"] >= 2 and 0 < rec["p50_s"] <= rec["p99_s"]
    assert 0 < report["operator_rss_mib"]["converged"] <= report["operator_rss_mib"]["peak"]
    assert after["by_class"]["write"] == 0  # converged: nothing left to write
    assert report["hot_loop"]["ok"], report["hot_loop"]["line"]
    assert len(operator_scale.summary_lines(report)) > 10
