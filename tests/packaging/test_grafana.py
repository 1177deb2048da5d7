"""manifests/grafana/sbs-dashboard.json: every metric a panel queries is one the code exports."""

from __future__ import annotations

import json
import re

import prometheus_client
import pytest
from prometheus_client.registry import CollectorRegistry
from sbs.operator import work_queue  # registers the operator's metrics in the default registry
from sbs.scheduler.service import metrics

from tests.packaging import live

DASHBOARD = live.MANIFESTS / "grafana" / "sbs-dashboard.json"
METRIC = re.compile(r"\b(sbs_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}

REQUIRED = {
    # what the dashboard must show (the scheduler's and operator's headline series)
    "sbs_ttft_seconds_bucket", "sbs_queue_wait_seconds_bucket", "sbs_e2e_latency_seconds_bucket",
    "sbs_batch_size_bucket", "sbs_dispatch_interval_seconds_bucket", "sbs_rank_imbalance_ratio",
    "sbs_suspect_engines", "sbs_requests_accepted_total", "sbs_requests_completed_total",
    "sbs_requests_errored_total", "sbs_requests_rejected_total",
    "sbs_operator_reconciles_total", "sbs_operator_reconcile_seconds_bucket",
    "sbs_operator_api_writes_total", "sbs_operator_queue_depth", "sbs_operator_leader",
    "sbs_operator_deployment_phase",
}  # fmt: skip


def series(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series name → label names, for every family the registry collects (samples or not)."""
    declared = {  # a labelled metric with no child yet has no samples to read its labels from
        name: set(getattr(collector, "_labelnames", ()))
        for collector, names in registry._collector_to_names.items()
        for name in names
    }
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        if not family.name.startswith("sbs_"):
            continue
        labels = {label for s in family.samples for label in s.labels} - {"le"}
        for suffix in SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = labels | declared.get(family.name + suffix, set())
    return out


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    m = metrics.Metrics()
    m.attach(
        lambda: metrics.StateSnapshot(
            ranks=[metrics.RankRow("prefill", "p0", 0, 1, 100)],
            imbalance={("prefill", "r1"): 1.0},
            engines=[metrics.EngineRow("prefill", "p0", "r1", "suspect")],
            core={},
        )
    )
    found = series(m.registry)
    found.update(series(prometheus_client.REGISTRY))
    assert work_queue.DEPLOYMENT_PHASE  # imported for its registration
    return found


def targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_every_queried_metric_exists_in_the_code(exported: dict[str, set[str]]) -> None:
    missing = [
        (title, name) for title, expr in targets() for name in METRIC.findall(expr) if name not in exported
    ]
    assert not missing, missing


def test_grouping_labels_exist_on_the_metric(exported: dict[str, set[str]]) -> None:
    problems = []
    for title, expr in targets():
        names = METRIC.findall(expr)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                if label != "le" and not any(label in exported[n] for n in names if n in exported):
                    problems.append((title, label, names))
    assert not problems, problems


def test_the_dashboard_shows_the_headline_metrics() -> None:
    queried = {name for _, expr in targets() for name in METRIC.findall(expr)}
    assert not REQUIRED - queried, REQUIRED - queried


def test_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "scheduler_job", "operator_job"}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["refId"] and t["expr"] for t in p["targets"]), p["title"]
            for t in p["targets"]:
                assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
                used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
                assert used <= variables, used
