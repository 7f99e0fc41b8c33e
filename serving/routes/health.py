"""``/healthz`` (the process answers), ``/readyz`` (Redis and the registry answer), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from storeml.serving.deps import State
from storeml.serving.metrics import CONTENT_TYPE

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis and the model registry answer",
    responses={503: {"description": "A check failed; `checks` names it."}},
)
async def readyz(state: State) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.profiles.ping(), timeout=2.0)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure is a "not ready", said in the body
        checks["redis"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    if state.predictor is not None:
        problem = state.predictor.ready()
        checks["registry"] = "ok" if problem is None else f"failed: {problem}"[:300]
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
