"""Segments: ``GET /v1/stores/{store}/segments/{kind}`` (pages) and ``...:export`` (streamed).

Read from the score index through :mod:`storeml.connectors.segment_reader`: customers by
``field=propensity``, products by ``field=category&category=<name>`` (the probability of that
predicted category). ``min``/``max`` are inclusive and optional (an empty value is no bound).
Pages follow ``next_cursor``, ids ascending by default (``order=id``: no id twice, none missed
while the stream writes) or highest score first (``order=score``); an
export is one atomic snapshot streamed as NDJSON (``{"id", "score"}`` per line) or CSV
(``id,score``), so it has no duplicate and no gap while the stream writes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, Field

from storeml.connectors.segment_reader import export_header, export_lines
from storeml.serving.bodies import Kind, StoreId
from storeml.serving.deps import State, authorized
from storeml.serving.errors import error_responses, problem

__all__ = ["router", "SegmentPage"]


router = APIRouter(
    prefix="/v1/stores/{store}",
    tags=["segments"],
    dependencies=[Depends(authorized("segments"))],
    responses=error_responses("segments", not_found="A store this key may not see."),
)

_dumps = orjson.dumps  # compact; a non-finite float becomes null
_DEFAULT_FIELD = {"customer": "propensity", "product": "category"}


class SegmentMember(BaseModel):
    id: str
    score: float = Field(description="The propensity, or the category's probability.")


class SegmentPage(BaseModel):
    items: list[SegmentMember] = Field(
        description="In the requested order: ids ascending, or highest score first (ties by id"
        " descending)."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


_Min = Annotated[
    float | None,
    BeforeValidator(_blank_is_none),
    Query(alias="min", description="Inclusive finite lower score bound; empty or absent: none."),
]
_Max = Annotated[
    float | None,
    BeforeValidator(_blank_is_none),
    Query(alias="max", description="Inclusive finite upper score bound; empty or absent: none."),
]
_Field = Annotated[
    str | None,
    Query(
        description="Score to segment on: `propensity` (customers, the default) or `category`"
        " (products, the default; with `category`).",
        max_length=64,
    ),
]
_Category = Annotated[
    str | None,
    Query(description="The predicted category of a product segment.", max_length=1000),
]
_Cursor = Annotated[
    str | None, Query(description="`next_cursor` of the previous page.", max_length=1000)
]


def _check_bounds(low: float | None, high: float | None) -> None:
    for name, value in (("min", low), ("max", high)):
        if value is not None and not math.isfinite(value):
            raise problem(422, f"{name}: {value} is not a finite number")


@router.get(
    "/segments/{kind}:export",
    summary="A whole segment, streamed",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": 'NDJSON (`{"id", "score"}` per line) or CSV (`id,score`).',
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
async def export_segment(
    store: StoreId,
    kind: Kind,
    state: State,
    field: _Field = None,
    low: _Min = None,
    high: _Max = None,
    category: _Category = None,
    format: Annotated[Literal["ndjson", "csv"], Query(description="Output format.")] = "ndjson",
) -> StreamingResponse:
    _check_bounds(low, high)
    chunks = state.segments.export(
        kind, store, field or _DEFAULT_FIELD[kind], low, high, category or None
    ).__aiter__()
    # the snapshot is read now, so a bad request or Redis being down is an error body, not a
    # response cut after its headers
    first = await anext(chunks, None)

    async def body() -> AsyncIterator[bytes]:
        yield export_header(format)
        if first is not None:
            yield export_lines(first, format)
            async for chunk in chunks:
                yield export_lines(chunk, format)

    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"segment-{store}-{kind}.{format}"
    return StreamingResponse(
        body(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/segments/{kind}", response_model=SegmentPage, summary="One page of a segment")
async def segment_page(
    store: StoreId,
    kind: Kind,
    state: State,
    field: _Field = None,
    low: _Min = None,
    high: _Max = None,
    limit: Annotated[
        int | None,
        Query(ge=1, description="Items per page, at most serve_page_limit (default 100, or less)."),
    ] = None,
    cursor: _Cursor = None,
    category: _Category = None,
    order: Annotated[
        Literal["id", "score"],
        Query(
            description="`id` (ids ascending; no id twice and none missed while the stream"
            " writes) or `score` (highest first, for a top N; an entity whose score changes"
            " between pages may be seen twice or not at all)."
        ),
    ] = "id",
) -> Response:
    _check_bounds(low, high)
    most = state.settings.serve_page_limit
    limit = min(100, most) if limit is None else limit
    if limit > most:
        raise problem(422, f"limit: {limit} items, at most {most} per page")
    items, next_cursor = await state.segments.page(
        kind,
        store,
        field or _DEFAULT_FIELD[kind],
        low,
        high,
        limit,
        cursor or None,
        category or None,
        order,
    )
    return Response(
        _dumps({"items": items, "next_cursor": next_cursor}), media_type="application/json"
    )
