"""Profiles as Parquet files: the recompute's ``--output`` (e.g. profiles ``--as-of`` a time).

Layout: ``<root>/customer/bucket=<part>.parquet`` and ``<root>/product/bucket=<part>.parquet``, one
file per task part (its first state bucket, and a chunk number when a task writes in chunks) with
the columns of the ``customer_profile`` / ``product_profile`` Avro schemas (nested fields as structs
and lists). A part's file is written under a temporary name and renamed, so a retried task replaces
it whole.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storeml.errors import ConnectorError
from storeml.schemas.arrow import arrow_schema

__all__ = ["write_profiles", "read_profiles", "KINDS"]

#: Profile kind -> Avro schema name.
KINDS = {"customer": "customer_profile", "product": "product_profile"}


def write_profiles(
    root: str,
    part: int | str,
    customers: Sequence[dict[str, Any]],
    products: Sequence[dict[str, Any]],
) -> None:
    """Write one part's profile records (as the stream publishes them) under ``root``."""
    for kind, records in (("customer", customers), ("product", products)):
        folder = Path(root, kind)
        target = folder / f"bucket={part}.parquet"
        temporary = folder / f".{target.name}.{uuid.uuid4().hex}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(list(records), schema=arrow_schema(KINDS[kind]))
            pq.write_table(table, temporary)
            os.replace(temporary, target)
        except (OSError, pa.ArrowException) as exc:
            temporary.unlink(missing_ok=True)
            raise ConnectorError(f"cannot write {kind} profiles to {target}: {exc}") from exc


def read_profiles(root: str | Path, kind: str) -> list[dict[str, Any]]:
    """Every ``kind`` ("customer" or "product") profile record under ``root``."""
    folder = Path(root, kind)
    files = sorted(folder.glob("bucket=*.parquet"))
    if not files:
        raise ConnectorError(f"no {kind} profiles under {folder}")
    out: list[dict[str, Any]] = []
    for path in files:
        out.extend(pq.read_table(path).to_pylist())
    return out
