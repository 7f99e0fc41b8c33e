"""The requests the SDK (``storeml.client``) sends to the serving API, built without any I/O.

Each ``*_request`` function turns the caller's arguments into an :class:`ApiRequest` (method,
path relative to the base URL, query, JSON body) for ``Client`` and ``AsyncClient`` alike. Path
segments are percent-encoded, so an id holding ``/`` or ``?`` cannot reach another route (the
server answers it as not found or invalid). A kind other than ``customer``/``product`` or an
unknown export format is a ``ValueError`` before anything is sent.

The API key is not handled here beyond :func:`key_id_of`, which returns its public part only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = [
    "KINDS",
    "ApiRequest",
    "batch_request",
    "chunks",
    "export_request",
    "health_request",
    "id_list",
    "key_id_of",
    "predict_request",
    "profile_request",
    "ready_request",
    "segment_request",
]

KINDS = ("customer", "product")


@dataclass(frozen=True)
class ApiRequest:
    """One request to build: ``path`` relative to the base URL, ``params`` for the query."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected 'customer' or 'product'")
    return kind


def _fields(fields: str | Iterable[str] | None) -> list[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        return [name for name in fields.split(",") if name]
    return list(fields)


def id_list(ids: Iterable[str]) -> list[str]:
    """``ids`` as a list; one string is refused (it would be read as its characters)."""
    if isinstance(ids, str | bytes):
        raise TypeError(f"pass a list of ids, not one string ({ids!r}); for one id use customer()")
    return list(ids)


def _store_path(store: str) -> str:
    return f"/v1/stores/{_segment(store)}"


def profile_request(
    kind: str, store: str, entity_id: str, fields: str | Iterable[str] | None = None
) -> ApiRequest:
    """``GET /v1/stores/{store}/{kind}s/{id}`` (``?fields=a,b`` keeps only those)."""
    names = _fields(fields)
    params = {} if names is None else {"fields": ",".join(names)}
    path = f"{_store_path(store)}/{_kind(kind)}s/{_segment(entity_id)}"
    return ApiRequest("GET", path, params)


def batch_request(
    kind: str, store: str, ids: Sequence[str], fields: str | Iterable[str] | None = None
) -> ApiRequest:
    """``POST /v1/stores/{store}/{kind}s:batchGet`` for one chunk of ids."""
    body: dict[str, Any] = {"ids": list(ids)}
    names = _fields(fields)
    if names is not None:
        body["fields"] = names
    return ApiRequest("POST", f"{_store_path(store)}/{_kind(kind)}s:batchGet", json=body)


def predict_request(
    store: str,
    kind: str,
    ids: Sequence[str] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    alias: str | None = None,
) -> ApiRequest:
    """``POST /v1/stores/{store}/models/{kind}:predict``: exactly one of ``ids`` and ``rows``."""
    if (ids is None) == (rows is None):
        raise ValueError("predict takes ids (stored profiles) or rows (posted profiles), not both")
    body = {"ids": list(ids)} if ids is not None else {"rows": [dict(r) for r in rows or ()]}
    params = {} if alias is None else {"alias": alias}
    return ApiRequest("POST", f"{_store_path(store)}/models/{_kind(kind)}:predict", params, body)


def _segment_params(**values: Any) -> dict[str, str]:
    return {name: _query_value(value) for name, value in values.items() if value is not None}


def _query_value(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def segment_request(
    store: str,
    kind: str,
    field: str | None = None,
    min: float | None = None,
    max: float | None = None,
    category: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    order: str | None = None,
) -> ApiRequest:
    """``GET /v1/stores/{store}/segments/{kind}``: one page."""
    params = _segment_params(
        field=field, min=min, max=max, category=category, limit=limit, cursor=cursor, order=order
    )
    return ApiRequest("GET", f"{_store_path(store)}/segments/{_kind(kind)}", params)


def export_request(
    store: str,
    kind: str,
    field: str | None = None,
    min: float | None = None,
    max: float | None = None,
    category: str | None = None,
    format: str = "ndjson",
) -> ApiRequest:
    """``GET /v1/stores/{store}/segments/{kind}:export``: the whole segment, streamed."""
    if format not in ("ndjson", "csv"):
        raise ValueError(f"unknown export format {format!r}: expected 'ndjson' or 'csv'")
    params = _segment_params(field=field, min=min, max=max, category=category, format=format)
    return ApiRequest("GET", f"{_store_path(store)}/segments/{_kind(kind)}:export", params)


def health_request() -> ApiRequest:
    return ApiRequest("GET", "/healthz")


def ready_request() -> ApiRequest:
    return ApiRequest("GET", "/readyz")


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size`` (none for an empty sequence)."""
    if size < 1:
        raise ValueError(f"batch limit must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def key_id_of(api_key: str | None) -> str | None:
    """The public key id of ``sml_<key_id>_<secret>`` (what the server logs); ``"invalid"`` for
    a string of another shape, None without a key. Never returns any part of the secret."""
    if api_key is None:
        return None
    prefix, _, rest = api_key.partition("_")
    key_id, sep, secret = rest.partition("_")
    if prefix != "sml" or not sep or not secret or len(key_id) != 12:
        return "invalid"
    if any(c not in "0123456789abcdef" for c in key_id):
        return "invalid"
    return key_id
