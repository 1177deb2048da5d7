"""`python -m sbs.bench.headroom`: the zero-queue bound beside the field's sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import headroom


def run(policy: str, load: float, mean: float, p90: float, n: int = 10) -> dict:
    return {
        "policy": policy,
        "load": load,
        "ttft_mean_s": mean,
        "ttft_p90_s": p90,
        "completed": n,
        "dropped": 0,
    }


def test_the_possible_cut_is_the_bound_against_the_best_mean_and_the_best_p90() -> None:
    runs = [run("sbs", 0.5, 1.0, 3.0), run("sbs-fcfs", 0.5, 1.5, 3.2), run("eft", 0.5, 2.0, 4.0),
            run("least_load", 0.5, 3.0, 3.5)]  # fmt: skip
    got = headroom.cuts(runs, 0.5, {"ttft_mean_s": 0.5, "ttft_p90_s": 1.75})
    assert got["best"] == (2.0, 3.5)  # eft's mean, least_load's p90
    assert got["possible"] == pytest.approx((-0.75, -0.5))
    assert got["sbs"] == pytest.approx((-0.5, 3.0 / 3.5 - 1))


def test_the_table_takes_the_least_headroom_and_sbss_worst_over_the_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed0 = [run("sbs", 0.7, 1.0, 2.0), run("sbs-fcfs", 0.7, 1.8, 2.4), run("eft", 0.7, 2.0, 2.5)]
    seed1 = [run("sbs", 0.7, 1.5, 2.4), run("sbs-fcfs", 0.7, 1.9, 2.2), run("eft", 0.7, 2.0, 3.0)]
    (tmp_path / "w-sweep.json").write_text(json.dumps({"capacity_tok_s": 50e3, "runs": seed0}))
    (tmp_path / "w-sweep-seed1.json").write_text(json.dumps({"capacity_tok_s": 50e3, "runs": seed1}))
    bounds = {0: (0.5, 1.0), 1: (1.0, 1.5)}
    calls = []

    def bound_at(workload: str, seed: int, load: float, basis: float) -> tuple[dict[str, float], int]:
        calls.append((workload, seed, load, basis))
        return {"ttft_mean_s": bounds[seed][0], "ttft_p90_s": bounds[seed][1]}, 10

    monkeypatch.setattr(headroom, "bound_at", bound_at)
    text = "\n".join(headroom.table("w", tmp_path))
    assert calls == [("w", 0, 0.7, 50e3), ("w", 1, 0.7, 50e3)]
    # possible: seed 0 -75 %/-60 %, seed 1 -50 %/-50 % -> the least, -50 %/-50 %; sbs: seed 0 -50 %/-20 %,
    # seed 1 -25 %/-20 % -> the worst, -25 %/-20 %; share: seed 0 67 %/33 %, seed 1 50 %/40 % -> 50 %, 33 %
    assert "| 0.7 | 0.50/1.00 | 2.00/2.50 | -50%, -50% | -25%, -20% | 50%, 33% |" in text


def test_a_sweep_of_other_requests_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [run("sbs", 0.7, 1.0, 2.0, n=9), run("sbs-fcfs", 0.7, 1.8, 2.4), run("eft", 0.7, 2.0, 2.5)]
    (tmp_path / "w-sweep.json").write_text(json.dumps({"capacity_tok_s": 50e3, "runs": runs}))
    monkeypatch.setattr(headroom, "bound_at", lambda *a: ({"ttft_mean_s": 0.5, "ttft_p90_s": 1.0}, 10))
    with pytest.raises(SystemExit, match="10 requests rebuilt, the sweep ran 9: not the same workload"):
        headroom.table("w", tmp_path)


def test_bad_arguments_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, fragment in (
        (["--workloads", "azure,nope"], "--workloads: unknown 'nope'"),
        (["--out", str(tmp_path)], "no field_table sweeps there"),
    ):
        with pytest.raises(SystemExit):
            headroom.main(args)
        assert fragment in capsys.readouterr().err
