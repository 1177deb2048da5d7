"""SGLang's prefill delayer in the emulated engine: a prompt on one DP rank waits for the other
ranks, at most `prefill_delayer_max_delay_passes` passes; prompts on every rank start together."""

from __future__ import annotations

import asyncio

import pytest
from sbs.sim.emulator.cli import build_settings
from sbs.sim.prefill_delayer import PrefillDelayer, RankPass

from tests.sim.emulator.conftest import Start, post

ONE = {"input_ids": [3] * 500, "sampling_params": {"max_new_tokens": 1}}


async def test_a_prompt_on_one_rank_waits_out_the_passes_then_runs(start: Start, http) -> None:
    eng = await start(enable_prefill_delayer=True, prefill_delayer_max_delay_passes=30, idle_pass_ms=1.0)
    status, _ = await post(http, f"{eng.url}/generate", {**ONE, "routed_dp_rank": 0})
    assert status == 200
    kinds = [s.kind for s in eng.runtime.steps]
    assert kinds[:30] == ["idle"] * 29 + ["prefill"]  # 29 passes held, the 30th times out
    plain = await start()
    await post(http, f"{plain.url}/generate", {**ONE, "routed_dp_rank": 0})
    assert next(s.kind for s in plain.runtime.steps) == "prefill"


async def test_prompts_on_every_rank_start_in_one_step(start: Start, http) -> None:
    # 2 s idle passes (× 0.02 = 40 ms wall, 29 of them): the second prompt arrives while the first waits
    eng = await start(enable_prefill_delayer=True, idle_pass_ms=2000.0)
    results = await asyncio.gather(
        *(post(http, f"{eng.url}/generate", {**ONE, "routed_dp_rank": r}) for r in (0, 1))
    )
    assert [s for s, _ in results] == [200, 200]
    kinds = [s.kind for s in eng.runtime.steps]
    assert kinds.count("prefill") == 1 and kinds.index("prefill") < 29, kinds


async def test_a_decode_engine_ignores_it_as_sglang_does(start: Start) -> None:
    eng = await start(mode="decode", enable_prefill_delayer=True)
    assert eng.runtime.loop.delayer is None


def test_a_held_pass_lets_started_chunks_go_on() -> None:
    d = PrefillDelayer(3)
    mixed = [RankPass(True), RankPass(False)]
    assert [d.negotiate(mixed).reason for _ in range(4)] == ["delay", "delay", "wait_timeout", "delay"]
    assert d.negotiate([RankPass(True), RankPass(True)]).reason == "wait_success"


@pytest.mark.parametrize("flag", ["delayer_watermark", "delayer_queue_ratio", "delayer_max_ms"])
def test_delayer_flags_the_emulator_does_not_model_are_refused(flag: str) -> None:
    opts = {k: None for k in ("mode", "disaggregation_mode", "model_name", "model_path", "attn_dp_size",
                              "dp_size", "tp_size", "enable_dp_attention")}  # fmt: skip
    with pytest.raises(ValueError, match=r"prefill-delayer.*not modelled"):
        build_settings({**opts, flag: 0.5})
