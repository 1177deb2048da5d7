"""The emulator's prefill delayer (`sbs.sim.prefill_delayer`) against SGLang 0.5.23's own negotiation:
the same rank reports, pass after pass, give the same verdicts and reasons."""

from __future__ import annotations

import random
from typing import Any

from sbs.sim.prefill_delayer import PrefillDelayer, RankPass

from tests.contract import sglang_env


def _scenario(rng: random.Random) -> dict[str, Any]:
    ranks = rng.choice([2, 4, 8])
    busy = rng.random()  # how often a rank has a prompt queued
    passes = []
    for _ in range(rng.randint(20, 80)):
        passes.append([
            [rng.random() < busy, round(rng.random(), 3), rng.randint(0, 64), rng.choice([0, 1, 4, 16, 48])]
            for _ in range(ranks)
        ])  # fmt: skip
    return {
        "max_delay_passes": rng.choice([1, 2, 3, 5, 30]),
        "watermark": rng.choice([None, None, 0.05, 0.3]),
        "max_running": rng.choice([16, 64, 96, 256]),
        "passes": passes,
    }


def _ours(sc: dict[str, Any]) -> list[tuple[bool, str]]:
    d = PrefillDelayer(sc["max_delay_passes"], sc["watermark"], max_running_per_rank=sc["max_running"])
    out = []
    for ranks in sc["passes"]:
        v = d.negotiate(
            [RankPass(bool(p), running=run, max_prefill_bs=bs, token_usage=u) for p, u, run, bs in ranks]
        )
        out.append((v.allow, v.reason))
    return out


def test_same_verdicts_as_sglang_pass_by_pass(sglang: sglang_env.Probe) -> None:
    rng = random.Random(2026)
    scenarios = [_scenario(rng) for _ in range(60)]
    theirs = sglang.prefill_delayer(scenarios)
    passes = 0
    for i, (sc, expected) in enumerate(zip(scenarios, theirs, strict=True)):
        assert _ours(sc) == expected, (
            f"scenario {i} ({sc['max_delay_passes']} passes, watermark {sc['watermark']})"
        )
        passes += len(expected)
    reasons = {r for verdicts in theirs for _, r in verdicts}
    assert {"delay", "wait_timeout", "wait_success", "no_wait", "token_watermark", ""} <= reasons, reasons
    assert passes > 2000
