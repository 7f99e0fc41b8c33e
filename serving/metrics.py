"""Prometheus metrics of the API: request latency per route and status, model-cache counters.

Labels are the route's path *template* (``/v1/stores/{store}/customers/{entity_id}``), the method
and the status, never a store or an entity id, so the number of series stays bounded whatever the
traffic. The middleware is plain ASGI (no per-request task or body copy), and also writes the
optional access log (method, route, status, key id, milliseconds; never the key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["ApiMetrics", "MetricsMiddleware", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("storeml.serve.access")

#: Latency buckets (seconds): fine below 10 ms, where the targets are.
_BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)


class _CacheCollector:
    """Reads the model cache's counters at scrape time (no work per request)."""

    def __init__(self, stats: Callable[[], dict[str, float]]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.stats()
        for name, value in sorted(stats.items()):
            family = GaugeMetricFamily(
                f"storeml_api_model_cache_{name}",
                f"Store-model cache of the API process: {name.replace('_', ' ')}"
                " (cumulative counters and current sizes).",
            )
            family.add_metric([], float(value))
            yield family


class ApiMetrics:
    """The API's own registry (so that two apps in one process never share series)."""

    def __init__(self, cache_stats: Callable[[], dict[str, float]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "storeml_api_request_seconds",
            "Request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        if cache_stats is not None:
            self.registry.register(_CacheCollector(cache_stats))  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and counts it under its route template."""

    def __init__(self, app: Any, metrics: ApiMetrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unrouted)"
            code = str(status[0])
            self.metrics.latency.labels(template, scope["method"], code).observe(elapsed)
            if self.access_log:
                state = scope.get("state") or {}
                log.info(
                    "%s %s %s key=%s %.2fms",
                    scope["method"],
                    template,
                    code,
                    state.get("key_id", "-"),
                    elapsed * 1000,
                )
