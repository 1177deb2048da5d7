"""Counters and histograms updated only from the event loop's thread: plain numbers, no locks.

`prometheus_client`'s own metrics take a lock and walk their buckets in Python on every update; the
request path updates a dozen per request (issue 14's CPU profile put them at about 5 % of the
process). These keep the same names, help, labels and buckets and are read by the registry at scrape
time (which runs on the loop too), so `/metrics` shows what `Counter` and `Histogram` would: the
`_total` / `_bucket` / `_count` / `_sum` samples and a `_created` time per series.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class CounterChild:
    """One series of a counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()  # noqa: TID251 (an IO edge: the series' `_created` wall time)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class HistogramChild:
    """One series of a histogram: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()  # noqa: TID251 (an IO edge: the series' `_created` wall time)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # the first bound >= value (le)
        self.sum += value


C = TypeVar("C", CounterChild, HistogramChild)
F = TypeVar("F", CounterMetricFamily, HistogramMetricFamily)


class _Family(Collector, Generic[C, F]):
    """A metric with its label names and a child per label values, created on first use."""

    _family_type: type[F]

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._labelnames = tuple(labelnames)
        """(The attribute `prometheus_client`'s metrics keep them in, which tools read.)"""
        self._children: dict[tuple[str, ...], C] = {}
        self._unlabelled: C | None = None if self._labelnames else self.labels()
        registry.register(self)

    def _child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self.name}: expected labels {self._labelnames}, got {values!r}")
            child = self._children[values] = self._child()
        return child

    def _plain(self) -> C:
        """The series of a metric without labels."""
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {self._labelnames}: update a .labels(...) series")
        return self._unlabelled

    def _family(self) -> F:
        """The metric's family without samples."""
        return self._family_type(self.name, self.documentation, labels=self._labelnames)

    def describe(self) -> Iterable[Metric]:
        return [self._family()]  # the registry learns the series' names (and refuses a duplicate)

    def _series(self) -> Iterator[tuple[list[str], dict[str, str], C]]:
        for values, child in self._children.items():
            yield list(values), dict(zip(self._labelnames, values, strict=True)), child


class LoopCounter(_Family[CounterChild, CounterMetricFamily]):
    """`prometheus_client.Counter` for the loop's thread (exported as `<name>_total`)."""

    _family_type = CounterMetricFamily

    def _child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._plain().inc(amount)

    def collect(self) -> list[Metric]:
        family = self._family()
        for values, _, child in self._series():
            family.add_metric(values, child.value, created=child.created)
        return [family]


class LoopHistogram(_Family[HistogramChild, HistogramMetricFamily]):
    """`prometheus_client.Histogram` for the loop's thread; `buckets` are the finite upper bounds."""

    _family_type = HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = (*(float(b) for b in buckets), float("inf"))
        super().__init__(name, documentation, labelnames, registry=registry)

    def _child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def observe(self, value: float) -> None:
        self._plain().observe(value)

    def collect(self) -> list[Metric]:
        family = self._family()
        for values, labels, child in self._series():
            cumulative, buckets = 0, []
            for bound, n in zip(self._bounds, child.counts, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(values, buckets, child.sum)
            family.samples.append(Sample(f"{self.name}_created", labels, child.created))
        return [family]
