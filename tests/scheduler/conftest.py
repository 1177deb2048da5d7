"""The core's kernels compiled once, before any scheduler test runs."""

from __future__ import annotations

import pytest
from sbs.scheduler.core import compiled


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled() -> None:
    """As `sbs-scheduler run` compiles them before it listens: with a cold numba cache the first decision
    would otherwise wait seconds on a compile, past a service test's timeouts or a property test's
    deadline, when a test runs on its own."""
    compiled.warm_up()
