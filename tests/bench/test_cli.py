"""Bad input: one line naming the option, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sbs.bench import cli


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--load", "-1"], "--load"),
        (["--load", "abc"], "--load"),
        (["--time-factor", "0"], "--time-factor"),
        (["--duration", "-5"], "--duration"),
        (["--stream-interval", "0"], "--stream-interval"),
        (["--systems", "sbs,vllm-router"], "--systems"),
        (["--systems", "smg:bogus"], "--systems"),
        (["--systems", ""], "--systems"),
        (["--prefill", "2y8"], "--prefill"),
        (["--decode", "0x16"], "--decode"),
        (["--format", "csv"], "--format"),
    ],
    ids=[
        "negative-load",
        "load-not-a-number",
        "zero-time-factor",
        "negative-duration",
        "zero-stream-interval",
        "unknown-system",
        "unknown-router-policy",
        "no-system",
        "bad-prefill-shape",
        "zero-decode-instances",
        "unknown-format",
    ],
)
def test_bad_h2h_option_exits_2_naming_it(
    args: list[str], needle: str, tiny_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["h2h", "--trace", str(tiny_trace), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sbs-bench: error:")
    assert needle in err
    assert "\n" not in err


def test_missing_trace_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["h2h", "--trace", str(tmp_path / "nope.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--trace" in err and "no such file" in err and "\n" not in err


def test_missing_trace_option_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["crosscheck"])
    assert exit_info.value.code == 2
    assert "--trace" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--requests", "0"], "--requests"),
        (["--concurrency", "0"], "--concurrency"),
        (["--systems", "x"], "--systems"),
    ],
    ids=["zero-requests", "zero-concurrency", "unknown-system"],
)
def test_bad_overhead_option_exits_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["overhead", *args])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_crosscheck_refuses_a_router(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["crosscheck", "--trace", str(tiny_trace), "--policies", "smg"])
    assert exit_info.value.code == 2
    assert "--policies" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["h2h", "--help"])
    assert exit_info.value.code == 0
    assert "--time-factor" in capsys.readouterr().out
