"""The per-request shortcuts taken for CPU (issue 14): request ids without `uuid.UUID`, the tuned
garbage collector, lock-free metrics."""

from __future__ import annotations

import gc
import os
import re
import uuid

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sbs.scheduler.service import memory
from sbs.scheduler.service.dispatcher import uuid4_hex
from sbs.scheduler.service.loop_metrics import LoopCounter, LoopHistogram


def test_request_ids_are_uuid4_hex() -> None:
    for _ in range(2000):
        raw = os.urandom(16)
        assert uuid4_hex(raw) == uuid.UUID(bytes=raw, version=4).hex
    ids = {uuid4_hex() for _ in range(1000)}
    assert len(ids) == 1000 and all(uuid.UUID(i).version == 4 for i in ids)


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        memory.tune_gc(12_345)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _exposition(registry: CollectorRegistry) -> str:
    """The registry's text with each series' `_created` time blanked (the clocks differ)."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


def test_loop_metrics_expose_what_prometheus_client_metrics_do() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.1, 1, 2)
    c = (
        LoopCounter("x_requests", "Doc.", ["reason"], registry=ours),
        Counter("x_requests", "Doc.", ["reason"], registry=theirs),
    )
    u = (LoopCounter("x_plain", "Doc.", registry=ours), Counter("x_plain", "Doc.", registry=theirs))
    h = (
        LoopHistogram("x_seconds", "Doc.", buckets=buckets, registry=ours),
        Histogram("x_seconds", "Doc.", buckets=buckets, registry=theirs),
    )
    hl = (
        LoopHistogram("x_tokens", "Doc.", ["outcome"], buckets=buckets, registry=ours),
        Histogram("x_tokens", "Doc.", ["outcome"], buckets=buckets, registry=theirs),
    )
    for counter in c:
        counter.labels("a").inc()
        counter.labels("b").inc(2.5)
        counter.labels("a").inc()
    for plain in u:
        plain.inc()
    for hist in h:
        for v in (0.0, 0.005, 0.0051, 1, 1.5, 2, 7, 1e9):  # on a bound counts in it (le)
            hist.observe(v)
    for hist in hl:
        hist.labels("ok").observe(0.2)
        hist.labels("error")
    assert _exposition(ours) == _exposition(theirs)
    assert ours.get_sample_value("x_seconds_bucket", {"le": "0.005"}) == 2
    assert ours.get_sample_value("x_requests_total", {"reason": "a"}) == 2
    with pytest.raises(ValueError, match="non-negative"):
        c[0].labels("a").inc(-1)
    with pytest.raises(ValueError, match="x_requests: expected labels"):
        c[0].labels("a", "b")
    with pytest.raises(ValueError, match=r"x_tokens has labels \('outcome',\)"):
        hl[0].observe(1.0)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # the registry knows their names
        LoopCounter("x_requests", "Doc.", registry=ours)
