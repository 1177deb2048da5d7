"""`sbs.sim.capacity` and `sbs-sim capacity` / `--load-basis capacity`: the backlog criterion, the bracket
and bisection on a known oracle, real runs on the `small` preset, and the CLI's output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from sbs.settings import scheduling
from sbs.sim import capacity, load_basis
from sbs.sim.cluster import PRESETS
from sbs.sim.costmodel import CostModel
from sbs.sim.loaders import load_trace
from sbs.sim.nominal_capacity import nominal_prefill_tok_s
from sbs.sim.trace import Trace
from sbs.sim.workload import load_scaled, synthetic

from tests.sim.test_cli import assert_one_line_error, azure_csv, invoke

SMALL = PRESETS["small"]
SETTINGS = capacity.CapacitySettings()


# -- the criterion ---------------------------------------------------------------------------------


def test_deficit_of_an_overloaded_fifo_is_one_minus_capacity_over_offered() -> None:
    offered, served = 100.0, 70.0  # requests (1 token each) per second, the server starting empty
    arrival = np.arange(3000) / offered
    first_token = (np.arange(3000) + 1) / served
    d = capacity.deficit(arrival, first_token, np.ones(3000))
    assert d == pytest.approx(1 - served / offered, abs=0.01)


def test_deficit_of_a_stable_queue_is_zero_whatever_its_delay() -> None:
    arrival = np.arange(3000) / 100.0
    for delay in (0.1, 3.0):
        assert abs(capacity.deficit(arrival, arrival + delay, np.full(3000, 500.0))) < 0.01


def test_requests_never_served_stay_in_the_backlog() -> None:
    arrival = np.arange(3000) / 100.0
    first_token = arrival + 0.2
    first_token[arrival > 20.0] = np.nan  # dropped
    assert capacity.deficit(arrival, first_token, np.ones(3000)) == pytest.approx(0.48, abs=0.01)


# -- the search on an oracle with a known capacity -------------------------------------------------


def oracle_search(
    cap: float, settings: capacity.CapacitySettings = SETTINGS, slow: float = 1.0, misread: float = 1.0
) -> capacity.PolicyCapacity:
    """Drive `Search` with a fluid queue of capacity `cap` (multiples of nominal), TTFT p90 =
    slow·(1 + 5·(load/cap)⁴) s, runs of 120 s; overloaded runs report `misread` × their deficit."""
    search = capacity.Search("oracle", settings)
    while loads := search.next_loads():
        purpose = "search" if search.searching else "knee"
        for x in loads:
            d = max(0.0, 1.0 - cap / x)
            sustainable, d = d <= 0.05, d * misread
            p90 = 1.0 + 5.0 * (x / cap) ** 4
            search.observe(capacity.Probe(x, x * 1000.0, d, sustainable, p90 * slow, 10, 0, purpose, 120.0))
    return search.result(1000.0)


@pytest.mark.parametrize("cap", [0.05, 0.37, 0.97, 1.0, 1.7, 3.7])
def test_bracket_and_bisection_converge_to_the_capacity(cap: float) -> None:
    r = oracle_search(cap)
    assert r.status == "bracketed"
    lo, hi = r.sustainable_load, r.upper_load
    assert lo is not None and hi is not None
    # sustainable up to cap / 0.95 (5 % backlog growth allowed); bracket within the 3 % precision
    assert lo <= cap / 0.95 < hi <= lo * 1.03
    # the capacity is what the highest sustainable load served: the oracle's cap itself
    assert r.capacity_load == pytest.approx(min(lo, cap))
    assert r.capacity_load == pytest.approx(cap, rel=0.03)
    assert r.capacity_tok_s == pytest.approx(r.capacity_load * 1000.0)
    searched = [p for p in r.probes if p.purpose == "search"]
    assert len(searched) <= 10
    assert len(r.probes) == len(searched) + len(SETTINGS.knee_grid)


@pytest.mark.parametrize("misread", [0.5, 2.0])
def test_a_misleading_served_rate_costs_bisection_steps_not_the_answer(misread: float) -> None:
    r = oracle_search(0.37, capacity.CapacitySettings(knee=False), misread=misread)
    lo, hi = r.sustainable_load, r.upper_load
    assert lo is not None and hi is not None
    assert lo <= 0.37 / 0.95 < hi <= lo * 1.03
    assert len(r.probes) <= 14


def test_knee_is_where_ttft_p90_doubles_from_its_light_load_value() -> None:
    r = oracle_search(1.0)
    assert r.ttft_p90_ref_s == pytest.approx(1.0, abs=0.01)
    # 1 + 5·u⁴ = 2 at u ≈ 0.67 of the capacity; interpolated between the grid's 0.5 and 0.7
    assert r.knee_load is not None and r.capacity_load is not None
    assert 0.5 < r.knee_load / r.capacity_load < 0.7
    assert r.to_dict()["knee_of_capacity"] == pytest.approx(r.knee_load / r.capacity_load)


def test_a_capacity_measured_with_slow_first_tokens_carries_a_warning() -> None:
    assert oracle_search(1.0).warning is None
    slow = oracle_search(1.0, slow=5.0)  # TTFT p90 about 30 s at the capacity, runs of 120 s
    assert slow.warning is not None and "--duration" in slow.warning
    assert slow.to_dict()["warning"] == slow.warning


def test_capacity_out_of_range_is_reported_as_a_bound() -> None:
    high = oracle_search(10.0)
    assert (
        high.status == "above max load" and high.capacity_load == high.sustainable_load == SETTINGS.max_load
    )
    low = oracle_search(0.001, capacity.CapacitySettings(knee=False))
    assert low.status == "below min load" and low.capacity_load is None and low.capacity_tok_s == 0.0
    assert min(p.load for p in low.probes) == SETTINGS.min_load


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        capacity.CapacitySettings(precision=0.0)
    with pytest.raises(ValueError, match="min_load"):
        capacity.CapacitySettings(start_load=8.0)


# -- real simulations on the small preset ----------------------------------------------------------

BASE = synthetic(rate_rps=50.0, duration_s=20.0, seed=1, lengths=(2000, 20))
NOMINAL = nominal_prefill_tok_s(SMALL, CostModel(), BASE)


def at(load: float) -> Trace:
    return load_scaled(BASE, load * NOMINAL)


def probe(load: float, policy: str = "eft") -> capacity.Probe:
    args = (at(load), SMALL, scheduling.policy_settings(policy), load, "search", 0.05)
    return capacity.run_probe(args)


def test_overload_is_unsustainable_and_light_load_sustainable() -> None:
    heavy, light = probe(3.0), probe(0.3)
    assert not heavy.sustainable and heavy.deficit > 0.4
    assert heavy.served_tok_s < 0.5 * heavy.offered_tok_s
    assert light.sustainable and abs(light.deficit) < 0.02
    assert light.offered_tok_s == pytest.approx(0.3 * NOMINAL, rel=0.01)


def test_measure_reports_each_policy_and_is_the_same_in_parallel() -> None:
    pols = [scheduling.policy_settings(p) for p in ("eft", "sbs", "eft")]
    settings = capacity.CapacitySettings(knee=False)
    seen: list[tuple[str, float]] = []
    serial = capacity.measure(
        at,
        SMALL,
        pols,
        nominal_tok_s=NOMINAL,
        settings=settings,
        on_probe=lambda n, p: seen.append((n, p.load)),
    )
    assert [r.policy for r in serial] == ["eft", "sbs"]
    assert len(seen) == sum(len(r.probes) for r in serial)
    for r in serial:
        assert r.status == "bracketed"
        assert r.upper_load is not None and r.sustainable_load is not None and r.capacity_load is not None
        assert r.upper_load / r.sustainable_load <= 1.03
        assert r.capacity_load <= r.sustainable_load
    parallel = capacity.measure(at, SMALL, pols, nominal_tok_s=NOMINAL, settings=settings, jobs=2)
    assert [r.capacity_load for r in parallel] == [r.capacity_load for r in serial]


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    rows = [(0.05 * i, 1500 + 97 * (i % 11), 20 + i % 7) for i in range(400)]
    return azure_csv(tmp_path / "trace.csv", rows)


def run(command: str, trace: Path, *extra: str) -> Result:
    return invoke(
        command, "--trace", str(trace), "--cluster", "small", "--jobs", "1", "--duration", "10", *extra
    )


def nominal_of(trace: Path) -> float:
    return nominal_prefill_tok_s(SMALL, CostModel(), load_trace(str(trace), None))


def test_capacity_command_prints_lines_and_table_and_writes_json(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cap.json"
    result = run("capacity", trace, "--policies", "eft,sbs", "--no-knee", "--json", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("eft: capacity ") and "of nominal" in line for line in lines)
    assert any(line.startswith("sbs: capacity ") for line in lines)
    assert "capacity tok/s" in result.stdout and "knee/cap" in result.stdout
    assert "capacity eft search @ 1.000 of nominal" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["duration_s"] == 10 and doc["nominal_prefill_tok_s"] == pytest.approx(nominal_of(trace))
    assert set(doc["policies"]) == {"eft", "sbs"}
    for entry in doc["policies"].values():
        assert entry["status"] == "bracketed"
        assert entry["capacity_tok_s"] == pytest.approx(
            entry["capacity_of_nominal"] * doc["nominal_prefill_tok_s"]
        )
        assert entry["runs"] == len(entry["probes"]) >= 2
        assert 0 < entry["served_tok_s"] <= entry["sustainable_tok_s"] * 1.1
        assert entry["knee_tok_s"] is None
        assert any(p["sustainable"] for p in entry["probes"]) and not all(
            p["sustainable"] for p in entry["probes"]
        )


def test_capacity_at_given_loads_runs_every_policy_at_each(trace: Path, tmp_path: Path) -> None:
    """`--at`: no search; each policy at the same loads, judged as the search judges a run."""
    out = tmp_path / "at.json"
    result = run("capacity", trace, "--policies", "eft,sbs", "--at", "3,0.3", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "eft growth / served" in result.stdout and "eft/sbs" in result.stdout
    assert "capacity sbs at @ 3.000 of nominal" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["nominal_prefill_tok_s"] == pytest.approx(nominal_of(trace))
    for probes in doc["at"].values():
        assert [p["load_of_nominal"] for p in probes] == [0.3, 3.0]  # ascending, whatever the order given
        assert [p["sustainable"] for p in probes] == [True, False]
        assert {p["purpose"] for p in probes} == {"at"}
        assert probes[1]["served_tok_s"] < probes[1]["offered_tok_s"]


def test_compare_scales_the_load_to_the_best_measured_baseline(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    result = run(
        "compare",
        trace,
        "--policies",
        "sbs,eft",
        "--load",
        "0.5",
        "--load-basis",
        "capacity",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "load basis: capacity of eft" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["load_basis"] == "capacity" and doc["capacity_policy"] == "eft"
    assert set(doc["capacities"]) == {"eft"}  # only the field's immediate policies are measured
    assert doc["capacity_tok_s"] == doc["capacities"]["eft"]
    assert doc["capacity_served_tok_s"] > 0
    assert doc["capacity_of_nominal"] == pytest.approx(doc["capacity_tok_s"] / nominal_of(trace))
    assert doc["load_of_nominal"] == pytest.approx(0.5 * doc["capacity_of_nominal"], rel=0.05)


def test_a_given_capacity_skips_the_search(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    nominal = nominal_of(trace)
    given = str(0.6 * nominal)
    args = ("--policies", "eft", "--load", "0.5", "--load-basis", "capacity", "--capacity-tok-s", given)
    result = run("compare", trace, *args, "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "capacity eft search" not in result.stderr and "of --capacity-tok-s" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["capacity_policy"] is None and doc["capacities"] == {}
    assert doc["load_of_nominal"] == pytest.approx(0.3, rel=0.05)


def test_sweep_loads_are_fractions_of_the_capacity(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    given = 0.5 * nominal_of(trace)
    args = (
        "--policies",
        "eft",
        "--loads",
        "0.5,1.0",
        "--load-basis",
        "capacity",
        "--capacity-tok-s",
        str(given),
    )
    result = run("sweep", trace, *args, "--json", str(out))
    assert result.exit_code == 0, result.output
    assert f"fraction of capacity {given:.0f} tok/s" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["load_basis"] == "capacity" and doc["capacity_tok_s"] == pytest.approx(given)
    assert doc["capacity_of_nominal"] == pytest.approx(0.5)
    assert [r["load"] for r in doc["runs"]] == [0.5, 1.0]
    done = [r["completed"] for r in doc["runs"]]
    assert done[1] == pytest.approx(2 * done[0], rel=0.05)  # twice the load: twice the requests in 10 s


def test_a_field_without_immediate_policies_uses_the_default_baselines(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    result = run(
        "compare", trace, "--policies", "sbs", "--load", "0.5", "--load-basis", "capacity", "--json", str(out)
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc["capacities"]) == set(load_basis.DEFAULT_IMMEDIATE)
    assert doc["capacity_tok_s"] == max(doc["capacities"].values())
    assert doc["capacities"][doc["capacity_policy"]] == doc["capacity_tok_s"]
    assert set(doc["policies"]) == {"sbs"}


def test_default_basis_is_nominal_and_recorded(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    result = run("compare", trace, "--policies", "eft", "--load", "0.3", "--json", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["load_basis"] == "nominal" and "capacity_tok_s" not in doc
    assert doc["load_of_nominal"] == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize(
    ("command", "extra", "fragments"),
    [
        (
            "compare",
            ("--load", "0.5", "--capacity-tok-s", "1000"),
            ("--capacity-tok-s", "--load-basis capacity"),
        ),
        (
            "compare",
            ("--load", "0.5", "--load-basis", "capacity", "--capacity-tok-s", "-3"),
            ("--capacity-tok-s",),
        ),
        ("compare", ("--rate-scale", "2", "--load-basis", "capacity"), ("--load-basis capacity", "--load")),
        ("sweep", ("--loads", "0.5", "--capacity-tok-s", "1000"), ("--capacity-tok-s",)),
        ("capacity", ("--precision", "0"), ("--precision",)),
        ("capacity", ("--policies", "nope"), ("--policies", "nope")),
        ("capacity", ("--at", "0.5,x"), ("--at", "comma-separated")),
        ("capacity", ("--at", "0"), ("--at", "must be")),
    ],
)
def test_bad_flags_are_one_line_errors(
    trace: Path, command: str, extra: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run(command, trace, *extra), *fragments)
