"""Sample a DeepSeek-R1 workload from ServeGen's per-client, per-window fits (alibaba/ServeGen).

ServeGen publishes statistics, not requests. For each client `N`:

- `chunk-N-trace.csv` (no header): `window_start_s, rate, cv, family, shape, scale` per 600 s window;
  `family` is `Gamma` or `Weibull` (the fitted inter-arrival distribution), empty for an idle window.
- `chunk-N-dataset.json`: `{window_start_s: {"input_tokens": "<pdf>", "output_tokens": "<pdf>", ...}}`
  per 6 h window, each `<pdf>` a string holding a Python dict literal `{tokens: probability}`.

Arrivals of each client in each 600 s window are a renewal process whose gaps follow the fitted family
and shape, with the scale reset so the mean gap is `1 / (rate * rate_scale)`. The published fits alone
can be far off the window's rate (a window of 10 clustered requests fits a mean gap of 14 ms, which
would give ~40k requests), so the rate decides the count and the fit only the burstiness. Each window
starts at a random phase (first arrival uniform within one gap). A family-less window with a positive
rate would be sampled as Poisson (none occurs in the published data). Lengths are drawn independently
from the client's input/output pdfs of the enclosing 6 h window. Spans past the last window wrap
around to the start of the day.

Each client draws from its own generator seeded with `(seed, client)`, so a client's requests do not
depend on which other clients are selected.
"""

from __future__ import annotations

import ast
import csv
import functools
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sbs.sim.errors import TraceFormatError
from sbs.sim.loaders._fields import MAX_TOKENS, load_json, not_utf8, short, text_lines
from sbs.sim.trace import Trace, build_trace

WINDOW_S = 600.0
FAMILIES = ("Gamma", "Weibull")
MAX_RATE = 1000.0
"""Most requests/s a client's window may have (the published maximum is about 19)."""
SHAPES = {"Gamma": (1e-3, 1e3), "Weibull": (0.1, 1e3)}
"""Fit shapes sampled in bounded time and memory (published: Gamma 0.012-20, Weibull 0.26-1.4)."""
_TRACE_FIELDS = ("window_start_s", "rate", "cv", "family", "shape", "scale")
_CHUNK = re.compile(r"chunk-(\d+)-trace\.csv")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Window:
    """One 600 s window of one client: fitted gap distribution (None when idle)."""

    start_s: float
    rate: float
    family: str | None
    shape: float


def clients_in(data_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The client ids with a `chunk-N-trace.csv` in `data_dir` (or its `data/` subfolder), sorted."""
    return tuple(sorted(_clients(_resolve(data_dir))))


def generate(
    data_dir: str | os.PathLike[str],
    duration_s: float,
    *,
    seed: int,
    start_s: float = 0.0,
    rate_scale: float = 1.0,
    clients: Iterable[int] | None = None,
) -> Trace:
    """Sample `duration_s` of workload starting `start_s` into ServeGen's day, deterministic per seed.

    `rate_scale` multiplies every client's rate (window boundaries stay put); `clients` picks client ids
    (default: all in the folder). Arrivals are rebased so the first is at 0.0 s.
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a non-negative number of seconds, got {start_s!r}")
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be a positive number, got {rate_scale!r}")
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    folder = _resolve(data_dir)
    available = _clients(folder)
    if clients is None:
        chosen = sorted(available)
    else:
        chosen = sorted(set(clients))
        if not chosen:
            raise ValueError("clients must name at least one client id, got none (None selects all)")
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(
                f"clients {unknown} have no chunk-N-trace.csv in {folder} "
                f"(available: {min(available)}..{max(available)}, {len(available)} clients)"
            )
    end_s = start_s + duration_s
    times: list[FloatArray] = []
    prompts: list[IntArray] = []
    outputs: list[IntArray] = []
    for client in chosen:
        rng = np.random.default_rng([seed, client])
        t, p, o = _sample_client(folder, client, start_s, end_s, rate_scale, rng)
        times.append(t - start_s)
        prompts.append(p)
        outputs.append(o)
    name = f"servegen:{folder.parent.name if folder.name == 'data' else folder.name}"
    name += f" start={start_s:g}s duration={duration_s:g}s seed={seed}"
    if rate_scale != 1.0:
        name += f" rate_scale={rate_scale:g}"
    return build_trace(name, np.concatenate(times), np.concatenate(prompts), np.concatenate(outputs))


def _sample_client(
    folder: Path, client: int, start_s: float, end_s: float, rate_scale: float, rng: np.random.Generator
) -> tuple[FloatArray, IntArray, IntArray]:
    windows = _trace_windows(*_stamped(folder / f"chunk-{client}-trace.csv"))
    day_s = len(windows) * WINDOW_S
    dataset = _stamped(folder / f"chunk-{client}-dataset.json")
    # Arrivals per (6 h) dataset window, so lengths are drawn in one batch per pdf.
    by_pdf: dict[int, list[FloatArray]] = {}
    k = math.floor(start_s / WINDOW_S)
    while k * WINDOW_S < end_s:
        w = windows[k % len(windows)]
        lo = max(start_s, k * WINDOW_S)
        hi = min(end_s, (k + 1) * WINDOW_S)
        if w.rate > 0 and hi > lo:
            arr = lo + _renewal(rng, w, w.rate * rate_scale, hi - lo)
            if len(arr):
                key = _pdf_window(dataset, (k * WINDOW_S) % day_s)
                by_pdf.setdefault(key, []).append(arr)
        k += 1
    times: list[FloatArray] = [np.empty(0)]
    prompts: list[IntArray] = [np.empty(0, dtype=np.int64)]
    outputs: list[IntArray] = [np.empty(0, dtype=np.int64)]
    for key in sorted(by_pdf):
        arr = np.concatenate(by_pdf[key])
        times.append(arr)
        prompts.append(_draw(rng, _pdf(dataset, key, "input_tokens"), len(arr)))
        outputs.append(np.maximum(_draw(rng, _pdf(dataset, key, "output_tokens"), len(arr)), 1))
    return np.concatenate(times), np.concatenate(prompts), np.concatenate(outputs)


def _renewal(rng: np.random.Generator, w: _Window, rate: float, span_s: float) -> FloatArray:
    """Arrival offsets in [0, span_s) of a renewal process with mean gap 1/rate, random phase."""
    mean_gap = 1.0 / rate
    if w.family == "Gamma":
        scale = mean_gap / w.shape

        def gaps(n: int) -> FloatArray:
            return rng.gamma(w.shape, scale, size=n)
    elif w.family == "Weibull":
        scale = mean_gap / math.gamma(1.0 + 1.0 / w.shape)

        def gaps(n: int) -> FloatArray:
            return rng.weibull(w.shape, size=n) * scale
    else:

        def gaps(n: int) -> FloatArray:
            return rng.exponential(mean_gap, size=n)

    expected = span_s * rate
    batch = int(expected * 1.25 + 8 * math.sqrt(expected) + 16)
    first = rng.uniform() * gaps(1)[0]
    chunks = [np.array([first])]
    last = first
    while last < span_s:
        chunk = last + np.cumsum(gaps(batch))
        chunks.append(chunk)
        last = float(chunk[-1])
    arrivals = np.concatenate(chunks)
    return arrivals[arrivals < span_s]


def _draw(rng: np.random.Generator, pdf: tuple[IntArray, FloatArray], n: int) -> IntArray:
    values, cdf = pdf
    idx = np.searchsorted(cdf, rng.uniform(size=n) * cdf[-1], side="right")
    return values[np.minimum(idx, len(values) - 1)]


def _resolve(data_dir: str | os.PathLike[str]) -> Path:
    folder = Path(data_dir)
    if not folder.is_dir():
        message = "is not a directory of ServeGen chunk-N-*.{csv,json} files"
        raise TraceFormatError(data_dir, None, None, message)
    if not _clients(folder) and (folder / "data").is_dir():
        folder = folder / "data"
    if not _clients(folder):
        message = "holds no chunk-N-trace.csv files (ServeGen data expected)"
        raise TraceFormatError(data_dir, None, None, message)
    return folder


def _clients(folder: Path) -> set[int]:
    return {int(m.group(1)) for p in folder.iterdir() if (m := _CHUNK.fullmatch(p.name))}


@functools.lru_cache(maxsize=256)
def _trace_windows(path: str, stamp: int) -> tuple[_Window, ...]:
    windows: list[_Window] = []
    try:
        f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TraceFormatError(path, None, None, f"cannot be read: {exc.strerror}") from None
    with f:
        try:
            for line, row in enumerate(csv.reader(text_lines(path, f)), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                windows.append(_window(row, path, line, len(windows) * WINDOW_S))
        except csv.Error as exc:
            raise TraceFormatError(path, None, None, f"is not valid CSV: {exc}") from None
    if not windows:
        raise TraceFormatError(path, None, None, "has no windows")
    return tuple(windows)


def _window(row: list[str], path: str, line: int, expected: float) -> _Window:
    """One row of `chunk-N-trace.csv`, checked."""
    if len(row) != len(_TRACE_FIELDS):
        names = ",".join(_TRACE_FIELDS)
        message = f"expected {len(_TRACE_FIELDS)} columns ({names}), got {len(row)}"
        raise TraceFormatError(path, line, None, message)
    start = _number(row[0], path, line, "window_start_s")
    rate = _number(row[1], path, line, "rate")
    if rate > MAX_RATE:
        raise TraceFormatError(
            path, line, "rate", f"must be at most {MAX_RATE:g} requests/s, got {short(row[1])}"
        )
    family = row[3].strip() or None
    if family is not None and family not in FAMILIES:
        message = f"must be one of {', '.join(FAMILIES)} or empty, got {short(row[3])}"
        raise TraceFormatError(path, line, "family", message)
    shape = _number(row[4], path, line, "shape")
    if rate > 0 and family is not None and not SHAPES[family][0] <= shape <= SHAPES[family][1]:
        low, high = SHAPES[family]
        message = f"must be in [{low:g}, {high:g}] for a {family} fit, got {short(row[4])}"
        raise TraceFormatError(path, line, "shape", message)
    if start != expected:
        message = f"must be {expected:g} (consecutive 600 s windows), got {short(row[0])}"
        raise TraceFormatError(path, line, "window_start_s", message)
    return _Window(start, rate, family, shape)


def _stamped(path: Path) -> tuple[str, int]:
    """(path, modification time) as a cache key, so an edited file is read again."""
    try:
        return str(path), path.stat().st_mtime_ns
    except OSError as exc:
        raise TraceFormatError(path, None, None, f"cannot be read: {exc.strerror}") from None


def _number(text: str, path: str, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TraceFormatError(path, line, field, f"must be a non-negative number, got {short(text)}")
    return value


@functools.lru_cache(maxsize=64)
def _dataset(path: str, stamp: int) -> dict[int, dict[str, object]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except OSError as exc:
        raise TraceFormatError(path, None, None, f"cannot be read: {exc.strerror}") from None
    raw = load_json(text, path, None)
    if not isinstance(raw, dict) or not raw:
        raise TraceFormatError(path, None, None, "must be a non-empty JSON object keyed by window start (s)")
    out: dict[int, dict[str, object]] = {}
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit()) or not isinstance(value, dict):
            raise TraceFormatError(
                path, None, key[:40], "must be a window start in seconds mapping to an object"
            )
        out[int(key)] = value
    return out


def _pdf_window(dataset: tuple[str, int], t_s: float) -> int:
    """Start of the dataset window enclosing `t_s` (the latest start <= t_s)."""
    starts = sorted(_dataset(*dataset))
    enclosing = [s for s in starts if s <= t_s]
    return enclosing[-1] if enclosing else starts[0]


@functools.lru_cache(maxsize=1024)
def _pdf(dataset: tuple[str, int], window: int, field: str) -> tuple[IntArray, FloatArray]:
    """(token values, cumulative probabilities) of one pdf; arrays are read-only (cached)."""
    path = dataset[0]
    where = f"{window}.{field}"
    text = _dataset(*dataset)[window].get(field)
    if not isinstance(text, str):
        raise TraceFormatError(path, None, where, f"must be a string holding a dict literal, got {text!r}")
    try:
        pdf = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        message = f"must be a dict literal {{tokens: probability}}, got {text[:40]!r}"
        raise TraceFormatError(path, None, where, message) from None
    if not isinstance(pdf, dict) or not pdf:
        raise TraceFormatError(path, None, where, "is empty, but the client has traffic in this window")
    if not all(type(v) is int and 1 <= v <= MAX_TOKENS for v in pdf):
        message = f"keys must be positive integer token counts (<= {MAX_TOKENS})"
        raise TraceFormatError(path, None, where, message)
    bad = "probabilities must be finite and non-negative with a positive sum"
    if not all(type(p) in (int, float) and 0 <= p <= 1e300 for p in pdf.values()):  # NaN fails too
        raise TraceFormatError(path, None, where, bad)
    ints = np.fromiter(pdf.keys(), dtype=np.int64, count=len(pdf))
    probs = np.fromiter(pdf.values(), dtype=np.float64, count=len(pdf))
    if not (np.isfinite(probs.sum()) and probs.sum() > 0):
        raise TraceFormatError(path, None, where, bad)
    cdf = np.cumsum(probs)
    ints.flags.writeable = False
    cdf.flags.writeable = False
    return ints, cdf
