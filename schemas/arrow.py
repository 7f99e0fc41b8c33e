"""Arrow (Parquet) schemas derived from the ``.avsc`` files, so Parquet outputs match the topics.

``arrow_schema("customer_profile")`` is the current Avro schema as a ``pyarrow.Schema``: records
become structs, arrays lists, ``["null", T]`` a nullable T, ``timestamp-millis`` longs stay int64
(epoch milliseconds, as on the topics). Named types referenced again by name (``ModelRef``) resolve
to their first definition.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from storeml.errors import CodecError
from storeml.schemas.codec import get_codec

__all__ = ["arrow_schema"]

_PRIMITIVES = {
    "string": pa.string(),
    "bytes": pa.binary(),
    "long": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
}


def _convert(node: Any, named: dict[str, pa.DataType]) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of an Avro schema node."""
    if isinstance(node, list):
        branches = [b for b in node if b != "null"]
        if len(branches) != 1:
            raise CodecError(f"union {node} has no single Arrow type; use ['null', T]")
        return _convert(branches[0], named)[0], "null" in node
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return _PRIMITIVES[node], False
        if node in named:
            return named[node], False
        raise CodecError(f"Avro type {node!r} has no Arrow equivalent here")
    kind = node["type"]
    if kind == "record":
        fields = []
        for field in node["fields"]:
            arrow_type, nullable = _convert(field["type"], named)
            fields.append(pa.field(field["name"], arrow_type, nullable=nullable))
        struct = pa.struct(fields)
        named[node["name"]] = struct
        return struct, False
    if kind == "array":
        return pa.list_(_convert(node["items"], named)[0]), False
    return _convert(kind, named)


def arrow_schema(name: str) -> pa.Schema:
    """The current version of schema ``name`` (e.g. ``customer_profile``) as an Arrow schema."""
    struct, _ = _convert(get_codec(name).current.raw, {})
    return pa.schema(list(struct))
