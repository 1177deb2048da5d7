"""Autoscaling decisions as pure functions: scheduler metrics in, group counts for both roles out.

Signals come from the deployment's SBS scheduler (`/metrics`), as deltas between two scrapes:
TTFT p90, scheduler queue-wait p90 and TPOT p90 (histograms), and the accepted request rate.
- Prefill scales up when either TTFT or queue-wait p90 exceeds its target (by the ratio, at most
  `maxStepGroups` per step) and down by one group when both stay below `scaleDownBelowFraction` of
  their targets (or there is no traffic).
- Decode scales the same way on TPOT p90 against `slo.tpotP90Seconds` (down by one when it is low
  or there is no traffic), always within the P:D ratio band of the prefill groups.
- HPA-style stabilisation: a scale-up waits until the pressure has lasted
  `scaleUpStabilizationSeconds`; a scale-down uses the highest recommendation of the last
  `scaleDownStabilizationSeconds` and waits `cooldownSeconds` after the previous change.
- Both roles change in one decision. The GPU budget counts desired groups (Pending pods included),
  so it is never exceeded while capacity is still coming up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from sbs.operator.autoscaling import policy_api


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts: upper bound → count (`+Inf` as math.inf)."""

    buckets: tuple[tuple[float, float], ...]

    def minus(self, older: Histogram | None) -> Histogram:
        if older is None:
            return self
        old = dict(older.buckets)
        return Histogram(tuple((le, max(c - old.get(le, 0.0), 0.0)) for le, c in self.buckets))

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float | None:
        """Prometheus' `histogram_quantile` (linear within the bucket); None without samples."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in self.buckets:
            if c >= rank:
                if math.isinf(le):
                    return prev_le
                if c == prev_c:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
            prev_le, prev_c = le, c
        return prev_le


@dataclass(frozen=True)
class Scrape:
    """One scrape of a scheduler's metrics."""

    at: float
    ttft: Histogram
    queue_wait: Histogram
    accepted: float
    prompt_tokens: Histogram = Histogram(())
    output_tokens: Histogram = Histogram(())
    tpot: Histogram = Histogram(())


def parse_metrics(text: str, at: float) -> Scrape:
    """The autoscaling signals in a Prometheus text exposition."""
    hist: dict[str, dict[float, float]] = {
        k: {} for k in ("sbs_ttft_seconds", "sbs_queue_wait_seconds", "sbs_request_prompt_tokens",
                        "sbs_request_output_tokens", "sbs_tpot_seconds")
    }  # fmt: skip
    accepted = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        if name.endswith("_bucket") and name[: -len("_bucket")] in hist:
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            series = hist[name[: -len("_bucket")]]
            series[bound] = series.get(bound, 0.0) + float(value)
        elif name == "sbs_requests_accepted_total":
            accepted += float(value)

    def histogram(key: str) -> Histogram:
        return Histogram(tuple(sorted(hist[key].items())))

    return Scrape(
        at, histogram("sbs_ttft_seconds"), histogram("sbs_queue_wait_seconds"), accepted,
        histogram("sbs_request_prompt_tokens"), histogram("sbs_request_output_tokens"),
        histogram("sbs_tpot_seconds"),
    )  # fmt: skip


@dataclass(frozen=True)
class Observation:
    """Signals over one window (between two scrapes)."""

    ttft_p90_s: float | None
    queue_wait_p90_s: float | None
    request_rate: float
    samples: int
    tpot_p90_s: float | None = None
    """None when no streamed request with token counts completed in the window."""

    @classmethod
    def between(cls, older: Scrape | None, newer: Scrape) -> Observation:
        waits = newer.queue_wait.minus(older.queue_wait if older else None)
        ttft = newer.ttft.minus(older.ttft if older else None)
        tpot = newer.tpot.minus(older.tpot if older else None)
        span = newer.at - older.at if older else 0.0
        rate = (newer.accepted - older.accepted) / span if older and span > 0 else 0.0
        return cls(
            ttft.quantile(0.9), waits.quantile(0.9), max(rate, 0.0), int(waits.count), tpot.quantile(0.9)
        )


@dataclass
class Memory:
    """What the controller remembers of one deployment between decisions (like HPA's recommendations)."""

    up_since: float | None = None
    recommendations: list[tuple[float, int, int]] = field(default_factory=list)
    last_change: float = -math.inf


@dataclass(frozen=True)
class Outcome:
    prefill: int
    decode: int
    reason: str

    def changes(self, prefill: int, decode: int) -> bool:
        return (self.prefill, self.decode) != (prefill, decode)


def _clamp(value: int, limits: policy_api.GroupLimits) -> int:
    return min(max(value, limits.min_groups), limits.max_groups)


def decode_for(prefill: int, decode: int, spec: policy_api.AutoscalingPolicySpec) -> int:
    """`decode` moved into the P:D band for `prefill` groups, within decode's limits."""
    lo = math.ceil(prefill / spec.ratio.max_prefill_per_decode) if prefill else 0
    hi = math.floor(prefill / spec.ratio.min_prefill_per_decode) if prefill else decode
    return _clamp(min(max(decode, lo), max(hi, lo)), spec.decode)


def _up(groups: int, pressure: float, step: int) -> int:
    """`groups` scaled by `pressure` (> 1): at least one more, at most `step` more."""
    return min(groups + step, max(groups + 1, math.ceil(groups * pressure)))


def recommend(prefill: int, decode: int, obs: Observation, spec: policy_api.AutoscalingPolicySpec) -> Outcome:
    """What the signals alone ask for (before stabilisation, cool-down and budget)."""
    ttft_ratio = (obs.ttft_p90_s or 0.0) / spec.slo.ttft_p90_seconds
    wait_ratio = (obs.queue_wait_p90_s or 0.0) / spec.signals.queue_wait_p90_seconds
    pressure = max(ttft_ratio, wait_ratio)
    step, low = spec.behaviour.max_step_groups, spec.signals.scale_down_below_fraction
    if obs.samples == 0:
        p, why = prefill - 1, "no traffic"
    elif pressure > 1.0:
        p = _up(prefill, pressure, step)
        what = "TTFT p90" if ttft_ratio >= wait_ratio else "queue wait p90"
        value = obs.ttft_p90_s if ttft_ratio >= wait_ratio else obs.queue_wait_p90_s
        target = (
            spec.slo.ttft_p90_seconds if ttft_ratio >= wait_ratio else spec.signals.queue_wait_p90_seconds
        )
        why = f"{what} {value:.3g} s > {target:.3g} s"
    elif pressure < low:
        p, why = prefill - 1, f"low load (p90 at {pressure:.0%} of target)"
    else:
        p, why = prefill, "within targets"
    p = _clamp(p, spec.prefill)
    d = decode
    if obs.samples == 0:
        d = decode - 1
    elif obs.tpot_p90_s is not None:
        tpot_ratio = obs.tpot_p90_s / spec.slo.tpot_p90_seconds
        if tpot_ratio > 1.0:
            d = _up(decode, tpot_ratio, step)
            why += f"; decode: TPOT p90 {obs.tpot_p90_s:.3g} s > {spec.slo.tpot_p90_seconds:.3g} s"
        elif tpot_ratio < low:
            d = decode - 1
    return Outcome(p, decode_for(p, d, spec), why)


def fit_budget(
    prefill: int, decode: int, want: Outcome, gpus: tuple[int, int], budget_left: int | None
) -> Outcome:
    """`want` reduced (scale-ups only) so the extra GPUs fit in `budget_left`."""
    if budget_left is None:
        return want
    p, d = want.prefill, want.decode
    extra = lambda p_, d_: max(p_ - prefill, 0) * gpus[0] + max(d_ - decode, 0) * gpus[1]  # noqa: E731
    while extra(p, d) > budget_left and (p > prefill or d > decode):
        if p > prefill and (d <= decode or (p - prefill) * gpus[0] >= (d - decode) * gpus[1]):
            p -= 1
        else:
            d -= 1
    if (p, d) == (want.prefill, want.decode):
        return want
    return Outcome(p, d, f"{want.reason}; capped by the GPU budget")


def decide(
    prefill: int,
    decode: int,
    obs: Observation,
    spec: policy_api.AutoscalingPolicySpec,
    memory: Memory,
    now: float,
    *,
    gpus_per_group: tuple[int, int],
    budget_left: int | None,
    floor: tuple[int, int] | None = None,
) -> Outcome:
    """The group counts to apply now (equal to the current ones when nothing should change).

    `floor`: the predicted (prefill, decode) need; the recommendation never goes below it."""
    b = spec.behaviour
    rec = recommend(prefill, decode, obs, spec)
    memory.recommendations = [
        r for r in memory.recommendations if now - r[0] < b.scale_down_stabilization_seconds
    ]
    memory.recommendations.append((now, rec.prefill, rec.decode))
    if floor is not None and (floor[0] > rec.prefill or floor[1] > rec.decode):
        p = min(max(rec.prefill, floor[0]), spec.prefill.max_groups)
        d = decode_for(p, max(rec.decode, floor[1]), spec)
        rec = Outcome(p, d, f"predicted need {floor[0]}P+{floor[1]}D; {rec.reason}")
    hold = Outcome(prefill, decode, rec.reason)
    up = rec.prefill > prefill or rec.decode > decode
    if up:
        memory.up_since = memory.up_since if memory.up_since is not None else now
        if now - memory.up_since < b.scale_up_stabilization_seconds:
            return hold
        out = fit_budget(prefill, decode, rec, gpus_per_group, budget_left)
    else:
        memory.up_since = None
        if not rec.changes(prefill, decode):
            return hold
        if now - memory.last_change < b.cooldown_seconds:
            return Outcome(prefill, decode, f"{rec.reason}; in cool-down")
        p = max(r[1] for r in memory.recommendations)
        d = max(r[2] for r in memory.recommendations)
        if (p, d) == (prefill, decode) or p > prefill or d > decode:
            return Outcome(prefill, decode, f"{rec.reason}; stabilising")
        if len(memory.recommendations) < 2 and b.scale_down_stabilization_seconds > 0:
            return Outcome(prefill, decode, f"{rec.reason}; stabilising")
        out = Outcome(p, d, rec.reason)
    if out.changes(prefill, decode):
        memory.last_change = now
    return out


def gpus(groups: Mapping[str, int], gpus_per_group: Mapping[str, int]) -> int:
    return sum(groups[r] * gpus_per_group[r] for r in groups)
