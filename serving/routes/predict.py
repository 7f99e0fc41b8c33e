"""Real-time predict: ``POST /v1/stores/{store}/models/{kind}:predict`` (``serving/predictor.py``).

The body names stored profiles (``ids``: the profile in Redis is scored) or carries profile rows
(``rows``: a what-if, or an entity not seen yet); ``?alias=`` picks the champion (default) or the
challenger. The model is the store's, from the registry, scored with the stream's code.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storeml.schemas.rules import ID_MAX_LENGTH
from storeml.serving.bodies import ID_REGEX, Kind, ModelRef, StoreId
from storeml.serving.deps import authorized, serving
from storeml.serving.errors import error_responses, problem

__all__ = ["router", "PredictRequest", "PredictResponse"]

_ListedId = Annotated[str, Field(pattern=ID_REGEX, max_length=ID_MAX_LENGTH)]


class PredictRequest(BaseModel):
    """Exactly one of ``ids`` and ``rows``, each 1 to ``serve_batch_limit`` long."""

    model_config = ConfigDict(extra="forbid")

    ids: list[_ListedId] | None = Field(
        default=None,
        min_length=1,
        description="Entity ids whose stored profiles are scored (at most serve_batch_limit).",
    )
    rows: list[dict[str, Any]] | None = Field(
        default=None,
        min_length=1,
        description="Profile rows to score, with the fields of `Profile.fields` (times as ISO"
        " 8601 or epoch ms; absent fields are null) and optionally `id`; store_id, if given,"
        " must be the path's store (at most serve_batch_limit rows).",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.ids is None) == (self.rows is None):
            raise ValueError("give exactly one of ids and rows")
        return self


class PredictedCategory(BaseModel):
    category: str
    probability: float
    rank: int


class Prediction(BaseModel):
    id: str | None = Field(description="The entity id (null for a row without one).")
    propensity: float | None = Field(
        default=None, description="Customers: probability of a repeat purchase (null: unscored)."
    )
    predicted_categories: list[PredictedCategory] | None = Field(
        default=None, description="Products: the top categories, most likely first."
    )
    model: ModelRef


class ServedModel(BaseModel):
    name: str
    version: str
    alias: str


class PredictResponse(BaseModel):
    model: ServedModel
    predictions: list[Prediction] = Field(description="In request order (found ids only).")
    missing: list[str] = Field(description="Requested ids with no stored profile.")


router = APIRouter(
    prefix="/v1/stores/{store}",
    tags=["predict"],
    dependencies=[Depends(authorized("predict"))],
    responses=error_responses(
        "predict",
        not_found="A store this key may not see (ids without a profile are listed in `missing`).",
    ),
)

_dumps = orjson.dumps  # compact; a non-finite float becomes null


@router.post(
    "/models/{kind}:predict",
    response_model=PredictResponse,
    summary="Score profiles with the store's model",
)
async def predict(
    store: StoreId,
    kind: Kind,
    body: PredictRequest,
    state: Annotated[Any, Depends(serving)],
    alias: Annotated[
        str | None,
        Query(description="Registry alias: the champion (default) or the challenger."),
    ] = None,
) -> Response:
    if state.predictor is None:
        raise problem(503, "prediction is not enabled on this server")
    limit = state.settings.serve_batch_limit
    given = body.ids if body.ids is not None else body.rows
    if given is not None and len(given) > limit:
        what = "ids" if body.ids is not None else "rows"
        raise problem(422, f"{what}: {len(given)} given, at most {limit} per request")
    result = await state.predictor.predict(kind, store, ids=body.ids, rows=body.rows, alias=alias)
    return Response(_dumps(result), media_type="application/json")
