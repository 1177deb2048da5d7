"""Workload shaping: pure functions from traces, length tables or observed samples to new traces.

Every function returns a new `Trace` (sorted, first arrival at 0.0 s, rids renumbered) and never
changes its input. Random ones take a `seed` and are deterministic for it. Arguments are checked and
a bad one raises `ValueError` naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sbs.scheduler.core.types import Request
from sbs.sim.loaders.lengths import LengthTable
from sbs.sim.trace import Trace, build_trace

Lengths = LengthTable | Trace | tuple[int, int]
LengthSamples = Sequence[int] | npt.NDArray[np.integer]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def rate_scaled(trace: Trace, factor: float) -> Trace:
    """Multiply the arrival rate by `factor` (timestamps divided by it); lengths are unchanged."""
    _positive("factor", factor)
    requests = tuple(
        Request(r.rid, r.arrival_s / factor, r.prompt_tokens, r.output_tokens, r.hash_ids)
        for r in trace.requests
    )
    return Trace(f"{trace.name} rate x{factor:g}", requests, trace.block_tokens)


def load_scaled(trace: Trace, target_prompt_tokens_per_s: float, *, window_s: float | None = None) -> Trace:
    """Stretch or compress time so the mean offered prompt load is `target_prompt_tokens_per_s`.

    With `window_s`, so that the first `window_s` seconds offer it (a run that keeps only the start
    of a trace gets the load it asked for, though a trace's load varies along it); when the scaled
    trace is shorter than the window (it will be repeated), its mean does."""
    _positive("target_prompt_tokens_per_s", target_prompt_tokens_per_s)
    if trace.prompt_tokens_per_s <= 0:
        raise ValueError(
            f"trace {trace.name!r} spans {trace.duration_s:g} s, so its load cannot be scaled "
            "(needs at least two distinct arrival times)"
        )
    plain = rate_scaled(trace, target_prompt_tokens_per_s / trace.prompt_tokens_per_s)
    if window_s is None or plain.duration_s <= window_s:
        return plain
    _positive("window_s", window_s)
    # The window keeps the requests arriving before window_s × f in the trace's own time (f: the rate
    # factor); it offers the target when they carry target × window_s prompt tokens.
    cumulative = np.cumsum([r.prompt_tokens for r in trace.requests], dtype=np.float64)
    k = int(np.searchsorted(cumulative, target_prompt_tokens_per_s * window_s, side="left"))
    arrivals = np.array([r.arrival_s for r in trace.requests])
    after = int(np.searchsorted(arrivals, arrivals[min(k, len(arrivals) - 1)], side="right"))
    if after >= len(arrivals):  # the whole trace is not enough: it will be repeated at its mean
        return plain
    cut = 0.5 * (arrivals[after - 1] + arrivals[after])  # keeps the requests before `after`
    return rate_scaled(trace, cut / window_s)


def truncated(trace: Trace, duration_s: float) -> Trace:
    """Keep the requests arriving before `duration_s` (which may leave an empty trace)."""
    _positive("duration_s", duration_s)
    kept = tuple(r for r in trace.requests if r.arrival_s < duration_s)
    return Trace(f"{trace.name} first {duration_s:g}s", kept, trace.block_tokens)


def tiled(trace: Trace, duration_s: float) -> Trace:
    """Repeat the trace back to back until `duration_s` (for steady-state runs of a short trace).

    Copies follow each other with the trace's mean inter-arrival gap; each copy's prefix hashes are
    offset so that copies do not share cache blocks (only the trace's own reuse is kept).
    """
    _positive("duration_s", duration_s)
    if not trace.requests:
        return trace
    span = trace.duration_s
    if span <= 0:
        raise ValueError(f"trace {trace.name!r} spans 0 s; it cannot be repeated over time")
    period = span + (span / max(len(trace.requests) - 1, 1))
    top = max((h for r in trace.requests for h in r.hash_ids), default=-1) + 1
    out: list[Request] = []
    copy = 0
    while copy * period < duration_s:
        shift = copy * period
        for r in trace.requests:
            t = r.arrival_s + shift
            if t >= duration_s:
                break
            hashes = tuple(h + copy * top for h in r.hash_ids) if copy else r.hash_ids
            out.append(Request(len(out), t, r.prompt_tokens, r.output_tokens, hashes))
        copy += 1
    return Trace(f"{trace.name} tiled to {duration_s:g}s", tuple(out), trace.block_tokens)


def synthetic(
    *,
    rate_rps: float,
    duration_s: float,
    seed: int,
    cv: float = 1.0,
    lengths: Lengths,
) -> Trace:
    """Renewal-process arrivals at `rate_rps` for `duration_s`, lengths from `lengths`.

    `cv` is the coefficient of variation of the inter-arrival gaps: 1 is Poisson, other values use
    Gamma gaps with shape 1/cv² (cv > 1 bursty, cv < 1 smoother, 0 evenly spaced). `lengths` is a
    `LengthTable` or a `Trace` to draw (prompt, output) pairs from with replacement (a trace's prefix
    hashes are dropped), or a fixed `(prompt_tokens, output_tokens)` pair.
    """
    _positive("rate_rps", rate_rps)
    _positive("duration_s", duration_s)
    _cv(cv)
    _check_lengths(lengths)
    rng = _rng(seed)
    times = _piecewise_renewal(rng, np.array([0.0]), np.array([rate_rps]), duration_s, cv)
    prompts, outputs = _sample_lengths(rng, lengths, len(times))
    name = f"synthetic rate={rate_rps:g}rps cv={cv:g} {_lengths_name(lengths)} seed={seed}"
    return build_trace(name, times, prompts, outputs)


def bursty(
    *,
    base_rate_rps: float,
    burst_rate_rps: float,
    period_s: float,
    burst_s: float,
    duration_s: float,
    seed: int,
    cv: float = 1.0,
    lengths: Lengths,
) -> Trace:
    """On/off load: `burst_rate_rps` for the first `burst_s` of every `period_s`, `base_rate_rps` after.

    Arrivals are one Gamma renewal process (gap cv `cv`) run through the time change of that
    piecewise-constant rate, so gaps are Gamma-distributed at the local rate and the process carries
    over period boundaries. `base_rate_rps` may be 0 (pure on/off). Lengths as in `synthetic`.
    """
    if not (math.isfinite(base_rate_rps) and base_rate_rps >= 0):
        raise ValueError(f"base_rate_rps must be a non-negative number, got {base_rate_rps!r}")
    _positive("burst_rate_rps", burst_rate_rps)
    _positive("period_s", period_s)
    _positive("burst_s", burst_s)
    if burst_s > period_s:
        raise ValueError(f"burst_s must be <= period_s ({period_s:g}), got {burst_s!r}")
    _positive("duration_s", duration_s)
    _cv(cv)
    _check_lengths(lengths)
    periods = math.ceil(duration_s / period_s)
    period_starts = np.arange(periods, dtype=np.float64) * period_s
    starts = np.column_stack([period_starts, period_starts + burst_s]).ravel()
    rates = np.tile([burst_rate_rps, base_rate_rps], periods)
    keep = starts < duration_s
    rng = _rng(seed)
    times = _piecewise_renewal(rng, starts[keep], rates[keep], duration_s, cv)
    prompts, outputs = _sample_lengths(rng, lengths, len(times))
    name = (
        f"bursty base={base_rate_rps:g}rps burst={burst_rate_rps:g}rps for {burst_s:g}s every {period_s:g}s "
        f"cv={cv:g} {_lengths_name(lengths)} seed={seed}"
    )
    return build_trace(name, times, prompts, outputs)


def synthetic_from_observed(
    rate_per_s: float,
    prompt_lengths: LengthSamples,
    output_lengths: LengthSamples,
    duration_s: float,
    seed: int,
    *,
    cv: float = 1.0,
) -> Trace:
    """A trace of `duration_s` seconds at `rate_per_s` with lengths drawn from observed samples.

    Arrivals are a renewal process (`cv` = gap coefficient of variation: 1 Poisson, > 1 burstier) as
    in `synthetic`. When both samples have the same size they are taken as pairs (request i had
    prompt i and output i) and drawn together, keeping their correlation; otherwise prompt and output
    lengths are drawn independently from their own samples. A 0-token output counts as 1, as the
    trace loaders do.
    """
    prompts = _length_samples("prompt_lengths", prompt_lengths, minimum=1)
    outputs = np.maximum(_length_samples("output_lengths", output_lengths, minimum=0), 1)
    _check_seed(seed)
    if len(prompts) == len(outputs):
        table = LengthTable(
            f"observed n={len(prompts)} mean {prompts.mean():.0f}/{outputs.mean():.0f}",
            tuple(prompts.tolist()),
            tuple(outputs.tolist()),
        )
        return synthetic(rate_rps=rate_per_s, duration_s=duration_s, seed=seed, cv=cv, lengths=table)
    arrivals = synthetic(rate_rps=rate_per_s, duration_s=duration_s, seed=seed, cv=cv, lengths=(1, 1))
    rng = np.random.default_rng([seed, 1])
    n = len(arrivals)
    return build_trace(
        f"synthetic rate={rate_per_s:g}rps cv={cv:g} independent lengths (observed n={len(prompts)}/"
        f"{len(outputs)} mean {prompts.mean():.0f}/{outputs.mean():.0f}) seed={seed}",
        [r.arrival_s for r in arrivals.requests],
        prompts[rng.integers(0, len(prompts), size=n)],
        outputs[rng.integers(0, len(outputs), size=n)],
    )


def _piecewise_renewal(
    rng: np.random.Generator, starts: FloatArray, rates: FloatArray, end_s: float, cv: float
) -> FloatArray:
    """Arrival times in [0, end_s) for rate `rates[i]` on [starts[i], starts[i+1]) (starts[0] = 0).

    A unit-rate renewal process with Gamma(1/cv², cv²) gaps, first event at 0, is mapped through the
    inverse of the cumulative rate function Λ(t).
    """
    ends = np.append(starts[1:], end_s)
    lam_end = np.cumsum(rates * (ends - starts))
    lam_start = np.concatenate([[0.0], lam_end[:-1]])
    horizon = float(lam_end[-1])
    if horizon <= 0:
        return np.empty(0)
    if cv == 0:
        units = np.arange(math.ceil(horizon), dtype=np.float64)
    else:
        shape = 1.0 / (cv * cv)
        batch = int(horizon * 1.1 + 8 * cv * math.sqrt(horizon) + 16)
        chunks = [np.zeros(1)]
        last = 0.0
        while last < horizon:
            chunk = last + np.cumsum(rng.gamma(shape, 1.0 / shape, size=batch))
            chunks.append(chunk)
            last = float(chunk[-1])
        units = np.concatenate(chunks)
    units = units[units < horizon]
    seg = np.searchsorted(lam_end, units, side="right")  # first segment whose Λ range holds the unit
    return starts[seg] + (units - lam_start[seg]) / rates[seg]


def _sample_lengths(rng: np.random.Generator, lengths: Lengths, n: int) -> tuple[IntArray, IntArray]:
    if isinstance(lengths, LengthTable):
        return lengths.sample(rng, n)
    if isinstance(lengths, Trace):
        idx = rng.integers(0, len(lengths), size=n)
        prompts = np.fromiter((r.prompt_tokens for r in lengths.requests), dtype=np.int64, count=len(lengths))
        outputs = np.fromiter((r.output_tokens for r in lengths.requests), dtype=np.int64, count=len(lengths))
        return prompts[idx], outputs[idx]
    prompt, output = lengths
    return np.full(n, prompt, dtype=np.int64), np.full(n, output, dtype=np.int64)


def _check_lengths(lengths: object) -> None:
    if isinstance(lengths, LengthTable):
        return
    if isinstance(lengths, Trace):
        if not lengths.requests:
            raise ValueError(f"lengths: trace {lengths.name!r} has no requests to draw lengths from")
        return
    if isinstance(lengths, tuple) and len(lengths) == 2 and all(type(v) is int and v >= 1 for v in lengths):
        return
    raise ValueError(
        "lengths must be a LengthTable, a Trace or a (prompt_tokens, output_tokens) pair of positive "
        f"integers, got {lengths!r:.80}"
    )


def _lengths_name(lengths: Lengths) -> str:
    if isinstance(lengths, LengthTable | Trace):
        return f"lengths={lengths.name}"
    return f"lengths={lengths[0]}/{lengths[1]}"


def _length_samples(name: str, values: LengthSamples, *, minimum: int) -> IntArray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of token counts, got {values!r:.80}")
    whole = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr))) and not np.any(arr % 1)
    )
    if not whole:
        raise ValueError(f"{name} must hold whole token counts, got {values!r:.80}")
    if arr.min() < minimum:
        raise ValueError(f"{name} must be >= {minimum} tokens each, got {int(arr.min())}")
    return arr.astype(np.int64)


def _check_seed(seed: int) -> None:
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _rng(seed: int) -> np.random.Generator:
    _check_seed(seed)
    return np.random.default_rng(seed)


def _positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _cv(cv: float) -> None:
    if isinstance(cv, bool) or not isinstance(cv, int | float) or not (math.isfinite(cv) and cv >= 0):
        raise ValueError(f"cv must be a non-negative number (1 = Poisson), got {cv!r}")
