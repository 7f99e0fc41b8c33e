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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import orjson

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


def _finite(text: bytes | str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None  # JSON has no NaN


def _boolean(text: bytes | str) -> bool:
    return text in (b"True", b"true", b"1", "True", "true", "1")


def _string(text: bytes | str) -> str:
    return text.decode() if isinstance(text, bytes) else text


def _json(text: bytes | str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an integer past 64 bits, which json reads
        return json.loads(text)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "long": int,
    "double": _finite,
    "float": _finite,
    "boolean": _boolean,
    "json": _json,
    "string": _string,
}


@cache
def _converters(kind: str) -> dict[bytes | str, tuple[str, Callable[[Any], Any]]]:
    """Stored field name (bytes and text) -> (field, parser); parsers take bytes or text."""
    out: dict[bytes | str, tuple[str, Callable[[Any], Any]]] = {}
    for name, ftype in field_types(kind).items():
        entry = (name, _CONVERT.get(ftype.base, _string))
        out[name] = entry
        out[name.encode()] = entry
    return out


def from_redis(
    kind: str, raw: Mapping[bytes | str, bytes | str]
) -> tuple[dict[str, Any], int | None]:
    """``(record, written_at)`` of a stored hash; ``written_at`` in epoch ms or None.

    Raises :class:`CodecError` when a stored value does not parse as its field's type.
    """
    converters = _converters(kind)
    record: dict[str, Any] = dict.fromkeys(field_types(kind))
    written_at: int | None = None
    for key, value in raw.items():
        entry = converters.get(key)
        try:
            if entry is not None:
                record[entry[0]] = entry[1](value)
            elif key in (b"written_at", "written_at"):
                written_at = int(value)
        except ValueError as exc:
            raise CodecError(f"stored {kind} field {_string(key)!r} does not parse: {exc}") from exc
    return record, written_at


_EPOCH = datetime(1970, 1, 1)


def iso_millis(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds and ``Z`` (None stays None)."""
    if epoch_ms is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.isoformat(timespec="milliseconds") + "Z"


@cache
def _timestamps(kind: str) -> tuple[str, ...]:
    return tuple(name for name, ftype in field_types(kind).items() if ftype.timestamp)


def to_json(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with its timestamps as ISO 8601 text (other values are JSON already)."""
    out = dict(record)
    for name in _timestamps(kind):
        if name in out:
            out[name] = iso_millis(out[name])
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


_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _qualified(node: Any, space: str, named: Mapping[str, Any]) -> Any:
    """``node`` with references to the schema's named types spelt in full (as fastavro wants)."""
    if isinstance(node, str):
        return f"{space}.{node}" if f"{space}.{node}" in named else node
    if isinstance(node, list):
        return [_qualified(branch, space, named) for branch in node]
    if isinstance(node, dict):
        out = dict(node)
        for key in ("type", "items", "values"):
            if key in out:
                out[key] = _qualified(out[key], space, named)
        if "fields" in out:
            out["fields"] = [
                dict(f, type=_qualified(f["type"], space, named)) for f in out["fields"]
            ]
        if out.get("type") == "record":
            out.setdefault("namespace", space)
        return out
    return node


@cache
def _nested_schema(kind: str, name: str) -> Any:
    """The parsed Avro type of a list/record field, to validate posted values against."""
    import fastavro

    from storeml.schemas.codec import _strip_logical_types

    raw = _strip_logical_types(get_codec(KIND_SCHEMAS[kind]).schema)
    named: dict[str, Any] = {}
    fastavro.parse_schema(raw, named_schemas=named)
    node = next(f["type"] for f in raw["fields"] if f["name"] == name)
    return fastavro.parse_schema(
        _qualified(node, raw.get("namespace", ""), named), named_schemas=dict(named)
    )


def _posted(ftype: FieldType, value: Any, kind: str = "customer") -> Any:
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
        low, high = _INT_RANGE.get(ftype.base, _INT_RANGE["long"])
        if not low <= value <= high:
            raise CodecError(f"field {name!r}: {str(value)[:40]} is outside the {ftype.base} range")
        return value
    if ftype.base in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"field {name!r}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise CodecError(f"field {name!r}: expected a finite number, got {value!r}")
        return float(value)
    if ftype.base == "string" and not isinstance(value, str):
        raise CodecError(f"field {name!r}: expected a string, got {value!r}")
    if ftype.base == "json":
        from fastavro.validation import validate

        if not isinstance(value, list | dict) or not validate(
            value, _nested_schema(kind, name), raise_errors=False
        ):
            raise CodecError(
                f"field {name!r}: {str(value)[:200]} does not match its Avro type"
                f" (see schemas/avro/{KIND_SCHEMAS[kind]}/)"
            )
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
        name: _posted(ftype, fields[name], kind) if name in fields else None
        for name, ftype in types.items()
    }
