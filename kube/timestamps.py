"""The Kubernetes API's RFC 3339 timestamps (`metav1.Time` in seconds, `MicroTime` in microseconds)."""

from __future__ import annotations

import datetime as dt


def rfc3339(now: float) -> str:
    """`2026-12-05T07:14:05Z`: status conditions, Events, records of our own."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(now: float) -> str:
    """`2026-12-05T07:14:05.123456Z`: Lease times."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> float:
    """Seconds since the epoch of either form (raises ValueError on anything else)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
