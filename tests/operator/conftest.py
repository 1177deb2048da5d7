"""Fixtures of the operator tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sbs.e2e.control_plane import ControlPlane

from tests.operator.live import Operator


@pytest.fixture
def operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(*extra: str) -> Operator:
        op = Operator(control_plane, namespace, tmp_path / f"operator-{len(started)}.log", *extra)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
