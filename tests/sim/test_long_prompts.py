"""The long-prompt mix (`sbs.sim.long_prompts`, `sbs-sim --long-prompts COUNT:TOKENS`) and the policies
a first `sbs-sim compare` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sbs.settings import scheduling
from sbs.sim import cli
from sbs.sim.errors import SimInputError
from sbs.sim.long_prompts import parse_long_prompts, with_long_prompts
from sbs.sim.trace import build_trace

from tests.sim.test_cli import assert_one_line_error, azure_csv, compare

BASE = build_trace("base", [0.0, 1.0, 2.0, 4.0], [100, 200, 300, 400], [5, 6, 7, 8])


def test_long_prompts_are_spread_evenly_over_the_span() -> None:
    mixed = with_long_prompts(BASE, 2, 50_000, output_tokens=9)
    long = [r for r in mixed.requests if r.prompt_tokens == 50_000]
    assert [r.arrival_s for r in long] == [1.0, 3.0]
    assert all(r.output_tokens == 9 for r in long)
    assert len(mixed) == 6 and [r.rid for r in mixed.requests] == list(range(6))
    assert sorted(r.prompt_tokens for r in mixed.requests if r.prompt_tokens < 50_000) == [100, 200, 300, 400]
    assert with_long_prompts(BASE, 0, 50_000) is BASE


def test_hashed_traces_keep_their_hashes_and_the_long_prompts_get_none() -> None:
    hashed = build_trace("h", [0.0, 2.0], [512, 1024], [1, 1], [(1,), (1, 2)], block_tokens=512)
    mixed = with_long_prompts(hashed, 1, 8192)
    assert [r.hash_ids for r in mixed.requests] == [(1,), (), (1, 2)]
    assert mixed.block_tokens == 512


@pytest.mark.parametrize(
    "spec", ["8", "8:", "x:100", "0:100", "3:-1", "2:1.5", "0%:100", "101%:100", "1%:9-3", "1%:5-", "%:5"]
)
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(SimInputError, match="COUNT:TOKENS"):
        parse_long_prompts(spec)


def test_a_share_of_the_trace_with_lengths_drawn_from_a_range() -> None:
    spec = parse_long_prompts("50%:60000-70000")
    assert spec is not None and spec.percent == 50 and (spec.tokens, spec.tokens_hi) == (60_000, 70_000)
    mixed = spec.add_to(BASE, seed=3)
    long = [r.prompt_tokens for r in mixed.requests if r.prompt_tokens >= 60_000]
    assert len(long) == 2 and all(60_000 <= n <= 70_000 for n in long) and long[0] != long[1]
    assert [r.prompt_tokens for r in spec.add_to(BASE, seed=3).requests] == [
        r.prompt_tokens for r in mixed.requests
    ]  # seeded: the same mix every time
    assert parse_long_prompts("2:9000") == parse_long_prompts("2:9000-9000")


def test_compare_adds_the_long_prompts(tmp_path: Path) -> None:
    trace = azure_csv(tmp_path / "t.csv")
    out = tmp_path / "out.json"
    result = compare(trace, "--policies", "sbs-fcfs,eft", "--long-prompts", "2:9000", "--json", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["requests"] == 42 and set(doc["policies"]) == {"sbs-fcfs", "eft"}
    assert all(s["completed"] == 42 for s in doc["policies"].values())
    assert_one_line_error(compare(trace, "--long-prompts", "two:9000"), "--long-prompts", "'two:9000'")


def test_a_share_is_part_of_the_workload_and_counted_by_the_load(tmp_path: Path) -> None:
    trace = azure_csv(tmp_path / "t.csv")
    out = tmp_path / "out.json"
    args = ("--policies", "eft", "--load", "0.4", "--json", str(out))
    assert compare(trace, "--long-prompts", "10%:6000-8000", *args).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["requests"] == 44 and "4x6000-8000 tok" in doc["trace"]
    assert doc["load_of_nominal"] == pytest.approx(0.4, rel=0.02)  # the long prompts inside the load


def test_a_first_comparison_runs_the_whole_field() -> None:
    names = cli.DEFAULT_POLICIES.split(",")
    assert names[:3] == ["sbs", "sbs-fcfs", "eft"] and {"least_load", "sglang"} <= set(names)
    assert {"eft+prio", "sglang+prio", "sglang+delayer"} <= set(names)  # what SGLang's engines offer
    assert all(scheduling.policy_settings(n).name == n for n in names)
