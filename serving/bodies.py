"""Request and response bodies of the API, as pydantic models (they make the OpenAPI document).

The profile ``fields`` models are built from the current Avro profile schemas, so the document
types every field as the schema does (integers, numbers, ISO 8601 times, lists and objects).
Routes build their JSON directly (it is cheaper than validating a response model per request);
``tests/test_serving_api.py`` holds the answers to these models through schemathesis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, create_model

from storeml.schemas.rules import ID_MAX_LENGTH
from storeml.schemas.typed import field_types

__all__ = [
    "ID_REGEX",
    "StoreId",
    "EntityId",
    "Kind",
    "ModelRef",
    "Freshness",
    "CustomerProfile",
    "ProductProfile",
    "BatchGetRequest",
    "CustomerBatch",
    "ProductBatch",
    "ErrorBody",
    "PROFILE_FIELDS",
    "HIDDEN_FIELDS",
]

ID_REGEX = rf"^[A-Za-z0-9._~@-]{{1,{ID_MAX_LENGTH}}}$"
_ID_DOC = f"1-{ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ ~ @ - (docs/ids.md)"

StoreId = Annotated[
    str, Path(pattern=ID_REGEX, max_length=ID_MAX_LENGTH, description=f"Store id: {_ID_DOC}.")
]
EntityId = Annotated[
    str, Path(pattern=ID_REGEX, max_length=ID_MAX_LENGTH, description=f"Entity id: {_ID_DOC}.")
]
Kind = Literal["customer", "product"]
_ListedId = Annotated[str, Field(pattern=ID_REGEX, max_length=ID_MAX_LENGTH)]

#: Record fields that are not in ``Profile.fields`` (they are the envelope, or internal).
HIDDEN_FIELDS = frozenset(
    {"store_id", "customer_id", "product_id", "profile_version", "model", "source"}
)


class ModelRef(BaseModel):
    name: str
    version: str | None = None
    scope: str = Field(description="store, global, none or unavailable (docs/faults.md).")


class Freshness(BaseModel):
    last_event_time: datetime | None = Field(
        description="Event time of the newest event folded into the profile."
    )
    written_at: datetime | None = Field(
        description="When the stream (or a recompute) wrote this profile to the feature store."
    )


def _python_type(base: str, timestamp: bool) -> Any:
    if timestamp:
        return datetime
    return {
        "int": int,
        "long": int,
        "double": float,
        "float": float,
        "boolean": bool,
        "string": str,
        "json": Any,
    }.get(base, Any)


def _fields_model(kind: str) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for name, ftype in field_types(kind).items():
        if name in HIDDEN_FIELDS:
            continue
        definitions[name] = (_python_type(ftype.base, ftype.timestamp) | None, None)
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{kind.capitalize()}Fields",
        __config__=ConfigDict(extra="forbid"),
        **definitions,
    )


#: Names a ``fields=`` filter may list, per kind.
PROFILE_FIELDS = {
    kind: tuple(name for name in field_types(kind) if name not in HIDDEN_FIELDS)
    for kind in ("customer", "product")
}

CustomerFields = _fields_model("customer")
ProductFields = _fields_model("product")


class _Profile(BaseModel):
    store_id: str
    id: str
    profile_version: int = Field(description="Grows with every event folded in (docs/state.md).")
    model: ModelRef | None = Field(description="The model that scored the profile.")
    freshness: Freshness


class CustomerProfile(_Profile):
    kind: Literal["customer"]
    fields: CustomerFields  # type: ignore[valid-type]


class ProductProfile(_Profile):
    kind: Literal["product"]
    fields: ProductFields  # type: ignore[valid-type]


class BatchGetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[_ListedId] = Field(
        min_length=1, description="Entity ids (at most serve_batch_limit)."
    )
    fields: list[str] | None = Field(default=None, description="Keep only these fields.")


class CustomerBatch(BaseModel):
    profiles: list[CustomerProfile]
    missing: list[str] = Field(description="Requested ids with no profile, in request order.")


class ProductBatch(BaseModel):
    profiles: list[ProductProfile]
    missing: list[str]


class _Error(BaseModel):
    status: int
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: _Error
