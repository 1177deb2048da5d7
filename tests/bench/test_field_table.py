"""`python -m sbs.bench.field_table`: its tables from capacity and sweep JSON documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.bench import field_table


def cap(tok_s: float, status: str = "measured") -> dict:
    return {"capacity_tok_s": tok_s, "capacity_of_nominal": tok_s / 1e6, "status": status}


def run(policy: str, load: float, mean: float, p90: float) -> dict:
    return {"policy": policy, "load": load, "ttft_mean_s": mean, "ttft_p90_s": p90}


def test_sbs_is_compared_with_the_best_mean_and_the_best_p90_and_fcfs_with_arrival_order(tmp_path: Path):
    caps = {
        "sbs": cap(90e3),
        "sbs-fcfs": cap(95e3),
        "eft": cap(100e3),
        "eft+prio": cap(120e3, "above max load"),
    }
    runs = [
        run("sbs", 0.5, 1.0, 3.0), run("sbs-fcfs", 0.5, 1.5, 2.0),
        run("eft", 0.5, 2.2, 2.5), run("eft+prio", 0.5, 2.0, 4.0),
    ]  # fmt: skip
    (tmp_path / "w-capacity.json").write_text(json.dumps({"policies": caps}))
    (tmp_path / "w-sweep.json").write_text(json.dumps({"runs": runs}))
    assert field_table.best_immediate(caps) == ("eft+prio", 120e3)
    text = "\n".join(field_table.tables("w", tmp_path))
    assert "eft+prio 120+ (0.120)" in text and "sbs capacity vs best immediate (eft+prio): -25.0%" in text
    # sbs: mean vs eft+prio's 2.0 (-50 %), p90 vs eft's 2.5, the best of any (+20 %: a loss, shown)
    # sbs-fcfs: only eft keeps arrival order (mean 1.5 / 2.2 - 1 = -32 %, p90 2.0 / 2.5 - 1 = -20 %)
    assert (
        "| 0.5 | 1.00/3.00 | eft+prio 2.00/4.00 | -50%, +20% | 1.50/2.00 | eft 2.20/2.50 | -32%, -20% |"
        in text
    )


def test_an_unknown_workload_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        field_table.main(["--workloads", "azure,nope", "--tables-only"])
    assert "--workloads: unknown 'nope'" in capsys.readouterr().err


def test_the_lane_cost_validation_workload_is_mooncakes_long_share_on_azure(tmp_path: Path) -> None:
    args = field_table.WORKLOADS["azure-long33"]
    assert args[args.index("--trace") + 1] == field_table.AZURE
    assert args[args.index("--long-prompts") + 1] == "33%:16000-64000"
    assert field_table.main(["--workloads", "azure-long33", "--tables-only", "--out", str(tmp_path)]) == 0


def test_seeds_get_a_table_of_margins_per_seed_and_the_worst(tmp_path: Path) -> None:
    """Each seed's margins are against the best policy at that seed; worst is the largest ratio (the
    least favourable to SBS). A given basis (no capacity document) is printed instead of capacities."""
    seed0 = [run("sbs", 0.7, 1.0, 2.0), run("sbs-fcfs", 0.7, 1.8, 2.4), run("eft", 0.7, 2.0, 2.5)]
    seed1 = [run("sbs", 0.7, 1.5, 2.4), run("sbs-fcfs", 0.7, 1.9, 2.2), run("eft", 0.7, 2.0, 3.0),
             run("eft+prio", 0.7, 3.0, 2.0)]  # fmt: skip
    (tmp_path / "w-sweep.json").write_text(json.dumps({"capacity_tok_s": 50e3, "runs": seed0}))
    (tmp_path / "w-sweep-seed1.json").write_text(json.dumps({"capacity_tok_s": 50e3, "runs": seed1}))
    (tmp_path / "w-sweep-seedx.json").write_text("{}")  # not a seed's sweep: ignored
    text = "\n".join(field_table.tables("w", tmp_path))
    assert "Basis (given): 50.0k prompt tok/s" in text and "Capacity" not in text
    # seed 0: sbs 1.0/2.0 vs eft 2.0/2.5 -> -50 %, -20 %; seed 1: vs eft's mean 2.0 (-25 %) and
    # eft+prio's p90 2.0 (+20 %); sbs-fcfs only against eft (no +prio): -10 %/-4 %, -5 %/-27 %
    assert "| 0.7 | -50% / -25% | -20% / +20% | -25%, +20% | -10% / -5% | -4% / -27% | -5%, -4% |" in text


def test_bad_seeds_and_bases_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    for args, fragment in (
        (["--seeds", "0,x"], "--seeds N,N,..."),
        (["--loads", "0.5,half"], "--loads X,X,..."),
        (["--bases", "azure=1e6,nope=5"], "--bases: 'nope'"),
        (["--bases", "azure=-1"], "--bases: 'azure'"),
    ):
        with pytest.raises(SystemExit):
            field_table.main(["--tables-only", *args])
        assert fragment in capsys.readouterr().err


def test_run_sweeps_once_per_seed_on_one_basis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The capacity search runs once, at the first seed (not at all with a given basis); every seed's
    sweep gets that basis, its own `--seed` and its own JSON."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str], check: bool) -> None:
        calls.append(argv)
        if argv[1] == "capacity":
            caps = {"eft": cap(123.0), "sbs": cap(99.0)}
            Path(argv[argv.index("--json") + 1]).write_text(json.dumps({"policies": caps}))

    monkeypatch.setattr(field_table.subprocess, "run", fake_run)
    field_table.run("azure", tmp_path, 1, seeds=[3, 0], loads="0.7")
    assert [c[1] for c in calls] == ["capacity", "sweep", "sweep"]
    assert calls[0][calls[0].index("--seed") + 1] == "3"
    for c, seed, name in ((calls[1], "3", "azure-sweep-seed3.json"), (calls[2], "0", "azure-sweep.json")):
        assert c[c.index("--capacity-tok-s") + 1] == "123.0" and c[c.index("--loads") + 1] == "0.7"
        assert c[c.index("--seed") + 1] == seed and c[c.index("--json") + 1] == str(tmp_path / name)
    calls.clear()
    field_table.run("azure", tmp_path, 1, seeds=[1], basis=50e3)
    assert [c[1] for c in calls] == ["sweep"]
    assert calls[0][calls[0].index("--capacity-tok-s") + 1] == "50000.0"
