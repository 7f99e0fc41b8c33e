"""Profile lookups: one entity (``GET``) or a batch (``POST ...:batchGet``, one Redis pipeline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import Field

from storeml.schemas.typed import ID_FIELDS, iso_millis, to_json
from storeml.serving.bodies import (
    HIDDEN_FIELDS,
    PROFILE_FIELDS,
    BatchGetRequest,
    CustomerBatch,
    CustomerProfile,
    EntityId,
    ProductBatch,
    ProductProfile,
    StoreId,
)
from storeml.serving.deps import State, authorized, not_found
from storeml.serving.errors import error_responses, problem

__all__ = ["router", "profile_body", "wanted_fields"]

router = APIRouter(
    prefix="/v1/stores/{store}",
    tags=["profiles"],
    dependencies=[Depends(authorized("read"))],
    responses=error_responses("read"),
)

_dumps = orjson.dumps  # compact; a non-finite float becomes null


def wanted_fields(kind: str, fields: Sequence[str] | None) -> tuple[str, ...] | None:
    """The ``fields=`` filter checked against ``kind``'s fields (None: all of them)."""
    if not fields:
        return None
    names = [name.strip() for part in fields for name in part.split(",") if name.strip()]
    known = PROFILE_FIELDS[kind]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise problem(
            422,
            f"unknown {kind} field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}",
        )
    return tuple(dict.fromkeys(names)) or None


def profile_body(
    kind: str, store: str, record: dict[str, Any], fields: tuple[str, ...] | None
) -> dict[str, Any]:
    """The ``Profile`` JSON of one stored record."""
    typed = to_json(kind, record)
    if fields is None:
        shown = {k: v for k, v in typed.items() if k not in HIDDEN_FIELDS and k != "written_at"}
    else:
        shown = {name: typed.get(name) for name in fields}
    return {
        "kind": kind,
        "store_id": store,
        "id": record[ID_FIELDS[kind]],
        "profile_version": record["profile_version"],
        "fields": shown,
        "model": record.get("model"),
        "freshness": {
            "last_event_time": typed.get("last_event_time"),
            "written_at": iso_millis(record.get("written_at")),
        },
    }


def _json(body: Any) -> Response:
    return Response(_dumps(body), media_type="application/json")


async def _one(request_state: Any, kind: str, store: str, entity: str, fields: Any) -> Response:
    wanted = wanted_fields(kind, fields)
    record = await request_state.profiles.get(kind, store, entity)
    if record is None:
        raise not_found(kind, store, entity)
    return _json(profile_body(kind, store, record, wanted))


async def _batch(request_state: Any, kind: str, store: str, body: BatchGetRequest) -> Response:
    limit = request_state.settings.serve_batch_limit
    if len(body.ids) > limit:
        raise problem(422, f"ids: {len(body.ids)} ids, at most {limit} per request")
    wanted = wanted_fields(kind, body.fields)
    records = await request_state.profiles.get_many(kind, store, body.ids)
    profiles, missing = [], []
    for entity, record in zip(body.ids, records, strict=True):
        if record is None:
            missing.append(entity)
        else:
            profiles.append(profile_body(kind, store, record, wanted))
    return _json({"profiles": profiles, "missing": missing})


def _fields_param(kind: str) -> Any:
    names = "|".join(PROFILE_FIELDS[kind])
    return Annotated[
        list[Annotated[str, Field(pattern=f"^({names})(,({names}))*$")]] | None,
        Query(description=f"Keep only these {kind} fields (comma-separated or repeated)."),
    ]


_CustomerFields = _fields_param("customer")
_ProductFields = _fields_param("product")


@router.get(
    "/customers/{entity_id}", response_model=CustomerProfile, summary="A customer's profile"
)
async def get_customer(
    store: StoreId,
    entity_id: EntityId,
    state: State,
    fields: _CustomerFields = None,  # type: ignore[valid-type]
) -> Response:
    return await _one(state, "customer", store, entity_id, fields)


@router.get("/products/{entity_id}", response_model=ProductProfile, summary="A product's profile")
async def get_product(
    store: StoreId,
    entity_id: EntityId,
    state: State,
    fields: _ProductFields = None,  # type: ignore[valid-type]
) -> Response:
    return await _one(state, "product", store, entity_id, fields)


@router.post(
    "/customers:batchGet", response_model=CustomerBatch, summary="Many customers' profiles"
)
async def batch_customers(store: StoreId, body: BatchGetRequest, state: State) -> Response:
    return await _batch(state, "customer", store, body)


@router.post("/products:batchGet", response_model=ProductBatch, summary="Many products' profiles")
async def batch_products(store: StoreId, body: BatchGetRequest, state: State) -> Response:
    return await _batch(state, "product", store, body)
