"""The service over each test module's `cluster` fixture (the modules choose their engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sbs.scheduler.core import compiled

from tests.scheduler.service.harness import Cluster, Service, start_service


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled() -> None:
    """The core's kernels compiled before any service starts, as `sbs-scheduler run` does before it
    listens: with a cold numba cache the first decision would otherwise wait seconds on a compile,
    past the timeouts of a test run on its own."""
    compiled.warm_up()


@pytest.fixture
async def service(cluster: Cluster) -> AsyncIterator[Service]:
    svc = await start_service(cluster)
    yield svc
    await svc.close()
