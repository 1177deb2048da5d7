"""Schemathesis against the running service's `/openapi.json`, emulated engines behind it (issue 13,
"Bad and hostile input").

Every operation gets `CASES` generated cases in each generation mode schemathesis offers for it
(positive: valid by the schema; negative: invalid), derandomized so CI is reproducible. Checks: no
server error (a 5xx other than the documented retryable 503 and the 504 of a passed deadline, both
with `retryable: true`), status codes, content types, headers and bodies as documented, negative data
refused, authentication enforced. Afterwards nothing is left: no job, no buffered request, no task
beyond the service's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from sbs.scheduler.service import openapi
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as oas_checks

from tests.scheduler.service.harness import Cluster, Service, start_cluster, start_service

CASES = 1000
"""Cases per operation, split evenly between the generation modes it has."""
TOKEN = "schemathesis-token"
CONTEXT = 96
"""A short context: generated `max_tokens` beyond it are refused by the engines at once."""


class Background:
    """The emulated engines and the service on an event loop of their own (schemathesis is sync)."""

    def __init__(self, tokens_file: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.cluster: Cluster = self.run(
            start_cluster(
                prefill=1, prefill_dp=2, decode=1, decode_dp=2, time_factor=0.0, context_length=CONTEXT
            )
        )
        self.service: Service = self.run(
            start_service(
                self.cluster,
                policy="least_load",
                time_factor=0.001,
                auth={"tokens_file": str(tokens_file)},
                admission={"request_timeout_s": 10.0},
                limits={"keepalive_timeout_s": 1.0},  # idle client connections close soon after the run
            )
        )

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=60)

    def tasks(self) -> set[asyncio.Task[Any]]:
        """The loop's tasks but the engines' connection handlers (the service's pooled connections to
        its engines stay open on purpose)."""

        async def snapshot() -> set[asyncio.Task[Any]]:
            return {
                t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not self._engines(t)
            }

        return self.run(snapshot())

    def _engines(self, task: asyncio.Task[Any]) -> bool:
        frame = getattr(task.get_coro(), "cr_frame", None)
        handler = frame.f_locals.get("self") if frame is not None else None
        manager = getattr(handler, "_manager", None)  # an aiohttp RequestHandler's server
        return manager is not None and manager is not self.service.runner.server

    def close(self) -> None:
        self.run(self.service.close())
        self.run(self.cluster.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(TOKEN + "\n")
    bg = Background(tokens)
    yield bg
    bg.close()


def no_unexpected_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """5xx only as documented: 503 (retryable) or 504 (deadline), with `retryable: true`."""
    if response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    retryable = isinstance(body, dict) and body.get("error", {}).get("retryable") is True
    assert response.status_code in (503, 504) and retryable, f"server error {response.status_code}: {body}"
    return None


CHECKS: list[Callable[..., Any]] = [
    no_unexpected_server_error,
    oas_checks.status_code_conformance,
    oas_checks.content_type_conformance,
    oas_checks.response_headers_conformance,
    oas_checks.response_schema_conformance,
    oas_checks.negative_data_rejection,
    oas_checks.ignored_auth,
]


def _auth_for(case: Any, mode: GenerationMode, auth: dict[str, str]) -> dict[str, str] | None:
    """Our valid token, unless a negative case brings its own `Authorization` header: replacing it
    would send a valid request that schemathesis judges as the invalid one it generated (the
    service's 401 for the generated header is the rejection it expects)."""
    if mode is GenerationMode.NEGATIVE and "Authorization" in (case.headers or {}):
        return None
    return auth


def run_operation(
    operation: Any, mode: GenerationMode, base_url: str, cases: int, statuses: dict[int, int]
) -> int:
    """Send `cases` generated cases; an operation with fewer distinct ones (no inputs) gets the ones
    it has sent again until `cases` requests were made. Counts the answers' statuses."""
    session = requests.Session()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    generated: list[Any] = []

    @settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        generated.append(case)
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=_auth_for(case, mode, auth), checks=CHECKS, timeout=30
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    fuzz()
    for i in range(cases - len(generated)):
        case = generated[i % len(generated)]
        response = case.call_and_validate(
            base_url=base_url, session=session, headers=_auth_for(case, mode, auth), checks=CHECKS, timeout=30
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    session.close()
    return max(cases, len(generated))


def test_schemathesis_finds_no_server_error_and_no_schema_violation(background: Background) -> None:
    svc = background.service
    doc = requests.get(svc.url + "/openapi.json", timeout=10).json()
    assert doc == openapi.document(auth=True)
    schema = schemathesis.openapi.from_dict(doc)
    tasks_before = background.tasks()
    summary: dict[str, dict[str, int]] = {}
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_inputs else [GenerationMode.POSITIVE]
        )
        summary[operation.label] = {
            mode.value: run_operation(operation, mode, svc.url, CASES // len(modes), statuses)
            for mode in modes
        }
    elapsed = time.monotonic() - started
    total = sum(sum(c.values()) for c in summary.values())
    print(f"\nschemathesis: {total} cases in {elapsed:.0f} s, answers {dict(sorted(statuses.items()))}")
    for label, counts in summary.items():
        print(f"  {label}: {counts}")
    assert len(summary) == sum(len(ops) for ops in doc["paths"].values())
    assert all(sum(counts.values()) >= CASES for counts in summary.values())
    # Nothing leaked: every request ended, the buffer is empty, no task beyond the service's own.
    background.run(svc.settled(timeout_s=15))
    assert svc.dispatcher.describe()["buffered"] == 0 and not svc.dispatcher.jobs
    background.run(svc.assert_accounted())
    deadline = time.monotonic() + 15
    while (leftover := background.tasks() - tasks_before) and time.monotonic() < deadline:
        time.sleep(0.1)  # connection handlers end as their sockets close
    assert not leftover, leftover
