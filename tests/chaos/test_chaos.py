"""CI's share of `make chaos`: one short scenario of each kind, under load, on the session's plane.

Each runs a few seconds of warm-up, a short fault window (one kill, one hang, two operator kills) and
a short tail, with outputs capped at 128 tokens so the last generations end soon (the full matrix,
two minutes per scenario with the trace's own lengths, is `make chaos`); each must lose and hang
nothing and hold its targets.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sbs.bench.chaos import report, runner, scenarios
from sbs.bench.chaos.cluster import Stack
from sbs.e2e.control_plane import ControlPlane
from sbs.sim.loaders import load_trace
from sbs.sim.trace import Trace

pytestmark = pytest.mark.e2e

TRACE = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "traces"
    / "azure_llm_2023_conv"
    / "AzureLLMInferenceTrace_conv.csv"
)
SHORT = runner.Timing(
    warmup_s=6.0,
    fault_s=12.0,
    after_s=6.0,
    kill_every_s=10.0,
    hang_s=8.0,
    operator_kills=2,
    max_output_tokens=128,
)
KINDS = {
    "prefill-crash": scenarios.EngineCrash("prefill"),
    "decode-hang": scenarios.Hang(),
    "prefill-slow": scenarios.Slow(),
    "operator-kills": scenarios.OperatorKills(),
    "scheduler-loss": scenarios.SchedulerLoss(),
    "node-loss": scenarios.NodeLoss(),
}


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        control_plane, f"chaos-{secrets.token_hex(3)}", tmp_path_factory.mktemp("chaos"), time_factor=4.0
    )
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def trace() -> Trace:
    if not TRACE.exists():
        pytest.fail(f"the Azure trace is missing at {TRACE} (../shared/traces beside the repo)")
    return load_trace(TRACE)


@pytest.mark.parametrize("name", list(KINDS))
def test_scenario_loses_nothing_and_recovers(stack: Stack, trace: Trace, name: str) -> None:
    result = runner.run(stack, KINDS[name], trace, SHORT, load=0.6, log=lambda _: None)
    print("\n" + report.table([result]) + "\n" + report.details([result]))
    t = result.tally
    assert t.accepted == t.completed + t.retryable + t.lost + t.hung
    assert t.accepted > 0
    assert (t.lost, t.hung) == (0, 0), report.details([result])
    missed = {k: v for k, (ok, v) in result.targets.items() if not ok}
    assert not missed, missed
