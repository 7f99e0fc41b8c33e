"""Profile values typed as the Avro schema says: from Redis hash strings, to and from JSON.

The Redis feature store keeps every profile field as text (``connectors/redis_sink.py``): scalars
as their string form, lists and records as JSON. A service wants them typed the way a consumer of
the enriched topic gets them, so this module reads the field types from the current profile
schema (``customer_profile`` / ``product_profile``) and converts:

* :func:`from_redis`: a raw hash (bytes or text) -> a *record*, the form the stream hands to the
  Avro codec: ints for ``int``/``long`` (timestamps as epoch milliseconds), floats for
  ``double``, lists and dicts for arrays and records, None for an absent nullable field. Fields
  the schema does not know (``written_at``, hidden ``~`` fields of the score index) are not
  profile fields: ``written_at`` is returned apart, the others are dropped.
* :func:`to_json`: a record -> JSON values: ``timestamp-millis`` as ISO 8601 UTC with
  milliseconds and ``Z``; everything else as it is.
* :func:`from_json`: posted JSON values (a what-if row) -> a record; times may be ISO 8601 or
  epoch milliseconds. A value of the wrong type raises :class:`~storeml.errors.CodecError`
  naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from storeml.errors import CodecError
from storeml.schemas.codec import get_codec

__all__ = [
    "KIND_SCHEMAS",
    "ID_FIELDS",
    "FieldType",
    "field_types",
    "from_redis",
    "to_json",
    "from_json",
    "iso_millis",
    "parse_time",
]

#: The profile schema of each kind.
KIND_SCHEMAS = {"customer": "customer_profile", "product": "product_profile"}
#: The entity id field of each kind.
ID_FIELDS = {"customer": "customer_id", "product": "product_id"}


@dataclass(frozen=True)
class FieldType:
    """What one profile field holds: ``base`` is string, int, long, double, boolean or json."""

    name: str
    base: str
    nullable: bool
    timestamp: bool = False


def _field_type(name: str, node: Any) -> FieldType:
    nullable = False
    if isinstance(node, list):
        rest = [branch for branch in node if branch != "null"]
        nullable = len(rest) < len(node)
        node = rest[0] if len(rest) == 1 else {"type": "record"}  # several branches: JSON
    if isinstance(node, dict):
        kind = node.get("type")
        if kind in ("array", "record", "map"):
            return FieldType(name, "json", nullable)
        timestamp = node.get("logicalType") in ("timestamp-millis", "local-timestamp-millis")
        return FieldType(name, str(kind), nullable, timestamp)
    return FieldType(name, str(node), nullable)


@cache
def field_types(kind: str) -> dict[str, FieldType]:
    """The fields of ``kind``'s current profile schema, in schema order."""
    if kind not in KIND_SCHEMAS:
        raise CodecError(f"unknown profile kind {kind!r}: expected customer or product")
    schema = get_codec(KIND_SCHEMAS[kind]).schema
    return {f["name"]: _field_type(f["name"], f["type"]) for f in schema["fields"]}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _scalar(ftype: FieldType, text: str) -> Any:
    if ftype.base in ("int", "long"):
        return int(text)
    if ftype.base in ("double", "float"):
        number = float(text)
        return number if math.isfinite(number) else None  # JSON has no NaN
    if ftype.base == "boolean":
        return text in ("True", "true", "1")
    if ftype.base == "json":
        return json.loads(text)
    return text


def from_redis(
    kind: str, raw: Mapping[bytes | str, bytes | str]
) -> tuple[dict[str, Any], int | None]:
    """``(record, written_at)`` of a stored hash; ``written_at`` in epoch ms or None.

    Raises :class:`CodecError` when a stored value does not parse as its field's type.
    """
    types = field_types(kind)
    record: dict[str, Any] = dict.fromkeys(types)
    written_at: int | None = None
    for key, value in raw.items():
        name = _text(key)
        ftype = types.get(name)
        try:
            if ftype is not None:
                record[name] = _scalar(ftype, _text(value))
            elif name == "written_at":
                written_at = int(_text(value))
        except ValueError as exc:
            raise CodecError(f"stored {kind} field {name!r} does not parse: {exc}") from exc
    return record, written_at


def iso_millis(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds and ``Z`` (None stays None)."""
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch_ms) % 1000:03d}Z"


def to_json(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with its timestamps as ISO 8601 text (other values are JSON already)."""
    types = field_types(kind)
    out: dict[str, Any] = {}
    for name, value in record.items():
        ftype = types.get(name)
        out[name] = iso_millis(value) if ftype is not None and ftype.timestamp else value
    return out


def parse_time(name: str, value: Any) -> int:
    """A posted time (epoch ms, or ISO 8601 with an offset or ``Z``) as epoch milliseconds."""
    if isinstance(value, bool):
        raise CodecError(f"field {name!r}: expected a time, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CodecError(f"field {name!r}: {value!r} is not an ISO 8601 time") from exc
        if moment.tzinfo is None:
            raise CodecError(f"field {name!r}: {value!r} has no time zone (add Z or +00:00)")
        return int(round(moment.timestamp() * 1000))
    raise CodecError(f"field {name!r}: expected a time (ISO 8601 or epoch ms), got {value!r}")


def _posted(ftype: FieldType, value: Any) -> Any:
    name = ftype.name
    if value is None:
        if not ftype.nullable:
            raise CodecError(f"field {name!r} may not be null")
        return None
    if ftype.timestamp:
        return parse_time(name, value)
    if ftype.base in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"field {name!r}: expected an integer, got {value!r}")
        return value
    if ftype.base in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"field {name!r}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise CodecError(f"field {name!r}: expected a finite number, got {value!r}")
        return float(value)
    if ftype.base == "string" and not isinstance(value, str):
        raise CodecError(f"field {name!r}: expected a string, got {value!r}")
    if ftype.base == "json" and not isinstance(value, list | dict):
        raise CodecError(f"field {name!r}: expected a list or object, got {value!r}")
    return value


def from_json(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A posted profile row as a record; unknown names raise, missing ones are None.

    Only the types are checked here (a what-if row may leave any field out); what a model makes
    of missing values is the feature code's rule (``models/features.py``).
    """
    types = field_types(kind)
    unknown = sorted(set(fields) - set(types))
    if unknown:
        raise CodecError(
            f"unknown {kind} field(s) {', '.join(map(repr, unknown))}; known: {', '.join(types)}"
        )
    return {
        name: _posted(ftype, fields[name]) if name in fields else None
        for name, ftype in types.items()
    }
