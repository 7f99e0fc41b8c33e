"""Avro codec for storeml messages: single-object encoding with schema evolution.

Every message is framed with the Avro *single-object encoding*::

    C3 01 | 8-byte CRC-64-AVRO fingerprint of the writer schema (little endian) | Avro binary body

so a reader can tell which schema version wrote it. The schemas live as ``.avsc`` files in
``schemas/avro/<name>/v<N>.avsc``; the highest ``N`` is the current (reader and writer) schema,
older versions are kept so messages they wrote still decode: the body is resolved from the writer
schema against the current reader schema (new fields take their defaults).

Timestamps (``timestamp-millis``) are plain ``int`` epoch milliseconds on both sides: no datetime
objects, so folding and comparing stay exact and cheap.

Failures raise :class:`~storeml.errors.CodecError` (``UnknownSchemaError`` for an unknown
fingerprint) chained to the library error.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from storeml.errors import CodecError, UnknownSchemaError

__all__ = [
    "MAGIC",
    "SCHEMA_DIR",
    "AvroCodec",
    "SchemaVersion",
    "get_codec",
    "schema_names",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without ``logicalType``: timestamps stay ints (the fingerprint ignores it)."""
    if isinstance(node, dict):
        if "logicalType" in node and node.get("type") in (
            "int",
            "long",
            "bytes",
            "string",
            "fixed",
        ):
            return (
                node["type"]
                if node["type"] != "fixed"
                else {k: v for k, v in node.items() if k != "logicalType"}
            )
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(item) for item in node]
    return node


@dataclass(frozen=True)
class SchemaVersion:
    """One version of a schema: its number, file, fingerprint and parsed (plain) form."""

    version: int
    path: Path
    fingerprint: bytes
    raw: dict[str, Any]
    parsed: Any
    writer: Any  # parsed with fastavro's write hint, so encoding does not re-parse per call


class AvroCodec:
    """Encode/decode one message type (e.g. ``order_event``) with all its known schema versions.

    Instances are cheap to pickle (schemas are re-parsed on unpickle), so a codec can be captured
    in a Spark closure.
    """

    def __init__(self, name: str, schema_dir: Path = SCHEMA_DIR) -> None:
        self.name = name
        self.schema_dir = schema_dir
        self._load()

    def _load(self) -> None:
        folder = self.schema_dir / self.name
        files = sorted(
            (int(m.group(1)), path)
            for path in folder.glob("v*.avsc")
            if (m := _VERSION_FILE.match(path.name))
        )
        if not files:
            raise CodecError(
                f"no schema files for {self.name!r}: expected {folder}/v1.avsc; "
                f"known schemas: {', '.join(schema_names(self.schema_dir)) or 'none'}"
            )
        self.versions: dict[int, SchemaVersion] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for number, path in files:
            try:
                raw = json.loads(path.read_text())
                plain = _strip_logical_types(raw)
                parsed = parse_schema(plain, _write_hint=False)
                writer = parse_schema(plain)
            except (ValueError, fastavro.schema.SchemaParseException) as exc:
                raise CodecError(f"{path}: not a valid Avro schema: {exc}") from exc
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            entry = SchemaVersion(number, path, fp, raw, parsed, writer)
            self.versions[number] = entry
            self._by_fingerprint[fp] = entry
        self.current = self.versions[max(self.versions)]
        self._header = MAGIC + self.current.fingerprint

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "schema_dir": self.schema_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self.schema_dir = state["schema_dir"]
        self._load()

    @property
    def version(self) -> int:
        return self.current.version

    @property
    def schema(self) -> dict[str, Any]:
        """The current schema as written in its ``.avsc`` file."""
        return self.current.raw

    def encode(self, record: Mapping[str, Any], version: int | None = None) -> bytes:
        """Frame and encode ``record`` with the current schema (or an older ``version``)."""
        entry = self.current if version is None else self.versions.get(version)
        if entry is None:
            raise CodecError(
                f"{self.name} has no schema version {version}; known: {sorted(self.versions)}"
            )
        buffer = io.BytesIO()
        buffer.write(MAGIC + entry.fingerprint)
        try:
            fastavro.schemaless_writer(buffer, entry.writer, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise CodecError(f"cannot encode {self.name} v{entry.version}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes | bytearray | memoryview | None) -> dict[str, Any]:
        """Decode a framed message written by any known version into the current schema's shape."""
        if data is None:
            raise CodecError(f"{self.name}: message has no value (tombstone)")
        view = bytes(data)
        if len(view) < HEADER_SIZE or view[:2] != MAGIC:
            raise CodecError(
                f"{self.name}: not an Avro single-object message (starts with {view[:4].hex() or 'nothing'},"
                " expected c301 + 8-byte fingerprint)"
            )
        writer = self._by_fingerprint.get(view[2:HEADER_SIZE])
        if writer is None:
            raise UnknownSchemaError(
                f"{self.name}: unknown writer schema fingerprint {view[2:HEADER_SIZE].hex()}; add the"
                f" writer's .avsc as {self.schema_dir / self.name}/v<N>.avsc"
            )
        reader = None if writer is self.current else self.current.parsed
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(view[HEADER_SIZE:]), writer.parsed, reader
            )
        except (
            Exception
        ) as exc:  # fastavro raises many types (EOFError, ValueError, IndexError, ...)
            raise CodecError(
                f"{self.name}: corrupt body for schema v{writer.version}: {exc!r}"
            ) from exc
        if not isinstance(record, dict):
            raise CodecError(f"{self.name}: decoded a {type(record).__name__}, expected a record")
        return record


def schema_names(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schemas in ``schema_dir`` (folders holding ``v<N>.avsc`` files)."""
    return sorted(p.name for p in schema_dir.iterdir() if p.is_dir() and any(p.glob("v*.avsc")))


@cache
def get_codec(name: str) -> AvroCodec:
    """The process-wide codec for ``name`` (schemas parsed once per process)."""
    return AvroCodec(name)
