"""Cost-model overrides: `sbs-sim ... --cost-override SPEC`, and the fixed-cost presets of issue 11.

SPEC is comma-separated items, each a preset name or a `CostParams` field `name=value`, applied left
to right: ``profile-max``, ``prefill_step_overhead_s=0.057``, ``profile-min,eplb_balancedness=0.8``.
The result is stored on the cluster (`ClusterConfig.cost_overrides`), so the one `CostModel` built
from it reaches the engines, the policies' capacity model and the nominal capacity alike, in every
sub-command and worker process; a cluster JSON file may carry ``"cost_overrides"`` too.

Presets (docs/costmodel.md, "Fixed per-step costs: review"): the prefill step's fixed cost at EP32
and the decode step's at EP128 set to the smallest or largest value the DeepSeek H800 profiles allow.
The prefill all-to-all overlap is re-solved so the DeepSeek prefill anchor (2.09 s) still holds: only
the split between fixed and per-token cost moves. At the decode maximum the profiles count the
low-latency all-to-all waits inside the fixed 45 ms, so the decode all-to-all is taken as hidden.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
import numpy as np
from sbs.sim import calibrate
from sbs.sim.costmodel import CostModel, CostParams
from sbs.sim.errors import SimInputError

if TYPE_CHECKING:
    from sbs.sim.cluster import ClusterConfig

PREFILL_EP = 32
"""EP of the prefill anchor and of the default cluster's prefill instances (ds3-h800)."""
DECODE_EP = 128
"""EP of the DeepSeek decode profile."""


@dataclass(frozen=True)
class FixedCosts:
    """Targets of a preset, s per step; None leaves that phase as fitted."""

    prefill_s: float | None
    """Whole fixed cost of a prefill step at EP32 (overhead + per-layer intercepts)."""
    decode_s: float | None
    """Whole fixed cost of a decode step at EP128, all-to-all waits included (then taken as hidden)."""


PRESETS: dict[str, FixedCosts] = {
    "fitted": FixedCosts(None, None),
    "profile-min": FixedCosts(prefill_s=0.007, decode_s=None),
    "profile-max": FixedCosts(prefill_s=0.060, decode_s=0.045),
}
"""profile-min: the ≈7 ms/step of inter-kernel gaps, the step boundaries hidden by the next step;
profile-max: 15–60 ms (calibration README) for prefill, ≈45 ms + 0.17 ms·B without MTP for decode."""

OPTION = click.option(
    "--cost-override",
    default=None,
    metavar="SPEC",
    help=f"Change the cost model: presets ({', '.join(PRESETS)}) and/or CostParams fields name=value, "
    "comma-separated, applied in order (docs/costmodel.md).",
)


def numeric_fields() -> dict[str, type]:
    """The `CostParams` fields an override may set (numbers only), with their types."""
    defaults = CostParams()
    kinds = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(CostParams)}
    return {name: kind for name, kind in kinds.items() if kind in (int, float)}


def applied(cluster: ClusterConfig, spec: str | None) -> ClusterConfig:
    """`cluster` with SPEC applied on top of its own `cost_overrides`."""
    if not spec:
        return cluster
    return cluster.model_copy(update={"cost_overrides": parse(spec, cluster.cost_overrides)})


def parse(spec: str | None, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """SPEC applied on `base` → {field: value}, presets expanded; SimInputError names the item at fault."""
    out: dict[str, float] = dict(base or {})
    for item in [s.strip() for s in (spec or "").split(",") if s.strip()]:
        name, sep, raw = (x.strip() for x in item.partition("="))
        if not sep:
            if name not in PRESETS:
                raise SimInputError(
                    f"--cost-override {item!r}: not a preset ({', '.join(PRESETS)}) nor name=value"
                )
            check(out)
            out.update(preset(name, cost_model(out).params))
            continue
        try:
            value = float(raw)
        except ValueError:
            raise SimInputError(f"--cost-override {name}: expected a number, got {raw!r}") from None
        out[name] = value
    check(out)
    return out


def check(overrides: Mapping[str, float]) -> None:
    """Raise SimInputError unless every item names a numeric field with a finite value ≥ 0 (an integer
    for integer fields) and the resulting model can be evaluated."""
    fields = numeric_fields()
    for name, value in overrides.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SimInputError(f"--cost-override {name}: not a numeric CostParams field{hint}")
        if not isinstance(value, int | float) or isinstance(value, bool) or not np.isfinite(value):
            raise SimInputError(f"--cost-override {name}: expected a finite number, got {value!r}")
        if value < 0:
            raise SimInputError(f"--cost-override {name}: must be >= 0, got {value:g}")
        if fields[name] is int and value != int(value):
            raise SimInputError(f"--cost-override {name}: must be an integer, got {value:g}")
    try:
        model = cost_model(overrides)
        model.prefill_coefficients(ep_size=PREFILL_EP)
        model.decode_step_s(np.array([1]), np.array([1]), ep_size=DECODE_EP)
    except ZeroDivisionError:
        raise SimInputError(f"--cost-override {dict(overrides)}: a field that divides is 0") from None


def cost_model(overrides: Mapping[str, float]) -> CostModel:
    """The H800 default model with `overrides` applied (fields as checked by `check`)."""
    types = numeric_fields()
    values = {k: types.get(k, float)(v) for k, v in overrides.items()}
    try:
        return CostModel(CostParams(**values))
    except (TypeError, ValueError) as exc:
        raise SimInputError(f"--cost-override: {exc}") from None


def preset(name: str, base: CostParams | None = None) -> dict[str, float]:
    """The field values of preset `name` applied on `base` (default: the fitted model)."""
    target, p = PRESETS[name], base or CostParams()
    out: dict[str, float] = {}
    if target.prefill_s is not None:
        overhead = p.prefill_step_overhead_s
        out["prefill_step_overhead_s"] = target.prefill_s - (prefill_fixed_s(p) - overhead)
        solved = dataclasses.replace(p, prefill_step_overhead_s=out["prefill_step_overhead_s"])
        out["prefill_a2a_hidden_fraction"] = calibrate.solve_hidden_fractions(solved)[0]
    if target.decode_s is not None:
        rest = decode_fixed_s(p) - p.decode_step_overhead_s
        out["decode_step_overhead_s"] = target.decode_s - rest
        out["decode_a2a_hidden_fraction"] = 1.0
    return out


def prefill_fixed_s(params: CostParams, ep_size: int = PREFILL_EP) -> float:
    """Fixed cost of one prefill step: overhead + L·a0 + L_moe·c1·max(0, e − 8.5)."""
    return CostModel(params).prefill_coefficients(ep_size=ep_size)[0]


def decode_fixed_s(params: CostParams, ep_size: int = DECODE_EP) -> float:
    """Fixed cost of one decode step (overhead + weight-read intercepts), all-to-all excluded."""
    return CostModel(params).decode_fixed_s(ep_size=ep_size)
