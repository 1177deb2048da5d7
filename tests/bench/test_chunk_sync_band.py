"""`python -m sbs.bench.chunk_sync_band`: SBS with and without chunk sync over a band of loads."""

from __future__ import annotations

import pytest
from sbs.bench import chunk_sync_band
from sbs.bench.field_table import WORKLOADS


def test_the_field_tables_workload_flags_become_the_simulators_options() -> None:
    opts = chunk_sync_band.workload_opts(WORKLOADS["azure-long33"], 2)
    assert opts["long_prompts"] == "33%:16000-64000" and opts["duration"] == 600.0 and opts["seed"] == 2
    assert (opts["fmt"], opts["arrivals"]) == ("azure", "trace")
    opts = chunk_sync_band.workload_opts(WORKLOADS["sharegpt"], 0)
    assert (opts["fmt"], opts["arrivals"], opts["long_prompts"]) == ("lengths", "gamma:2", None)


def test_the_table_averages_each_load_over_the_seeds_and_the_band_over_all() -> None:
    runs = [("w", 1.0, ld, s, "sbs", sync) for sync in (True, False) for ld in (0.5, 0.9) for s in (0, 1)]
    results = [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0), (1.0, 1.0), (1.0, 1.0), (2.0, 2.0), (2.0, 2.0)]
    on, off = chunk_sync_band.table(runs, results)
    assert on.startswith("sbs       chunk sync on   band 4.00/5.00")
    assert "0.5: 2.00/3.00" in on and "0.9: 6.00/7.00" in on
    assert "band 1.50/1.50" in off and "0.5: 1.00/1.00" in off


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policies", "eft"], "--policies: 'eft' keeps no carries"),
        (["--policies", "nope"], "--policies: unknown policy 'nope'"),
        (["--loads", "0.5,x"], "--loads/--seeds"),
        (["--basis", "0"], "must be > 0"),
    ],
)
def test_bad_arguments_are_named(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--workload": "servegen", "--basis": "476000", "--loads": "0.5"}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    with pytest.raises(SystemExit):
        chunk_sync_band.main([x for kv in base.items() for x in kv])
    assert message in capsys.readouterr().err


def test_a_run_without_chunk_sync_is_the_policy_with_it_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from sbs.sim import simulator

    seen = []

    class Spy:
        def __init__(self, trace, cluster, policy) -> None:
            seen.append(policy)

        def run(self):
            raise RuntimeError("stop")

    monkeypatch.setattr(simulator, "Simulation", Spy)
    for sync in (True, False):
        with pytest.raises(RuntimeError, match="stop"):
            chunk_sync_band.measure(("servegen", 476000.0, 0.5, 0, "sbs-fcfs", sync))
    assert [(p.name, p.chunk_sync) for p in seen] == [("sbs-fcfs", True), ("sbs-fcfs", False)]
