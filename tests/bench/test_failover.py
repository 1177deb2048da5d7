"""`sbs-bench failover` and the pieces it stands on: our scheduler as `POLICY@N` replicas, the client
spreading requests over them, the verdict on a killed replica's requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sbs.bench import cli, failover, systems
from sbs.bench.client import Measurements
from sbs.bench.procs import BenchError


def test_replicas_are_named_policy_at_n_for_our_scheduler_only() -> None:
    (spec,) = systems.parse_systems("sbs@3")
    assert (spec.kind, spec.policy, spec.replicas) == ("sbs-scheduler", "sbs", 3)
    for bad in ("smg@2", "sbs@0", "sbs@x", "sbs@17"):
        with pytest.raises(BenchError, match="POLICY@N"):
            systems.parse_systems(bad)


def test_the_verdict_counts_the_victims_requests_open_at_the_kill() -> None:
    m = Measurements(6)
    m.sent[:] = [0.0, 0.1, 0.2, 0.3, 1.5, 0.4]
    m.target[:] = [1, 1, 1, 0, 0, 1]
    m.end[:] = [0.5, np.nan, np.nan, 2.0, 3.0, np.nan]  # request 0 finished before the kill at 1 s
    m.ok[:] = [True, False, False, True, True, False]
    m.failed[:] = [np.nan, 1.02, 1.3, np.nan, np.nan, 0.8]  # request 5 failed before the kill
    v = failover._verdict(m, victim=1, kill_s=1.0)
    assert v["victim_in_flight"] == 2 and v["victim_in_flight_failed"] == 2
    assert v["victim_fail_after_kill_max_s"] == pytest.approx(0.3)
    assert v["survivor_requests"] == 2 and v["survivor_lost"] == 0 and v["sent_to_victim_after_kill"] == 0


def test_a_killed_replica_fails_its_open_requests_and_the_survivor_loses_none(
    tiny_trace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "failover.json"
    argv = [
        "failover", "--trace", str(tiny_trace), "--duration", "4", "--load", "0.5", "--prefill", "2x2",
        "--decode", "1x2", "--time-factor", "1", "--stream-interval", "2", "--drain-timeout", "60",
        "--log-dir", str(tmp_path / "logs"), "--json", str(out),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    doc = json.loads(out.read_text())
    assert sorted(k for keys in doc["owners_before"].values() for k in keys) == ["prefill-0", "prefill-1"]
    assert all(doc["owners_before"].values()), "each replica owned a prefill instance before the kill"
    assert doc["victim_in_flight"] == doc["victim_in_flight_failed"] + doc["victim_in_flight_completed"]
    assert doc["victim_in_flight_completed"] == 0
    assert doc["survivor_requests"] > 0 and doc["survivor_lost"] == 0, doc["errors_by_kind"]
    (counters,) = doc["survivor_counters"].values()
    assert counters["accepted"] == counters["completed"] + counters["errored"] and counters["errored"] == 0
    assert list(doc["owners_after"].values()) == [["prefill-0", "prefill-1"]]
    assert 0 < doc["handover_s"] < 30
