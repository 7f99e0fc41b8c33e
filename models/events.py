"""From decoded events to the facts table the profile fold reads; validation of event semantics.

An order event becomes one fact row per order line; a product event becomes one fact row. Every row
keeps its source coordinates (topic, partition, offset), which order "latest value" fields and
let records say where they came from. Rows are assigned to a state *bucket* by their store, so that
one store's entities live together and its model scores all of them in one call.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from storeml.models.profiles import FACT_COLUMNS

__all__ = [
    "EventKind",
    "ORDER",
    "PRODUCT",
    "bucket_of",
    "buckets_of",
    "validate_order",
    "validate_product",
    "facts_from_events",
    "FactColumns",
]

EventKind = str
ORDER: EventKind = "order"
PRODUCT: EventKind = "product"
_PRODUCT_KINDS = {"created", "updated", "viewed", "unknown"}


def bucket_of(store_id: str, buckets: int) -> int:
    """State bucket of a store: stable across processes and runs (CRC-32 of the UTF-8 id)."""
    return zlib.crc32(store_id.encode()) % buckets


def buckets_of(store_ids: Iterable[str], buckets: int) -> np.ndarray:
    """:func:`bucket_of` for many stores (cached per distinct store)."""
    cache: dict[str, int] = {}
    out = []
    for store in store_ids:
        value = cache.get(store)
        if value is None:
            value = cache[store] = bucket_of(store, buckets)
        out.append(value)
    return np.asarray(out, dtype="int32")


def validate_order(record: Mapping[str, Any]) -> str | None:
    """Why this decoded order cannot be folded, or None when it can."""
    for name in ("store_id", "customer_id", "order_id"):
        if not record.get(name):
            return f"order has an empty {name}"
    if record.get("event_time", -1) < 0:
        return f"order {record['order_id']} has a negative event_time {record.get('event_time')}"
    lines = record.get("lines") or []
    if not lines:
        return f"order {record['order_id']} has no lines"
    for number, line in enumerate(lines):
        if not line.get("product_id"):
            return f"order {record['order_id']} line {number} has an empty product_id"
        if line.get("quantity", 0) < 1:
            return f"order {record['order_id']} line {number} has quantity {line.get('quantity')} (< 1)"
        if line.get("unit_price_minor", -1) < 0:
            return (
                f"order {record['order_id']} line {number} has a negative unit_price_minor"
                f" {line.get('unit_price_minor')}"
            )
    return None


def validate_product(record: Mapping[str, Any]) -> str | None:
    """Why this decoded product event cannot be folded, or None when it can."""
    for name in ("store_id", "product_id"):
        if not record.get(name):
            return f"product event has an empty {name}"
    if record.get("event_time", -1) < 0:
        return f"product event for {record['product_id']} has a negative event_time"
    if record.get("kind") not in _PRODUCT_KINDS:
        return f"product event kind {record.get('kind')!r} is not one of {sorted(_PRODUCT_KINDS)}"
    price = record.get("price_minor")
    if price is not None and price < 0:
        return f"product {record['product_id']} has a negative price_minor {price}"
    return None


class FactColumns:
    """Builds a facts table column by column (much cheaper than a list of row dicts)."""

    _NULLABLE_INT = ("quantity", "unit_price_minor", "price_minor")

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in FACT_COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["kind"])

    def add_order(
        self, record: Mapping[str, Any], topic: str, partition: int, offset: int, bucket: int
    ) -> None:
        c = self.columns
        for line in record["lines"]:
            c["bucket"].append(bucket)
            c["kind"].append("order_line")
            c["store_id"].append(record["store_id"])
            c["customer_id"].append(record["customer_id"])
            c["product_id"].append(line["product_id"])
            c["order_id"].append(record["order_id"])
            c["event_time"].append(record["event_time"])
            c["topic"].append(topic)
            c["partition"].append(partition)
            c["offset"].append(offset)
            c["category"].append(line.get("category"))
            c["quantity"].append(line["quantity"])
            c["unit_price_minor"].append(line["unit_price_minor"])
            c["event_kind"].append(None)
            c["title"].append(None)
            c["description"].append(None)
            c["price_minor"].append(None)

    def add_product(
        self, record: Mapping[str, Any], topic: str, partition: int, offset: int, bucket: int
    ) -> None:
        c = self.columns
        c["bucket"].append(bucket)
        c["kind"].append("product_event")
        c["store_id"].append(record["store_id"])
        c["customer_id"].append(record.get("customer_id"))
        c["product_id"].append(record["product_id"])
        c["order_id"].append(None)
        c["event_time"].append(record["event_time"])
        c["topic"].append(topic)
        c["partition"].append(partition)
        c["offset"].append(offset)
        c["category"].append(record.get("category"))
        c["quantity"].append(None)
        c["unit_price_minor"].append(None)
        c["event_kind"].append(record["kind"])
        c["title"].append(record.get("title"))
        c["description"].append(record.get("description"))
        c["price_minor"].append(record.get("price_minor"))

    def frame(self) -> pd.DataFrame:
        """The facts table (dtypes as :data:`FACT_COLUMNS`)."""
        data: dict[str, Any] = {}
        for name, dtype in FACT_COLUMNS.items():
            values = self.columns[name]
            if dtype == "object":
                data[name] = pd.Series(values, dtype=object)
            elif name in self._NULLABLE_INT:
                data[name] = pd.array(values, dtype="Int64")
            else:
                data[name] = np.asarray(values, dtype=dtype)
        return pd.DataFrame(data)


def facts_from_events(
    events: Iterable[tuple[EventKind, Mapping[str, Any], str, int, int]], buckets: int = 1
) -> pd.DataFrame:
    """Facts table from already-validated ``(kind, record, topic, partition, offset)`` tuples."""
    columns = FactColumns()
    for kind, record, topic, partition, offset in events:
        bucket = bucket_of(record["store_id"], buckets)
        add = columns.add_order if kind == ORDER else columns.add_product
        add(record, topic, partition, offset, bucket)
    return columns.frame()
