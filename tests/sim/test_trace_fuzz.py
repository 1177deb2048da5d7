"""Trace fuzz: mutated slices of the real traces through every loader and through `sbs-sim compare`.

Each mutation (truncation, a field replaced by a wrong type, a negative time, a huge or non-finite
value, binary garbage, another encoding, a missing or extra column or key, reordered, blank or
duplicated lines) must load as a `Trace` or raise one `TraceFormatError` line that names the file;
the CLI must exit 0 or 2 with one line, never a traceback. The regression tests below pin each bug the
fuzz found.
"""

from __future__ import annotations

import ast
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sbs.sim.cli import MAX_REQUESTS, main
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import azure, lengths, load_trace, mooncake, servegen

from tests.sim.test_cli import assert_one_line_error, azure_csv

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"
SLICES = {  # format: (file, lines kept)
    "azure": (TRACES / "azure_llm_2023_conv" / "AzureLLMInferenceTrace_conv.csv", 30),
    "mooncake": (TRACES / "mooncake_fast25_synthetic" / "synthetic_trace.jsonl", 12),
    "lengths": (TRACES / "sharegpt_lengths_sarathi" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv", 30),
}
SERVEGEN = TRACES / "servegen_deepseek_r1" / "data"
LOADERS: dict[str, Callable[[Path], object]] = {
    "azure": azure.load,
    "mooncake": mooncake.load,
    "lengths": lengths.load,
}
BAD_VALUES = (
    "", " ", "-1", "-0.5", "0", "1.5", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "nan", "inf",
    "9" * 25, "1" * 5000, "2147483648", "true", "null", '"7"', "[]", "{}", "[" * 3000, "0x10", "1_000",
    "\u0663", "\u00b2", "\x00", "\ud800", "é", "2023-13-45 99:99:99", "99999-01-01 00:00:00",
    "1970-01-01 00:00:00", "2023-11-16T18:15:46+14:00",
)  # fmt: skip
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


def _slice(fmt: str) -> bytes:
    path, lines = SLICES[fmt]
    if not path.exists():
        pytest.fail(f"shared trace data not found at {path} (expected ../shared/traces beside the repo)")
    with path.open("rb") as f:
        return b"".join(f.readline() for _ in range(lines))


# -- mutations --------------------------------------------------------------------------------------


def _bad_value(data: st.DataObject) -> str:
    return data.draw(st.sampled_from(BAD_VALUES) | st.text(max_size=12), label="value")


def _edit_field(text: str, data: st.DataObject, jsonl: bool, how: str) -> str:
    """Replace, drop or add one field (CSV column or JSON key) of one line."""
    lines = text.split("\n")
    i = data.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
    if jsonl:
        try:
            obj = json.loads(lines[i])
        except (ValueError, RecursionError):
            return text
        if not isinstance(obj, dict) or not obj:
            return text
        key = data.draw(st.sampled_from(sorted(obj)), label="key")
        if how == "drop":
            del obj[key]
            lines[i] = json.dumps(obj)
        else:
            target = key if how == "replace" else "extra"
            obj[target] = "@@"
            lines[i] = json.dumps(obj).replace('"@@"', _bad_value(data))
    else:
        cells = lines[i].split(",")
        j = data.draw(st.integers(0, len(cells) - 1), label="column")
        if how == "drop":
            del cells[j]
        elif how == "add":
            cells.insert(j, _bad_value(data))
        else:
            cells[j] = _bad_value(data)
        lines[i] = ",".join(cells)
    return "\n".join(lines)


def _edit_lines(text: str, data: st.DataObject) -> str:
    lines = text.split("\n")
    op = data.draw(st.sampled_from(["shuffle", "dup", "delete", "blank", "crlf", "cr"]), label="lines")
    if op == "shuffle":
        random.Random(data.draw(st.integers(0, 99), label="seed")).shuffle(lines)
    elif op == "dup":
        lines += lines[: data.draw(st.integers(1, 5), label="n")]
    elif op == "delete":
        del lines[data.draw(st.integers(0, len(lines) - 1), label="i")]
    elif op == "blank":
        lines.insert(data.draw(st.integers(0, len(lines)), label="i"), "   ")
    return "\r\n".join(lines) if op == "crlf" else "\r".join(lines) if op == "cr" else "\n".join(lines)


def mutate(sample: bytes, data: st.DataObject, *, jsonl: bool) -> bytes:
    """One to three mutations of `sample` (UTF-8 text), drawn by hypothesis."""
    out = sample
    ops = ["truncate", "replace", "drop", "add", "lines", "garbage", "encoding", "empty", "header"]
    for op in data.draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3), label="ops"):
        text = out.decode("utf-8", errors="replace")
        if op == "truncate":
            out = out[: data.draw(st.integers(0, len(out)), label="cut")]
        elif op in ("replace", "drop", "add"):
            out = _edit_field(text, data, jsonl, op).encode("utf-8", errors="surrogatepass")
        elif op == "header" and not jsonl:
            head, _, rest = text.partition("\n")
            out = (_edit_field(head, data, False, "replace") + "\n" + rest).encode("utf-8", "surrogatepass")
        elif op == "lines":
            out = _edit_lines(text, data).encode()
        elif op == "garbage":
            at = data.draw(st.integers(0, len(out)), label="at")
            out = out[:at] + data.draw(st.binary(min_size=1, max_size=16), label="bytes") + out[at:]
        elif op == "encoding":
            codec = data.draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"]), label="codec")
            out = ("é" + text).encode(codec, errors="replace")
        elif op == "empty":
            out = data.draw(st.sampled_from([b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf"]), label="empty")
    return out


# -- properties -------------------------------------------------------------------------------------


def assert_loads_or_one_line(load: Callable[[Path], object], path: Path) -> object | None:
    """The loader's result, or None after checking its error is one short line naming `path`."""
    try:
        return load(path)
    except TraceFormatError as exc:
        line = str(exc)
        assert line.startswith(str(path)), line
        assert "\n" not in line and len(line) < 400, line
        return None


def assert_cli_exits_cleanly(path: Path) -> None:
    args = ["compare", "--trace", str(path), "--cluster", "small", "--jobs", "1", "--policies", "sbs"]
    result = CliRunner().invoke(main, [*args, "--load", "0.5"])
    if result.exit_code != 0:
        assert_one_line_error(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.parametrize("fmt", sorted(SLICES))
@FUZZ
@given(data=st.data())
def test_mutated_slices_load_or_fail_with_one_line(fmt: str, data: st.DataObject, tmp_path_factory) -> None:
    sample = _slice(fmt)
    suffix = ".jsonl" if fmt == "mooncake" else ".csv"
    path = tmp_path_factory.mktemp("fuzz") / f"trace{suffix}"
    path.write_bytes(mutate(sample, data, jsonl=fmt == "mooncake"))
    assert_loads_or_one_line(LOADERS[fmt], path)
    if fmt != "lengths":
        assert_loads_or_one_line(load_trace, path)


@pytest.mark.parametrize("fmt", ["azure", "mooncake"])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_mutated_traces_through_compare_exit_0_or_2(fmt: str, data: st.DataObject, tmp_path_factory) -> None:
    suffix = ".jsonl" if fmt == "mooncake" else ".csv"
    path = tmp_path_factory.mktemp("cli") / f"trace{suffix}"
    path.write_bytes(mutate(_slice(fmt), data, jsonl=fmt == "mooncake"))
    assert_cli_exits_cleanly(path)


def _servegen_slice(dest: Path) -> Path:
    """Client 0 of ServeGen, each pdf cut to its 20 likeliest lengths."""
    if not SERVEGEN.is_dir():
        pytest.fail(f"shared ServeGen data not found at {SERVEGEN}")
    shutil.copy(SERVEGEN / "chunk-0-trace.csv", dest / "chunk-0-trace.csv")
    raw = json.loads((SERVEGEN / "chunk-0-dataset.json").read_text())
    for window in raw.values():
        for field in ("input_tokens", "output_tokens"):
            pdf = ast.literal_eval(window[field])
            window[field] = repr(dict(sorted(pdf.items(), key=lambda kv: -kv[1])[:20]))
    (dest / "chunk-0-dataset.json").write_text(json.dumps(raw, indent=1))
    return dest


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_servegen_data_samples_or_fails_with_one_line(data: st.DataObject, tmp_path_factory) -> None:
    folder = _servegen_slice(tmp_path_factory.mktemp("servegen"))
    name = data.draw(st.sampled_from(["chunk-0-trace.csv", "chunk-0-dataset.json"]), label="file")
    target = folder / name
    target.write_bytes(mutate(target.read_bytes(), data, jsonl=False))
    try:
        servegen.generate(folder, 1800.0, seed=1)
    except TraceFormatError as exc:
        line = str(exc)
        assert line.startswith(str(folder)), line
        assert "\n" not in line and len(line) < 400, line


# -- regressions: each failed before its fix with a traceback (or ran for days) ---------------------


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = "2023-11-16 18:15:46.6805900,374,44\n"


def _jsonl(ts: str = "0", inp: str = "600", ids: str = "[1, 2]") -> str:
    return f'{{"timestamp": {ts}, "input_length": {inp}, "output_length": 5, "hash_ids": {ids}}}\n'


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("latin1.csv", (HEADER + ROW + "2023-11-16 18:15:47,3é6,1\n").encode("latin-1"),
         ":3: is not UTF-8 text (byte 0xe9 at column 22)"),
        ("utf16.csv", (HEADER + ROW).encode("utf-16"), ":1: is UTF-16 text (byte-order mark)"),
        ("bad.jsonl", _jsonl().encode() + b"\xff\n", ":2: is not UTF-8 text (byte 0xff at column 1)"),
        ("huge-field.csv", HEADER + "2023-11-16 18:15:46," + "1" * 200_000 + ",4\n",
         ":2: is not valid CSV: field larger than field limit"),
        ("digits.csv", HEADER + "2023-11-16 18:15:46," + "1" * 5000 + ",4\n",
         ":2: field 'ContextTokens' must be at most 2147483647, got '1111"),
        ("big.csv", HEADER + "2023-11-16 18:15:46,10,100000000000000000000\n",
         ":2: field 'GeneratedTokens' must be at most 2147483647"),
        ("digits.jsonl", _jsonl(inp="1" * 5000), ":1: invalid JSON: a number is too long"),
        ("nested.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", ":1: invalid JSON: nested too deeply"),
        ("huge-ts.jsonl", _jsonl(ts="1" + "0" * 400), ":1: field 'timestamp' must be at most 2**53 ms"),
        ("big-input.jsonl", _jsonl(inp="1" + "0" * 30), ":1: field 'input_length' must be at most"),
        ("big-hash.jsonl", _jsonl(ids="[1" + "0" * 30 + "]"), ":1: field 'hash_ids' must hold 64-bit"),
    ],
)  # fmt: skip
def test_hostile_trace_files_fail_with_one_line(tmp_path: Path, name: str, data: bytes | str, expected: str):
    path = _write(tmp_path, name, data)
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}{expected}"), str(info.value)


def test_lengths_with_a_5000_digit_count_fails_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "lengths.csv", "num_prefill_tokens,num_decode_tokens\n" + "1" * 5000 + ",4\n")
    with pytest.raises(TraceFormatError, match="field 'num_prefill_tokens' must be at most 2147483647"):
        lengths.load(path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--duration", "60"], "--duration 60: trace 'trace.csv' spans no time"),
        (["--load", "0.5"], "--load: trace 'trace.csv' spans no time"),
    ],
)
def test_compare_rejects_a_trace_arriving_at_one_instant(tmp_path: Path, args: list[str], expected: str):
    path = azure_csv(tmp_path / "trace.csv", [(0.0, 500, 20), (0.0, 600, 30)])
    result = CliRunner().invoke(main, ["compare", "--trace", str(path), "--cluster", "small", *args])
    assert_one_line_error(result, expected)


def test_compare_rejects_a_trace_spanning_years_instead_of_polling_for_days(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", HEADER + "0001-01-01 00:00:00,10,4\n9999-12-31 23:59:59,10,4\n")
    result = CliRunner().invoke(main, ["compare", "--trace", str(path), "--cluster", "small"])
    assert_one_line_error(result, "spans 3.16e+11 s", "over the limit of 604,800")


def test_compare_rejects_tiling_a_microsecond_trace_to_millions_of_requests(tmp_path: Path) -> None:
    path = azure_csv(tmp_path / "trace.csv", [(0.0, 500, 20), (1e-6, 600, 30)])
    result = CliRunner().invoke(
        main, ["compare", "--trace", str(path), "--cluster", "small", "--duration", "60"]
    )
    assert_one_line_error(result, f"gives about 1.2e+08 requests, over {MAX_REQUESTS:,}")


def _servegen_row(folder: Path, row: str) -> None:
    lines = (folder / "chunk-0-trace.csv").read_text().splitlines()
    active = next(i for i, line in enumerate(lines) if not line.endswith(",0,0,,0,0"))
    lines[active] = row.format(start=lines[active].split(",")[0])
    (folder / "chunk-0-trace.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("{start},1e7,1,Gamma,1,1", "field 'rate' must be at most 1000 requests/s"),  # was: 56 GiB array
        ("{start},1,1,Weibull,1e-300,1", "field 'shape' must be in [0.1, 1000] for a Weibull"),  # overflow
        ("{start},1,1,Gamma,1e-300,1", "field 'shape' must be in [0.001, 1000] for a Gamma"),  # no end
    ],
)
def test_servegen_fits_that_cannot_be_sampled_fail_with_one_line(tmp_path: Path, row: str, expected: str):
    folder = _servegen_slice(tmp_path)
    _servegen_row(folder, row)
    with pytest.raises(TraceFormatError) as info:
        servegen.generate(folder, 3600.0, seed=1)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        (b"\xff{}", ":1: is not UTF-8 text"),
        ('{"0": {"input_tokens": 1' + "0" * 5000 + "}}", "invalid JSON: a number is too long"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
        ('{"\u00b2": {}}', "field '\u00b2' must be a window start in seconds"),
        ('{"0": {"input_tokens": "{1' + "0" * 30 + ': 1.0}", "output_tokens": "{1: 1.0}"}}',
         "field '0.input_tokens' keys must be positive integer token counts (<= 2147483647)"),
        ('{"0": {"input_tokens": "{5: 1' + "0" * 400 + '}", "output_tokens": "{1: 1.0}"}}',
         "field '0.input_tokens' probabilities must be finite"),
        ('{"0": {"input_tokens": "{[1]: 2}", "output_tokens": "{1: 1.0}"}}',
         "field '0.input_tokens' must be a dict literal"),
    ],
)  # fmt: skip
def test_servegen_datasets_that_cannot_be_read_fail_with_one_line(
    tmp_path: Path, dataset: bytes | str, expected: str
) -> None:
    folder = _servegen_slice(tmp_path)
    _write(folder, "chunk-0-dataset.json", dataset)
    with pytest.raises(TraceFormatError) as info:
        servegen.generate(folder, 3600.0, seed=1)
    assert expected in str(info.value)


def test_the_installed_sbs_sim_prints_one_line_for_binary_garbage(tmp_path: Path) -> None:
    path = _write(tmp_path, "garbage.jsonl", bytes(range(256)) * 4)
    exe = Path(sys.executable).parent / "sbs-sim"
    done = subprocess.run(
        [str(exe), "compare", "--trace", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr
        == f"sbs-sim: error: {path}:2: is not UTF-8 text (byte 0x80 at column 118); traces must be UTF-8\n"
    )
