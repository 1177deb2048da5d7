"""ServeGen sampler: determinism, rates, lengths and errors on malformed per-client data."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders import servegen

TRACES = Path(__file__).resolve().parents[3] / ".." / "shared" / "traces"
R1 = TRACES / "servegen_deepseek_r1"


def _real() -> Path:
    if not (R1 / "data").is_dir():
        pytest.skip(f"ServeGen data not found at {R1} (expected ../shared/traces beside the repo)")
    return R1


def _make(
    folder: Path,
    client: int = 0,
    windows: list[str] | None = None,
    pdfs: dict[str, dict[str, str]] | None = None,
) -> Path:
    """A tiny ServeGen folder: one client, Poisson-ish windows, a two-point length pdf."""
    folder.mkdir(exist_ok=True)
    rows = windows if windows is not None else ["0,1.0,1.0,Gamma,1.0,1.0", "600,0,0,,0,0"]
    (folder / f"chunk-{client}-trace.csv").write_text("\n".join(rows) + "\n")
    pdf = {"input_tokens": "{100: 0.5, 300: 0.5}", "output_tokens": "{10: 1.0}", "reason_ratio": "{0.5: 1.0}"}
    (folder / f"chunk-{client}-dataset.json").write_text(json.dumps(pdfs if pdfs is not None else {"0": pdf}))
    return folder


def _pairs(trace) -> Counter[tuple[int, int]]:
    return Counter((r.prompt_tokens, r.output_tokens) for r in trace.requests)


def test_real_hour_is_deterministic_and_at_the_published_rate():
    trace = servegen.generate(_real(), 3_600, seed=1)
    # The 73 clients' rates average 19.3 req/s over the first six windows.
    assert len(trace) == pytest.approx(19.3 * 3_600, rel=0.1)
    again = servegen.generate(R1 / "data", 3_600, seed=1)
    assert again == trace
    other = servegen.generate(R1, 3_600, seed=2)
    assert [r.arrival_s for r in other.requests[:50]] != [r.arrival_s for r in trace.requests[:50]]


def test_real_client_lengths_follow_its_pdf():
    # README: client 1, window 0 has mean input ~176 and mean output ~587 tokens.
    trace = servegen.generate(_real(), 21_600, seed=0, clients=[1])
    assert len(trace) > 1_000
    prompts = np.array([r.prompt_tokens for r in trace.requests])
    outputs = np.array([r.output_tokens for r in trace.requests])
    assert prompts.mean() == pytest.approx(176, rel=0.05)
    assert outputs.mean() == pytest.approx(587, rel=0.1)


def test_real_clients_are_sampled_independently():
    both = servegen.generate(_real(), 1_800, seed=5, clients=[1, 3])
    one = servegen.generate(R1, 1_800, seed=5, clients=[1])
    three = servegen.generate(R1, 1_800, seed=5, clients=[3])
    assert len(both) == len(one) + len(three)
    assert _pairs(both) == _pairs(one) + _pairs(three)


def test_real_span_wraps_around_the_day():
    trace = servegen.generate(_real(), 1_200, seed=0, start_s=86_400 - 600)
    assert len(trace) > 0
    assert trace.duration_s < 1_200


def test_real_clients_are_listed():
    assert servegen.clients_in(_real()) == tuple(range(73))


def test_rate_decides_the_count_not_the_fitted_scale(tmp_path):
    # A Gamma fit whose own mean gap is 1 ms: the window still holds ~rate * 600 requests.
    folder = _make(tmp_path / "sg", windows=["0,0.5,1.0,Gamma,1.0,0.001"])
    counts = [len(servegen.generate(folder, 600, seed=s)) for s in range(5)]
    assert np.mean(counts) == pytest.approx(300, rel=0.1)


def test_rate_scale_multiplies_the_count(tmp_path):
    folder = _make(tmp_path / "sg", windows=["0,2.0,1.0,Gamma,1.0,0.5", "600,2.0,1.0,Gamma,1.0,0.5"])
    base = len(servegen.generate(folder, 1_200, seed=3))
    scaled = len(servegen.generate(folder, 1_200, seed=3, rate_scale=3.0))
    assert base == pytest.approx(2_400, rel=0.1)
    assert scaled == pytest.approx(3 * base, rel=0.1)


def test_weibull_fit_keeps_its_burstiness(tmp_path):
    # Weibull shape 0.5 has a gap cv of sqrt(5) ~ 2.24 whatever the scale.
    rows = [f"{600 * k},5.0,2.2,Weibull,0.5,1.0" for k in range(20)]
    trace = servegen.generate(_make(tmp_path / "sg", windows=rows), 12_000, seed=11)
    gaps = np.diff([r.arrival_s for r in trace.requests])
    assert gaps.std() / gaps.mean() == pytest.approx(math.sqrt(5), rel=0.2)
    assert len(trace) == pytest.approx(60_000, rel=0.15)


def test_lengths_come_from_the_pdf(tmp_path):
    trace = servegen.generate(_make(tmp_path / "sg"), 600, seed=0)
    assert set(_pairs(trace)) == {(100, 10), (300, 10)}


def test_idle_windows_yield_nothing(tmp_path):
    folder = _make(tmp_path / "sg", windows=["0,0,0,,0,0", "600,1.0,1.0,Gamma,1.0,1.0"])
    trace = servegen.generate(folder, 600, seed=0)
    assert len(trace) == 0


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("0,1.0,1.0,Lognormal,1.0,1.0", "family"),
        ("0,abc,1.0,Gamma,1.0,1.0", "rate"),
        ("0,1.0,1.0,Gamma,0,1.0", "shape"),
        ("600,1.0,1.0,Gamma,1.0,1.0", "window_start_s"),
        ("0,1.0,1.0,Gamma", None),
    ],
    ids=["unknown_family", "bad_rate", "zero_shape", "window_gap", "short_row"],
)
def test_malformed_window_names_line_and_field(tmp_path, row, field):
    folder = _make(tmp_path / "sg", windows=[row])
    with pytest.raises(TraceFormatError) as info:
        servegen.generate(folder, 600, seed=0)
    assert info.value.line == 1
    assert info.value.field == field
    assert info.value.path.endswith("chunk-0-trace.csv")


def test_pdf_is_parsed_as_a_literal_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    folder = _make(tmp_path / "sg", pdfs={"0": {"input_tokens": payload, "output_tokens": "{10: 1.0}"}})
    with pytest.raises(TraceFormatError, match=r"field '0\.input_tokens' must be a dict literal"):
        servegen.generate(folder, 600, seed=0)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("pdf", "match"),
    [
        ("{}", "is empty, but the client has traffic"),
        ("{0: 1.0}", "positive integer token counts"),
        ("{10: -1.0}", "non-negative with a positive sum"),
    ],
    ids=["empty", "zero_tokens", "negative_probability"],
)
def test_bad_pdf_is_reported(tmp_path, pdf, match):
    folder = _make(tmp_path / "sg", pdfs={"0": {"input_tokens": pdf, "output_tokens": "{10: 1.0}"}})
    with pytest.raises(TraceFormatError, match=match):
        servegen.generate(folder, 600, seed=0)


def test_folder_errors(tmp_path):
    with pytest.raises(TraceFormatError, match="is not a directory"):
        servegen.generate(tmp_path / "missing", 600, seed=0)
    with pytest.raises(TraceFormatError, match=r"holds no chunk-N-trace\.csv"):
        servegen.generate(tmp_path, 600, seed=0)


def test_unknown_client_lists_what_exists(tmp_path):
    folder = _make(tmp_path / "sg")
    with pytest.raises(ValueError, match=r"clients \[5\] have no chunk-N-trace.csv"):
        servegen.generate(folder, 600, seed=0, clients=[0, 5])
    with pytest.raises(ValueError, match="clients must name at least one"):
        servegen.generate(folder, 600, seed=0, clients=[])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"duration_s": 0}, "duration_s"),
        ({"start_s": -1.0}, "start_s"),
        ({"rate_scale": 0.0}, "rate_scale"),
        ({"seed": -3}, "seed"),
    ],
    ids=["duration", "start", "rate_scale", "seed"],
)
def test_bad_arguments_name_the_parameter(tmp_path, kwargs, name):
    folder = _make(tmp_path / "sg")
    args = {"duration_s": 600.0, "seed": 0} | kwargs
    duration = args.pop("duration_s")
    with pytest.raises(ValueError, match=f"^{name} must be"):
        servegen.generate(folder, duration, **args)
