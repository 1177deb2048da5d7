"""The service over each test module's `cluster` fixture (the modules choose their engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.scheduler.service.harness import Cluster, Service, start_service


@pytest.fixture
async def service(cluster: Cluster) -> AsyncIterator[Service]:
    svc = await start_service(cluster)
    yield svc
    await svc.close()
