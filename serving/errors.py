"""Every error the API returns has one JSON body::

    {"error": {"status": 404, "code": "not_found", "message": "...", "details": ...}}

Codes: ``unauthorized`` 401, ``forbidden`` 403, ``not_found`` 404, ``invalid`` 400/422 (FastAPI's
validation errors keep their list in ``details``), ``rate_limited`` 429 (with ``Retry-After``),
``unavailable`` 503 (Redis or the registry), ``internal`` 500. The SDK maps them to
:class:`storeml.errors.ApiError` subclasses. Messages never carry a key, and a 500 never carries
the exception text (it is logged, with the route).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from storeml.errors import CodecError, ConnectorError, ModelError

__all__ = [
    "ApiProblem",
    "problem",
    "error_response",
    "error_responses",
    "install_handlers",
    "ERROR_CODES",
]

log = logging.getLogger("storeml.serve")

ERROR_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
    500: "internal",
}


def error_responses(scope: str, not_found: str | None = None) -> dict[int | str, Any]:
    """The error answers a ``/v1`` route documents (``responses=`` of its router)."""
    from storeml.serving.bodies import ErrorBody

    texts = {
        400: "The body is not JSON.",
        401: "No API key, or an unknown or revoked one.",
        403: f"The key lacks the `{scope}` scope.",
        404: not_found or "No such profile, or a store this key may not see (the same answer).",
        422: "Invalid ids, fields or parameters; the message names them.",
        429: "The key's rate limit; see `Retry-After`.",
        503: "Redis or the model registry is unavailable; retry later.",
    }
    return {code: {"model": ErrorBody, "description": text} for code, text in texts.items()}


class ApiProblem(Exception):
    """Raised by routes and dependencies; becomes the error body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}


def problem(status: int, message: str, **kwargs: Any) -> ApiProblem:
    return ApiProblem(status, message, **kwargs)


def error_response(
    status: int, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {
        "status": status,
        "code": ERROR_CODES.get(status, "error"),
        "message": message,
    }
    if details is not None:
        body["details"] = details
    return Response(
        json.dumps({"error": body}, default=str),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        if isinstance(err.get("input"), str | int | float):
            item["input"] = str(err["input"])[:100]  # what was wrong, cut (ids may be long)
        out.append(item)
    return out


def install_handlers(app: FastAPI) -> None:
    """Route every error through :func:`error_response`."""

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return error_response(exc.status, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        details = _validation_details(exc)
        where = ".".join(details[0]["loc"]) if details else "request"
        first = details[0]["msg"] if details else "invalid request"
        if details and "input" in details[0]:
            first = f"{details[0]['input']!r}: {first}"
        return error_response(422, f"{where}: {first}"[:600], details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))

    @app.exception_handler(CodecError)
    async def _codec(request: Request, exc: CodecError) -> Response:
        return error_response(422, str(exc))

    @app.exception_handler(ConnectorError)
    async def _connector(request: Request, exc: ConnectorError) -> Response:
        log.warning("%s %s: %s", request.method, _route(request), exc)
        return error_response(503, "a backing service is unavailable; retry later")

    @app.exception_handler(ModelError)
    async def _model(request: Request, exc: ModelError) -> Response:
        log.warning("%s %s: %s", request.method, _route(request), exc)
        return error_response(503, f"model unavailable: {exc}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, _route(request))
        return error_response(500, "internal error (logged by the server)")


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "(unrouted)"
