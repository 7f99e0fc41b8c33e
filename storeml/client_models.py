"""What the serving API answers, as the SDK (``storeml.client``) returns it; no I/O here.

``Client`` and ``AsyncClient`` differ only in how they wait for an answer; both read answers
with these functions:

* ``parse_*`` turn a decoded JSON answer into the frozen dataclasses below. An answer without the
  contract's shape (``docs/serving.md``) raises :class:`~storeml.errors.ApiError` with code
  ``bad_response``, never a bare ``KeyError``.
* :func:`error_for` maps an error answer (status, ``Retry-After``, the JSON error body
  ``{"error": {"status", "code", "message", "details"}}``) to the ``ApiError`` subclass of its
  code, else of its status; :func:`unreachable` wraps a transport failure (refused, timed out,
  cut off) as :class:`~storeml.errors.ApiUnavailableError` with status 0.

The requests are built in ``storeml.client_requests``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storeml.client_requests import ApiRequest
from storeml.errors import (
    ApiError,
    ApiForbiddenError,
    ApiInvalidError,
    ApiNotFoundError,
    ApiRateLimitedError,
    ApiUnauthorizedError,
    ApiUnavailableError,
)
from storeml.redaction import redact_url

__all__ = [
    "BatchResult",
    "CategoryScore",
    "ExportParser",
    "Freshness",
    "Health",
    "ModelRef",
    "PredictResult",
    "Prediction",
    "Profile",
    "SegmentItem",
    "SegmentPage",
    "error_for",
    "merge_batches",
    "merge_predictions",
    "parse_batch",
    "parse_health",
    "parse_predict",
    "parse_profile",
    "parse_segment_page",
    "unreachable",
]

#: Retry-After when a 429 does not say (the server always does).
_DEFAULT_RETRY_AFTER = 1.0
_SHOWN_BODY = 200  # characters of a non-JSON error body quoted in a message


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """The model version behind a score. ``scope`` (profiles, predictions) is ``store``,
    ``global`` or ``none``; ``alias`` is set on a predict answer's top-level model only."""

    name: str
    version: str | None
    scope: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class Freshness:
    """When the profile's latest event happened (event time) and when Redis got it (wall clock;
    None for a profile written before the stream recorded it)."""

    last_event_time: datetime
    written_at: datetime | None


@dataclass(frozen=True)
class Profile:
    """One stored profile as the API serves it.

    ``fields`` holds the profile's values as JSON gives them: numbers, lists, objects, and times as
    ISO 8601 strings (``Freshness`` has the two that matter as datetimes). They are kept in that
    form so that ``client.predict(..., rows=[profile.fields])`` posts them back unchanged.
    """

    kind: str
    store_id: str
    id: str
    profile_version: int
    fields: dict[str, Any]
    model: ModelRef | None
    freshness: Freshness

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def to_dict(self) -> dict[str, Any]:
        """The profile in the API's JSON form (what ``GET .../customers/{id}`` answered)."""
        return {
            "kind": self.kind,
            "store_id": self.store_id,
            "id": self.id,
            "profile_version": self.profile_version,
            "fields": self.fields,
            "model": None if self.model is None else _model_json(self.model),
            "freshness": {
                "last_event_time": _iso(self.freshness.last_event_time),
                "written_at": _iso(self.freshness.written_at),
            },
        }


@dataclass(frozen=True)
class BatchResult:
    """A batch lookup: the profiles found, in request order, and the ids not found."""

    profiles: tuple[Profile, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class CategoryScore:
    """One predicted category of a product (``rank`` 0 is the most likely)."""

    category: str
    probability: float
    rank: int


@dataclass(frozen=True)
class Prediction:
    """One scored entity. ``id`` is None for a posted row without one; ``propensity`` is set for
    customers, ``predicted_categories`` for products."""

    id: str | None
    model: ModelRef | None
    propensity: float | None = None
    predicted_categories: tuple[CategoryScore, ...] | None = None


@dataclass(frozen=True)
class PredictResult:
    """A predict answer. ``model`` is the version the alias named when the (first) request was
    served; each prediction carries the version that scored it."""

    model: ModelRef
    predictions: tuple[Prediction, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class SegmentItem:
    """One member of a segment and its score (propensity, or a category's probability)."""

    id: str
    score: float


@dataclass(frozen=True)
class SegmentPage:
    """One page of a segment, score descending (ties by id); ``next_cursor`` None on the last."""

    items: tuple[SegmentItem, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class Health:
    """``/healthz`` or ``/readyz``: ``ok`` is whether the server said so; ``checks`` names each
    dependency's state (``"ok"`` or what failed), ``message`` the error text of a refusal."""

    status: str
    checks: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- answers -----------------------------------------------------------------------------------
class _Shape(Exception):
    """An answer without the contract's shape (turned into ApiError by :func:`_parsing`)."""


def _get(body: Any, name: str) -> Any:
    if not isinstance(body, Mapping) or name not in body:
        raise _Shape(f"no {name!r} in {_short(body)}")
    return body[name]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= _SHOWN_BODY else f"{text[:_SHOWN_BODY]}..."


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Shape(f"time {value!r} is not an ISO 8601 string")
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise _Shape(f"time {value!r} is not ISO 8601") from exc


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _model(body: Any) -> ModelRef | None:
    if body is None:
        return None
    version = body.get("version") if isinstance(body, Mapping) else None
    return ModelRef(
        name=str(_get(body, "name")),
        version=None if version is None else str(version),
        scope=body.get("scope"),
        alias=body.get("alias"),
    )


def _model_json(model: ModelRef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": model.name, "version": model.version}
    if model.scope is not None:
        out["scope"] = model.scope
    if model.alias is not None:
        out["alias"] = model.alias
    return out


def _profile(body: Any) -> Profile:
    fields = _get(body, "fields")
    if not isinstance(fields, dict):
        raise _Shape(f"fields is not an object: {_short(fields)}")
    freshness = _get(body, "freshness")
    last_event_time = _time(_get(freshness, "last_event_time"))
    if last_event_time is None:
        raise _Shape("freshness.last_event_time is null")
    return Profile(
        kind=str(_get(body, "kind")),
        store_id=str(_get(body, "store_id")),
        id=str(_get(body, "id")),
        profile_version=int(_get(body, "profile_version")),
        fields=fields,
        model=_model(_get(body, "model")),
        freshness=Freshness(last_event_time, _time(freshness.get("written_at"))),
    )


def _parsing(what: str, parse: Any, body: Any) -> Any:
    try:
        return parse(body)
    except (_Shape, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ApiError(
            f"the API's answer to {what} does not have the documented shape ({exc}); is the"
            " server a storeml API of the same version as this client?",
            status=200,
            code="bad_response",
        ) from exc


def parse_profile(body: Any, what: str = "a lookup") -> Profile:
    """A ``Profile`` from a lookup's JSON answer."""
    return _parsing(what, _profile, body)  # type: ignore[no-any-return]


def parse_batch(body: Any, what: str = "a batchGet") -> BatchResult:
    """A ``BatchResult`` from a batchGet's JSON answer."""

    def parse(body: Any) -> BatchResult:
        profiles = tuple(_profile(item) for item in _get(body, "profiles"))
        return BatchResult(profiles, tuple(str(i) for i in _get(body, "missing")))

    return _parsing(what, parse, body)  # type: ignore[no-any-return]


def merge_batches(results: Iterable[BatchResult]) -> BatchResult:
    """One ``BatchResult`` of consecutive chunks (request order kept)."""
    profiles: list[Profile] = []
    missing: list[str] = []
    for result in results:
        profiles.extend(result.profiles)
        missing.extend(result.missing)
    return BatchResult(tuple(profiles), tuple(missing))


def _prediction(body: Any) -> Prediction:
    categories = body.get("predicted_categories") if isinstance(body, Mapping) else None
    propensity = body.get("propensity") if isinstance(body, Mapping) else None
    entity = _get(body, "id")
    return Prediction(
        id=None if entity is None else str(entity),
        model=_model(body.get("model")),
        propensity=None if propensity is None else float(propensity),
        predicted_categories=None
        if categories is None
        else tuple(
            CategoryScore(str(c["category"]), float(c["probability"]), int(c.get("rank", i)))
            for i, c in enumerate(categories)
        ),
    )


def parse_predict(body: Any, what: str = "a predict") -> PredictResult:
    """A ``PredictResult`` from a predict's JSON answer."""

    def parse(body: Any) -> PredictResult:
        model = _model(_get(body, "model"))
        if model is None:
            raise _Shape("model is null")
        predictions = tuple(_prediction(p) for p in _get(body, "predictions"))
        return PredictResult(model, predictions, tuple(str(i) for i in body.get("missing", ())))

    return _parsing(what, parse, body)  # type: ignore[no-any-return]


def merge_predictions(results: Sequence[PredictResult]) -> PredictResult:
    """One ``PredictResult`` of consecutive chunks; ``model`` is the first chunk's."""
    return PredictResult(
        results[0].model,
        tuple(p for r in results for p in r.predictions),
        tuple(i for r in results for i in r.missing),
    )


def _item(body: Any) -> SegmentItem:
    return SegmentItem(str(_get(body, "id")), float(_get(body, "score")))


def parse_segment_page(body: Any, what: str = "a segment page") -> SegmentPage:
    """A ``SegmentPage`` from a segment page's JSON answer."""

    def parse(body: Any) -> SegmentPage:
        cursor = _get(body, "next_cursor")
        items = tuple(_item(i) for i in _get(body, "items"))
        return SegmentPage(items, None if cursor in (None, "") else str(cursor))

    return _parsing(what, parse, body)  # type: ignore[no-any-return]


class ExportParser:
    """Reads a streamed export line by line: NDJSON objects, or CSV with an ``id,score`` header
    (other columns are ignored). Blank lines are skipped."""

    def __init__(self, format: str, what: str = "an export") -> None:
        self.format = format
        self.what = what
        self._columns: list[str] | None = None

    def feed(self, line: str) -> SegmentItem | None:
        """The item on ``line``, or None for a blank line or the CSV header."""
        if not line.strip():
            return None
        return _parsing(self.what, self._parse, line)  # type: ignore[no-any-return]

    def _parse(self, line: str) -> SegmentItem | None:
        if self.format == "ndjson":
            return _item(json.loads(line))
        values = next(csv.reader([line]))
        if self._columns is None:
            self._columns = values
            if "id" not in values or "score" not in values:
                raise _Shape(f"CSV header {line!r} lacks id and score")
            return None
        return _item(dict(zip(self._columns, values, strict=False)))


def parse_health(status: int, body: Any) -> Health:
    """``Health`` from ``/healthz`` or ``/readyz`` (a 503 names what failed)."""
    if not isinstance(body, Mapping):
        return Health("unavailable" if status >= 500 else "unknown", message=_short(body))
    if "error" in body and isinstance(body["error"], Mapping):  # a refusal in the error body form
        error = body["error"]
        details = error.get("details")
        checks = details.get("checks", details) if isinstance(details, Mapping) else {}
        return Health(
            str(error.get("code", "unavailable")),
            {str(k): str(v) for k, v in checks.items()},
            str(error.get("message", "")) or None,
        )
    checks = body.get("checks") or {}
    state = str(body.get("status", "ok" if status < 400 else "unavailable"))
    if status >= 400 and state == "ok":
        state = "unavailable"
    message = body.get("message")
    return Health(
        state,
        {str(k): str(v) for k, v in checks.items()},
        None if message is None else str(message),
    )


# --- errors ------------------------------------------------------------------------------------
_BY_CODE: dict[str, type[ApiError]] = {
    "unauthorized": ApiUnauthorizedError,
    "forbidden": ApiForbiddenError,
    "not_found": ApiNotFoundError,
    "invalid": ApiInvalidError,
    "rate_limited": ApiRateLimitedError,
    "unavailable": ApiUnavailableError,
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: ApiInvalidError,
    401: ApiUnauthorizedError,
    403: ApiForbiddenError,
    404: ApiNotFoundError,
    422: ApiInvalidError,
    429: ApiRateLimitedError,
    502: ApiUnavailableError,
    503: ApiUnavailableError,
    504: ApiUnavailableError,
}


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else _DEFAULT_RETRY_AFTER
    except ValueError:  # an HTTP date: not worth parsing for a rate limit of a second or so
        return _DEFAULT_RETRY_AFTER
    return max(seconds, 0.0)


def error_for(
    request: ApiRequest, status: int, content: bytes, retry_after: str | None = None
) -> ApiError:
    """The ``ApiError`` subclass for an error answer (by the body's code, else the status)."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        code = str(error.get("code", ""))
        text = str(error.get("message", "")) or code
        details = error.get("details")
    else:  # not our error body: a proxy's page, or FastAPI's {"detail": ...}
        code = ""
        shown = body.get("detail") if isinstance(body, Mapping) else None
        text = _short(shown) if shown is not None else content.decode("utf-8", "replace")
        text = text.strip()[:_SHOWN_BODY] or "(empty body)"
        details = None
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
    message = f"{request}: {status} {code or 'error'}: {text}"
    if cls is ApiRateLimitedError:
        return ApiRateLimitedError(
            message,
            retry_after=_retry_after(retry_after),
            status=status,
            code=code or "rate_limited",
            details=details,
        )
    return cls(message, status=status, code=code, details=details)


def unreachable(base_url: str, request: ApiRequest, exc: Exception) -> ApiUnavailableError:
    """The error for a request that got no answer (refused, timed out, cut off)."""
    reason = str(exc) or type(exc).__name__
    return ApiUnavailableError(
        redact_url(
            f"{request}: no answer from the storeml API at {base_url} ({type(exc).__name__}:"
            f" {reason}); is `storeml serve` running there, and is the URL right?"
        ),
        status=0,
        code="unavailable",
    )
