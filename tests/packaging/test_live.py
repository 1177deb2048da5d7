"""The packaging tests' own helpers (`tests/packaging/live.py`)."""

from __future__ import annotations

from tests.packaging import live


def test_a_refusal_is_a_403_of_its_own_not_a_port_or_a_timestamp() -> None:
    lines = [
        "2026-12-08 01:44:37,403 INFO sbs.operator: reconciled team-9f5b60/deepseek-v3: 60 writes",
        "watching https://127.0.0.1:38403/apis/sbs.dev/v1alpha1",
        "PATCH /api/v1/namespaces/x/pods/y returned 403",
        'kube: {"kind":"Status","reason":"Forbidden"}',
        "code=403 message=denied",
    ]
    assert live.refusals("\n".join(lines)) == lines[2:]
