"""Measuring one API client and one process from outside: the API server's own request counters for a
ServiceAccount, a Prometheus histogram's quantiles, and a process's resident memory.

`apiserver_request_total` has no label naming the client, so the client is isolated by API Priority
and Fairness instead: `flow_schemas` classifies every request of one ServiceAccount into three
FlowSchemas of its own (Lease calls, writes, everything else), all at the priority level a
ServiceAccount gets anyway (`workload-low`, from the built-in `service-accounts` FlowSchema), and
the API server counts each FlowSchema's requests in `apiserver_flowcontrol_dispatched_requests_total`
(and its 429s in `apiserver_flowcontrol_rejected_requests_total`). The API server's audit log, kept
for that user only (`audit_policy`), says which calls they were (`audit_calls`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"
PRIORITY_LEVEL = "workload-low"
"""Where the built-in `service-accounts` FlowSchema puts every ServiceAccount: classifying the client
changes what is counted, not how it is served."""
CLASSES = ("lease", "write", "read")
"""Request classes, in matching order: Lease calls (leader election), other writes, the rest."""
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
DISPATCHED = "apiserver_flowcontrol_dispatched_requests_total"
REJECTED = "apiserver_flowcontrol_rejected_requests_total"
ALL_REQUESTS = "apiserver_request_total"


def flow_schema_name(prefix: str, cls: str) -> str:
    return f"{prefix}-{cls}"


def flow_schemas(prefix: str, namespace: str, account: str, precedence: int = 100) -> list[dict[str, Any]]:
    """FlowSchemas `<prefix>-lease|write|read` matching every request of ServiceAccount
    `namespace/account`, before any built-in FlowSchema but `exempt` (precedence 1)."""
    subject = {"kind": "ServiceAccount", "serviceAccount": {"name": account, "namespace": namespace}}
    anything = {"apiGroups": ["*"], "resources": ["*"], "clusterScope": True, "namespaces": ["*"]}
    rules = {
        "lease": [{"subjects": [subject], "resourceRules": [{
            "verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "clusterScope": True, "namespaces": ["*"]}]}],
        "write": [{"subjects": [subject], "resourceRules": [{"verbs": WRITE_VERBS, **anything}]}],
        "read": [{"subjects": [subject], "resourceRules": [{"verbs": ["*"], **anything}],
                  "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}],
    }  # fmt: skip
    return [
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": flow_schema_name(prefix, cls)},
            "spec": {
                "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
                "matchingPrecedence": precedence + i,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": rules[cls],
            },
        }
        for i, cls in enumerate(CLASSES)
    ]


def samples(text: str, names: Iterable[str]) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of the metrics `names` in a Prometheus text page; other
    lines are skipped before parsing (the API server's page is megabytes)."""
    wanted = tuple(names)
    kept = "\n".join(line for line in text.splitlines() if line.startswith(wanted)) + "\n"
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(kept) for s in fam.samples]


@dataclasses.dataclass(frozen=True)
class ClientCount:
    """Cumulative API requests of one client by class, and of all clients, at one moment."""

    t: float
    """Monotonic seconds."""
    wall: float
    """Unix seconds (to find the same window in the audit log)."""
    by_class: Mapping[str, float]
    rejected: float
    all_clients: float
    spread: float = 0.0
    """Half the time the read took: the counters were taken somewhere within `t` ± `spread`."""

    @property
    def total(self) -> float:
        return sum(self.by_class.values()) + self.rejected

    def minus(self, earlier: ClientCount) -> dict[str, Any]:
        """Requests between `earlier` and this count: totals and per-second rates."""
        dt = max(self.t - earlier.t, 1e-9)
        by_class = {c: self.by_class[c] - earlier.by_class[c] for c in CLASSES}
        total = self.total - earlier.total
        everyone = self.all_clients - earlier.all_clients
        return {
            "seconds": round(dt, 2),
            "requests": int(total),
            "per_s": round(total / dt, 3),
            "by_class": {c: int(v) for c, v in by_class.items()},
            "per_s_by_class": {c: round(v / dt, 3) for c, v in by_class.items()},
            "rejected_429": int(self.rejected - earlier.rejected),
            "all_clients_per_s": round(everyone / dt, 1),
            "window_unix": [earlier.wall, self.wall],
            "edge_s": round(earlier.spread + self.spread, 3),
        }


def client_count(text: str, prefix: str, t: float, wall: float, spread: float = 0.0) -> ClientCount:
    """The counts of FlowSchemas `<prefix>-*` and of `apiserver_request_total` in a metrics page."""
    by_class = dict.fromkeys(CLASSES, 0.0)
    rejected = everyone = 0.0
    names = {flow_schema_name(prefix, c): c for c in CLASSES}
    for name, labels, value in samples(text, (DISPATCHED, REJECTED, ALL_REQUESTS)):
        cls = names.get(labels.get("flow_schema", ""))
        if name == DISPATCHED and cls:
            by_class[cls] += value
        elif name == REJECTED and cls:
            rejected += value
        elif name == ALL_REQUESTS:
            everyone += value
    return ClientCount(t, wall, by_class, rejected, everyone, spread)


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound → count) of an unlabelled Prometheus histogram."""
    return {float(labels["le"]): value for n, labels, value in samples(text, (f"{name}_bucket",))}


def quantile(q: float, later: Mapping[float, float], earlier: Mapping[float, float] | None = None) -> float:
    """The q-quantile of the observations between two bucket snapshots, interpolated linearly within
    its bucket as Prometheus's `histogram_quantile` does (NaN without observations; the largest
    finite bound when it falls in the +Inf bucket)."""
    bounds = sorted(later)
    counts = [later[b] - (earlier or {}).get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def observations(later: Mapping[float, float], earlier: Mapping[float, float] | None = None) -> int:
    return int(later.get(math.inf, 0.0) - (earlier or {}).get(math.inf, 0.0))


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (`VmHWM`: its peak), MiB; NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return math.nan


def audit_policy(username: str) -> str:
    """An audit policy that records every request of `username` (metadata only) and nothing else."""
    return yaml.safe_dump({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [username]}, {"level": "None"}],
    })  # fmt: skip


def audit_calls(path: Path, start: float, end: float) -> dict[str, int]:
    """Requests in an audit log received in [start, end) (Unix seconds), by `verb resource[/sub]`,
    most frequent first; each request once (a watch logs two stages)."""
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    with path.open() as f:
        for line in f:
            event = json.loads(line)
            if event["auditID"] in seen:
                continue
            seen.add(event["auditID"])
            t = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if start <= t < end:
                ref = event.get("objectRef") or {}
                what = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
                sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                counts[f"{event['verb']} {what}{sub}"] += 1
    return dict(counts.most_common())
