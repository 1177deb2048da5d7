"""The app's routes, its OpenAPI description and its metric names (no engines needed)."""

from __future__ import annotations

from sbs.scheduler.service import openapi
from sbs.scheduler.service.app import make_app
from sbs.scheduler.service.metrics import Metrics
from sbs.settings.service import ServiceSettings


def test_openapi_describes_exactly_the_routes_served() -> None:
    app = make_app(ServiceSettings())
    routes = {(res.canonical, route.method.lower()) for res in app.router.resources() for route in res}
    spec = openapi.document()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert {r for r in routes if r[1] != "head"} == documented
    assert spec["openapi"].startswith("3.")
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op["responses"], path
            for ref in _refs(op):
                assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"], ref


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_error_reason_series_exists_from_the_start() -> None:
    text = Metrics().render().decode()
    assert 'sbs_requests_errored_total{endpoint="/generate",reason="engine_failed_after_prefill"} 0.0' in text
    assert 'sbs_requests_rejected_total{reason="buffer_full"} 0.0' in text
