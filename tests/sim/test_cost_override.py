"""`--cost-override`: parsing and its errors, the fixed-cost presets, and that an override reaches the
engines' step times and the policies' capacity model alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sbs.settings import scheduling
from sbs.sim import calibrate, cost_override
from sbs.sim.cluster import PRESETS, load_cluster
from sbs.sim.costmodel import CostModel, CostParams
from sbs.sim.errors import ClusterConfigError, SimInputError
from sbs.sim.simulator import Simulation
from sbs.sim.trace import build_trace

from tests.sim.test_cli import assert_one_line_error, azure_csv, compare, invoke

SMALL = PRESETS["small"]


def test_pairs_are_parsed_in_order_onto_the_fields() -> None:
    o = cost_override.parse("prefill_step_overhead_s=0.057, decode_step_overhead_s=2e-3,n_layers=30")
    assert o == {"prefill_step_overhead_s": 0.057, "decode_step_overhead_s": 0.002, "n_layers": 30.0}
    p = cost_override.cost_model(o).params
    assert (p.prefill_step_overhead_s, p.decode_step_overhead_s, p.n_layers) == (0.057, 0.002, 30)
    assert isinstance(p.n_layers, int)
    assert cost_override.parse("profile-max,decode_step_overhead_s=0.01")["decode_step_overhead_s"] == 0.01
    assert cost_override.parse("") == {} and cost_override.parse(None) == {}


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("prefill_step_overhed_s=0.05", ["prefill_step_overhed_s", "did you mean prefill_step_overhead_s"]),
        ("hardware=1", ["hardware", "not a numeric CostParams field"]),
        ("deepep_ll_floor=fast", ["deepep_ll_floor", "expected a number", "'fast'"]),
        ("prefill_step_overhead_s=-0.01", ["prefill_step_overhead_s", ">= 0", "-0.01"]),
        ("prefill_step_overhead_s=nan", ["prefill_step_overhead_s", "finite"]),
        ("n_layers=60.5", ["n_layers", "integer", "60.5"]),
        ("eplb_balancedness=1.5", ["eplb_balancedness", "(0, 1]"]),
        ("hbm_bandwidth_Bps=0", ["divides", "hbm_bandwidth_Bps"]),
        ("profile-huge", ["'profile-huge'", "fitted", "profile-max"]),
    ],
)
def test_bad_items_are_named(spec: str, fragments: list[str]) -> None:
    with pytest.raises(SimInputError) as err:
        cost_override.parse(spec)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_cli_rejects_a_bad_override_in_one_line(tmp_path: Path) -> None:
    trace = azure_csv(tmp_path / "t.csv")
    assert_one_line_error(compare(trace, "--cost-override", "prefil_step_overhead_s=1"), "prefil_step")
    result = invoke("capacity", "--trace", str(trace), "--cost-override", "x=1", "--cluster", "small")
    assert_one_line_error(result, "--cost-override x")


def test_cluster_file_with_a_bad_override_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    doc = SMALL.model_dump() | {"cost_overrides": {"prefill_step_overhead_s": -1}}
    path.write_text(json.dumps(doc))
    with pytest.raises(ClusterConfigError, match=r"cost_overrides.*prefill_step_overhead_s"):
        load_cluster(str(path))
    path.write_text(json.dumps(doc | {"cost_overrides": {"prefill_step_overhead_s": 0.5}}))
    assert load_cluster(str(path)).cost_model().params.prefill_step_overhead_s == 0.5


def test_presets_move_the_fixed_cost_and_keep_the_prefill_anchor() -> None:
    fitted = CostModel()
    fixed = {name: cost_override.cost_model(cost_override.parse(name)) for name in cost_override.PRESETS}
    assert cost_override.parse("fitted") == {}
    for name, target in (("profile-min", 0.007), ("profile-max", 0.060)):
        m = fixed[name]
        assert m.prefill_coefficients(ep_size=32)[0] == pytest.approx(target, rel=1e-9)
        anchor = m.prefill_step_s([16_384], [4 * 4096.0**2], ep_size=32)
        assert anchor == pytest.approx(calibrate.PREFILL_ANCHOR_S, rel=1e-9)  # the fit's literals: 2.09005
    assert fixed["profile-min"].decode_fixed_s(ep_size=128) == fitted.decode_fixed_s(ep_size=128)
    assert fixed["profile-max"].decode_fixed_s(ep_size=128) == pytest.approx(0.045, rel=1e-9)
    dec = fixed["profile-max"].decode_step_s(np.array([128]), np.array([128 * 4096]), ep_size=128)
    assert 0.060 < dec < 0.070  # the profiles' ≈65-67 ms plain step at B = 128
    # Presets apply on what comes before them: a refit overhead is replaced, not added to.
    after = cost_override.parse("prefill_step_overhead_s=0.5,profile-max")
    assert cost_override.cost_model(after).prefill_coefficients(ep_size=32)[0] == pytest.approx(0.060)


def test_an_override_reaches_the_engines_and_the_policies_capacity_model() -> None:
    trace = build_trace("one", [0.0], [1000], [20])
    slow = SMALL.model_copy(update={"cost_overrides": cost_override.parse("prefill_step_overhead_s=1.0")})
    base = Simulation(trace, SMALL, scheduling.policy_settings("eft"))
    sim = Simulation(trace, slow, scheduling.policy_settings("eft"))
    assert sim.capacity.fixed_s == pytest.approx(
        base.capacity.fixed_s + 1.0 - CostParams().prefill_step_overhead_s
    )
    assert all(e.cost is sim.cost for e in [*sim.prefill, *sim.decode])
    ttft_base = base.run().recorder.ttft()[0]
    ttft = sim.run().recorder.ttft()[0]
    assert ttft - ttft_base > 0.9  # one prefill step, 1 s longer (jitter CV 3 %)


def test_compare_records_the_override_and_describes_the_changed_model(tmp_path: Path) -> None:
    trace, out = azure_csv(tmp_path / "t.csv"), tmp_path / "out.json"
    result = compare(trace, "--policies", "eft", "--cost-override", "profile-max", "--json", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["cluster"]["cost_overrides"] == cost_override.parse("profile-max")
    plain = compare(trace, "--policies", "eft")
    assert "60.0 ms +" in result.stdout and "60.0 ms +" not in plain.stdout
