"""`sbs-sim --format lengths`: a prompt/output length table given an arrival process."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sim.test_cli import assert_one_line_error, compare


def lengths_csv(path: Path) -> Path:
    rows = [(300 + 50 * (i % 9), 10 + i % 5) for i in range(30)]
    path.write_text(
        "num_prefill_tokens,num_decode_tokens,pd_ratio\n" + "".join(f"{p},{d},1\n" for p, d in rows)
    )
    return path


def test_a_length_table_runs_with_poisson_then_gamma_arrivals_at_a_load(tmp_path: Path) -> None:
    table = lengths_csv(tmp_path / "sharegpt.csv")
    docs = []
    for arrivals in ("trace", "gamma:2"):
        out = tmp_path / f"{arrivals.replace(':', '')}.json"
        result = compare(
            table, "--format", "lengths", "--arrivals", arrivals, "--load", "0.3", "--duration", "20",
            "--policies", "least_load", "--json", str(out),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        docs.append(json.loads(out.read_text()))
    for doc in docs:
        assert 0.2 < doc["load_of_nominal"] < 0.4  # rescaled to the asked load (a 20 s sample of it)
        assert doc["policies"]["least_load"]["completed"] == doc["requests"] > 20
    assert "cv=2" in docs[1]["trace"] and docs[0]["trace"] != docs[1]["trace"]


def test_a_table_with_the_wrong_columns_names_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,output\n10,2\n")
    assert_one_line_error(compare(bad, "--format", "lengths"), "num_prefill_tokens")
