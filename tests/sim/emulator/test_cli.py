"""`sbs-engine`: the emulator's flags, SGLang's launch flags, and one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sbs.sim.emulator import EngineSettings, cli


def settings(*args: str) -> EngineSettings:
    """What `sbs-engine ARGS` would run with (parsed by the real command, the engine not started)."""
    captured: list[EngineSettings] = []

    async def record(settings: EngineSettings, command: str) -> None:
        captured.append(settings)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_serve", record)
        result = CliRunner().invoke(cli.cli, list(args))
    assert result.exit_code == 0, result.output
    return captured[0]


def test_emulator_flags() -> None:
    s = settings(
        "--mode",
        "prefill",
        "--dp-size",
        "32",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
        "--disaggregation-bootstrap-port",
        "8998",
        "--time-factor",
        "0.05",
        "--model-name",
        "deepseek-ai/DeepSeek-V3",
        "--chunked-prefill-size",
        "524288",
        "--max-running-requests",
        "8192",
        "--seed",
        "3",
    )
    assert (s.mode, s.dp_size, s.port, s.bootstrap_port, s.time_factor, s.seed) == (
        "prefill",
        32,
        30000,
        8998,
        0.05,
        3,
    )
    assert s.chunk_tokens_per_rank == 16_384 and s.max_running_per_rank == 256
    assert s.server_info_dp_size is None


def test_sglang_launch_flags_map_or_are_ignored() -> None:
    s = settings(
        "--model-path",
        "deepseek-ai/DeepSeek-V3",
        "--disaggregation-mode",
        "decode",
        "--attn-dp-size",
        "16",
        "--tp-size",
        "16",
        "--ep-size",
        "16",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--dist-init-addr",
        "10.0.0.1:5757",
        "--enable-metrics",
        "--trust-remote-code",
        "--moe-a2a-backend",
        "deepep",
        "--disaggregation-transfer-backend",
        "mooncake",
        "--cuda-graph-bs",
        "1",
        "2",
        "4",
        "--mem-fraction-static",
        "0.8",
        "--disable-radix-cache",
    )
    assert (s.mode, s.model_name, s.dp_size, s.ep_size, s.nnodes, s.node_rank) == (
        "decode",
        "deepseek-ai/DeepSeek-V3",
        16,
        16,
        2,
        1,
    )
    assert s.server_info_dp_size == 1  # 0.5.23 reports dp_size=1 under --attn-dp-size
    assert s.disable_radix_cache is True
    classic = settings("--dp-size", "8", "--enable-dp-attention", "--tp", "8")
    assert classic.dp_size == 8 and classic.server_info_dp_size is None


def test_sglang_environment_sets_the_pd_knobs(monkeypatch) -> None:
    monkeypatch.setenv("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "45")
    monkeypatch.setenv("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "30")
    monkeypatch.setenv("SGLANG_DISAGGREGATION_FORCE_QUERY_PREFILL_DP_RANK", "1")
    s = settings("--mode", "decode")
    assert s.waiting_timeout_s == 45.0 and s.bootstrap_timeout_s == 30.0
    assert s.force_query_prefill_dp_rank is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dp-size", "0"],
            "sbs-engine: error: --dp-size: Input should be greater than or equal to 1, got 0",
        ),
        (
            ["--time-factor", "-1"],
            "sbs-engine: error: --time-factor: Input should be greater than or equal to 0",
        ),
        (
            ["--mode", "decode", "--disaggregation-mode", "prefill"],
            "--mode decode and --disaggregation-mode prefill",
        ),
        (
            ["--dp-size", "8", "--tp-size", "12"],
            "--tp-size 12 must be a multiple of the 8 DP-attention ranks",
        ),
        (["--node-rank", "2"], "node_rank must be below nnodes (1), got 2"),
    ],
    ids=["dp-zero", "negative-time-factor", "modes-disagree", "tp-not-multiple", "node-rank-too-big"],
)
def test_bad_flags_print_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
