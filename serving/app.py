"""The serving API's application: ``create_app(settings)`` and what it holds while it runs.

``storeml serve`` runs it under uvicorn; tests serve it on a free port. Everything a request needs
is opened in the lifespan, not per request: one async Redis client (hiredis replies), the key
lookup, the predictor (store models from the registry, re-resolved in the background) and the
segment reader. No route makes a blocking call: registry and artifact access run in threads
outside the request path (``serving/predictor.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from storeml.connectors.api_keys import KeyLookup
from storeml.connectors.profile_reader import ProfileReader, connect_async
from storeml.connectors.segment_reader import SegmentReader
from storeml.serving.deps import RateLimiter
from storeml.serving.errors import install_handlers
from storeml.serving.metrics import ApiMetrics, MetricsMiddleware
from storeml.settings import Settings

__all__ = ["Serving", "create_app", "openapi_document", "API_VERSION"]

log = logging.getLogger("storeml.serve")

API_VERSION = "1.0.0"

_DESCRIPTION = """\
Per-store profiles, real-time predictions and segments from the storeml feature store.

Every `/v1` route needs an API key (`storeml keys create`), sent as `Authorization: Bearer <key>`
or `X-API-Key`. A store key sees only its own store: another store's path answers 404, exactly as
a missing profile does. Errors share one body: `{"error": {"status", "code", "message"}}`.
See docs/serving.md.
"""


@dataclass
class Serving:
    """What the routes use (``request.app.state.serving``)."""

    settings: Settings
    redis: Any
    profiles: ProfileReader
    segments: SegmentReader
    keys: KeyLookup
    limiter: RateLimiter
    metrics: ApiMetrics
    predictor: Any = None
    #: objects with ``async start()`` / ``async close()``, run by the lifespan in order
    startables: list[Any] = field(default_factory=list)


def _serving(settings: Settings) -> Serving:
    from storeml.models.store_models import get_model_cache
    from storeml.serving.predictor import Predictor

    redis_client = connect_async(settings.redis)
    cache = get_model_cache(settings.model_cache_size)
    state = Serving(
        settings=settings,
        redis=redis_client,
        profiles=ProfileReader(redis_client, settings.redis_prefix),
        segments=SegmentReader(redis_client, settings.redis_prefix),
        keys=KeyLookup(redis_client, settings.redis_prefix, settings.serve_key_cache_seconds),
        limiter=RateLimiter(settings.serve_rate_limit),
        metrics=ApiMetrics(cache.stats),
    )
    # --- the resources' services (one line each) ---------------------------------------------
    state.predictor = Predictor.from_settings(settings, state.profiles)
    state.startables.append(state.predictor)
    return state


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings`` (Redis, registry, keys, limits: the ``serve_*`` settings)."""
    from storeml.serving.routes import dashboard, health, predict, profiles, segments

    state = _serving(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[Any] = []
        try:
            for part in state.startables:
                await part.start()
                started.append(part)
            yield
        finally:
            for part in reversed(started):
                try:
                    await part.close()
                except Exception:  # closing one part must not keep the others open
                    log.exception("closing %r failed", part)
            await state.redis.aclose()

    app = FastAPI(
        title="storeml serving API",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.serving = state
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(profiles.router)
    # --- more routers (one line each) --------------------------------------------------------
    app.include_router(predict.router)
    app.include_router(segments.router)
    dashboard.install(app)  # HTML pages at /dashboard, outside the OpenAPI document
    app.add_middleware(
        MetricsMiddleware, metrics=state.metrics, access_log=settings.serve_access_log
    )
    return app


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document the API serves at ``/openapi.json`` (kept in docs/openapi.json)."""
    from storeml.settings import load_settings

    return create_app(settings or load_settings()).openapi()
