"""The monitoring dashboard: ``GET /dashboard``, ``/dashboard/stores/{store}``, ``/dashboard/models/{name}``.

Server-rendered HTML (:mod:`storeml.serving.dashboard`) from the monitor's results in Redis
(:class:`~storeml.connectors.monitor_store.MonitorReader`, on the API's async client). The pages
are outside the OpenAPI document (``include_in_schema=False``): they are for people, not clients.

Auth, a dependency of the pages' router (no page can leave it out): with ``serve_auth`` on, an
**admin** key with the ``read`` scope is required, as ``Authorization: Bearer <key>`` or as the
``storeml_dashboard`` cookie that ``POST /dashboard/login`` (the form at ``GET /dashboard/login``)
sets: HttpOnly, SameSite=Strict, path ``/dashboard``, Secure over HTTPS. Keys are checked by the
API's :class:`~storeml.connectors.api_keys.KeyLookup` and count against the key's rate limit.
Without a key a page answers 401 with the login form; a store key answers 403. Every page is sent
with a Content-Security-Policy that allows its own inline script only, and ``no-store``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from storeml.connectors.api_keys import ADMIN
from storeml.connectors.monitor_store import MonitorReader
from storeml.serving.dashboard import (
    login_page,
    message_page,
    model_page,
    overview_page,
    store_page,
)
from storeml.serving.dashboard.layout import CONTENT_SECURITY_POLICY

__all__ = ["router", "login_router", "install", "COOKIE"]

COOKIE = "storeml_dashboard"
_COOKIE_SECONDS = 12 * 3600
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DashboardRefused(Exception):
    """A page refused: 401 (answered with the login form), 403 or 429."""

    def __init__(self, status: int, message: str, next_path: str = "/dashboard") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.next_path = next_path


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS | (headers or {}))


def _presented(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE) or None


async def dashboard_caller(request: Request) -> bool:
    """Admit an admin key (header or cookie); True when a cookie session can be logged out."""
    state = request.app.state.serving
    if not state.settings.serve_auth:
        return False
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    key = _presented(request)
    if not key:
        raise DashboardRefused(401, "an admin API key is required", here)
    record = await state.keys.check(key)
    if record is None:
        raise DashboardRefused(401, "the API key is unknown or revoked", here)
    if record.store != ADMIN or "read" not in record.scopes:
        raise DashboardRefused(403, "the dashboard needs an admin key (store '*') with 'read'")
    wait = state.limiter.take(record.key_id)
    if wait > 0:
        raise DashboardRefused(429, f"rate limit of this key reached; retry in {math.ceil(wait)} s")
    request.state.key_id = record.key_id
    return True


Session = Annotated[bool, Depends(dashboard_caller)]

router = APIRouter(
    prefix="/dashboard", include_in_schema=False, dependencies=[Depends(dashboard_caller)]
)
login_router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _reader(request: Request) -> MonitorReader:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def _limits(settings: Any) -> dict[str, float]:
    return {
        "stale_seconds": settings.monitor_stale_seconds,
        "lag_records": settings.monitor_lag_records,
        "dead_letter_ratio": settings.monitor_dead_letter_ratio,
    }


@router.get("", response_class=HTMLResponse)
async def overview(
    request: Request, session: Session, limit: Annotated[int, Query(ge=1, le=20_000)] = 500
) -> HTMLResponse:
    reader = _reader(request)
    models, health, history, open_alerts, recent = await asyncio.gather(
        reader.models(),
        reader.health(),
        reader.health_series(),
        reader.alerts("open", limit=200),
        reader.alerts(limit=50),
    )
    latest_drift, latest_perf, summary = await asyncio.gather(
        reader.latest_drift(), reader.latest_performance(), reader.drift_series("*")
    )
    series = await asyncio.gather(*(reader.performance_series(m["name"]) for m in models))
    drift_summary: dict[str, list[dict[str, Any]]] = {}
    for row in summary:
        drift_summary.setdefault(row["monitor"], []).append(row)
    body = overview_page(
        health=health,
        health_history=history,
        open_alerts=open_alerts,
        recent_alerts=recent,
        models=models,
        model_series={m["name"]: rows for m, rows in zip(models, series, strict=True)},
        drift_summary=drift_summary,
        latest_drift=latest_drift,
        latest_perf=latest_perf,
        limits=_limits(request.app.state.serving.settings),
        limit=limit,
        logout=session,
    )
    return _html(body)


@router.get("/stores/{store}", response_class=HTMLResponse)
async def store(request: Request, store: str, session: Session) -> HTMLResponse:
    reader = _reader(request)
    drift, performance, alerts, models = await asyncio.gather(
        reader.drift_series(store),
        reader.store_performance_series(store),
        reader.alerts(limit=100, store_id=store),
        reader.models(),
    )
    names = [m["name"] for m in models]
    if not (drift or performance or alerts):
        text = f"the monitor has no results for store {store!r} (yet)"
        return _html(message_page("No such store", text, logout=session), 404)
    settings = request.app.state.serving.settings
    body = store_page(
        store,
        drift=drift,
        performance=performance,
        alerts=alerts,
        min_js=settings.monitor_min_js,
        models=names,
        logout=session,
    )
    return _html(body)


@router.get("/models/{name}", response_class=HTMLResponse)
async def model(
    request: Request,
    name: str,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 500,
) -> HTMLResponse:
    reader = _reader(request)
    models, series, latest = await asyncio.gather(
        reader.models(), reader.performance_series(name), reader.latest_performance(name)
    )
    names = [m["name"] for m in models]
    found = next((m for m in models if m["name"] == name), None)
    if found is None:
        text = f"no monitor results for model {name!r}"
        return _html(message_page("No such model", text, logout=session), 404)
    body = model_page(
        name,
        model=found,
        series=series,
        latest_perf=latest,
        models=names,
        limit=limit,
        logout=session,
    )
    return _html(body)


def _safe_next(value: str | None) -> str:
    """Only a dashboard path (never another site: no ``//host`` or ``/\\host``)."""
    if not value or not value.startswith("/dashboard") or value.startswith(("//", "/\\")):
        return "/dashboard"
    return value


@login_router.get("/login", response_class=HTMLResponse)
async def login_form(next: str | None = None) -> HTMLResponse:
    return _html(login_page(_safe_next(next)))


@login_router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    key = (form.get("key") or [""])[0].strip()
    next_path = _safe_next((form.get("next") or [""])[0])
    state = request.app.state.serving
    record = await state.keys.check(key) if key else None
    if record is None or record.store != ADMIN or "read" not in record.scopes:
        error = "that key is not a valid admin key with the 'read' scope"
        return _html(login_page(next_path, error), 401)
    answer = RedirectResponse(next_path, status_code=303, headers=_HEADERS)
    answer.set_cookie(
        COOKIE,
        key,
        max_age=_COOKIE_SECONDS,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


@login_router.post("/logout")
async def logout() -> Response:
    answer = RedirectResponse("/dashboard/login", status_code=303, headers=_HEADERS)
    answer.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return answer


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app`` (after ``app.state.serving`` is set)."""
    state = app.state.serving
    app.state.dashboard = MonitorReader(state.redis, state.settings.redis_prefix)

    @app.exception_handler(DashboardRefused)
    async def _refused(request: Request, exc: DashboardRefused) -> Response:
        if exc.status == 401:
            return _html(
                login_page(_safe_next(exc.next_path), exc.message),
                401,
                {"WWW-Authenticate": 'Bearer realm="storeml dashboard"'},
            )
        return _html(message_page("Not allowed", exc.message), exc.status)

    app.include_router(login_router)
    app.include_router(router)
