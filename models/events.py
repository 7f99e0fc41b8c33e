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
from storeml.schemas.currencies import is_currency
from storeml.schemas.rules import MAX_AMOUNT_MINOR, id_problem, printable

__all__ = [
    "DEFAULT_MAX_FUTURE_MS",
    "MAX_EVENT_TIME_MS",
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
#: How far after its Kafka record's timestamp an event may be dated (STOREML_MAX_EVENT_FUTURE_SECONDS).
DEFAULT_MAX_FUTURE_MS = 86_400_000
#: 9999-12-31T23:59:59.999Z: later times have no calendar date (the lake partitions by date).
MAX_EVENT_TIME_MS = 253_402_300_799_999


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


def _time_problem(
    what: str, value: object, received_ms: int | None, max_future_ms: int
) -> str | None:
    """Why ``value`` is not a usable event_time (epoch ms), or None.

    The future bound is measured from ``received_ms``, the Kafka record's timestamp, never from the
    clock: a replay of the same record gets the same answer. Without a timestamp (a record from a
    pre-0.10 producer, or history re-read from the lake, which holds accepted events only) only
    the absolute bounds apply.
    """
    if not isinstance(value, int) or value < 0:
        return f"{what} has a negative event_time {printable(value)}"
    if value > MAX_EVENT_TIME_MS:
        return f"{what} has an event_time {value} after the year 9999"
    if received_ms is not None and value > received_ms + max_future_ms:
        ahead = (value - received_ms) / 86_400_000
        return (
            f"{what} has an event_time {value} that is {ahead:.2f} days after its Kafka record's"
            f" timestamp {received_ms}; at most {max_future_ms // 1000} s ahead is accepted"
            " (STOREML_MAX_EVENT_FUTURE_SECONDS)"
        )
    return None


def _amount_problem(what: str, name: str, value: object) -> str | None:
    if not isinstance(value, int) or value < 0:
        return f"{what} has a negative {name} {printable(value)}"
    if value > MAX_AMOUNT_MINOR:
        return f"{what} has {name} {value} above the bound {MAX_AMOUNT_MINOR} minor units"
    return None


def validate_order(
    record: Mapping[str, Any],
    received_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> str | None:
    """Why this decoded order cannot be folded, or None when it can.

    Checks the id rules and money bounds of :mod:`storeml.schemas.rules`, the currency against
    :mod:`storeml.schemas.currencies`, and the event time against ``received_ms`` (the Kafka
    record's timestamp) plus ``max_future_ms``. Reasons name the field and quote bad values
    printably, cut short.
    """
    for name in ("store_id", "customer_id", "order_id"):
        problem = id_problem(name, record.get(name), store=name == "store_id")
        if problem is not None:
            return f"order has an {problem}" if problem.startswith("empty") else f"order {problem}"
    what = f"order {record['order_id']}"
    problem = _time_problem(what, record.get("event_time"), received_ms, max_future_ms)
    if problem is not None:
        return problem
    currency = record.get("currency")
    if not is_currency(currency):
        return (
            f"{what} has currency {printable(currency)}, not an ISO 4217 code with a minor unit"
            " (such as USD, EUR, JPY)"
        )
    lines = record.get("lines") or []
    if not lines:
        return f"{what} has no lines"
    total = 0
    for number, line in enumerate(lines):
        where = f"{what} line {number}"
        problem = id_problem("product_id", line.get("product_id"))
        if problem is not None:
            return (
                f"{where} has an {problem}" if problem.startswith("empty") else f"{where} {problem}"
            )
        quantity = line.get("quantity", 0)
        if quantity < 1:
            return f"{where} has quantity {quantity} (< 1)"
        price = line.get("unit_price_minor", -1)
        problem = _amount_problem(where, "unit_price_minor", price)
        if problem is not None:
            return problem
        amount = quantity * price  # Python ints: exact, the bound is checked before any int64 sum
        if amount > MAX_AMOUNT_MINOR:
            return (
                f"{where} totals {quantity} x {price} = {amount} minor units, above the bound"
                f" {MAX_AMOUNT_MINOR}"
            )
        total += amount
    if total > MAX_AMOUNT_MINOR:
        return (
            f"{what} totals {total} minor units over its lines, above the bound {MAX_AMOUNT_MINOR}"
        )
    return None


def validate_product(
    record: Mapping[str, Any],
    received_ms: int | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> str | None:
    """Why this decoded product event cannot be folded, or None when it can (see validate_order)."""
    for name in ("store_id", "product_id"):
        problem = id_problem(name, record.get(name), store=name == "store_id")
        if problem is not None:
            return (
                f"product event has an {problem}"
                if problem.startswith("empty")
                else f"product event {problem}"
            )
    what = f"product event for {record['product_id']}"
    customer = record.get("customer_id")
    if customer is not None:
        problem = id_problem("customer_id", customer)
        if problem is not None:
            return (
                f"{what} has an {problem}" if problem.startswith("empty") else f"{what}: {problem}"
            )
    problem = _time_problem(what, record.get("event_time"), received_ms, max_future_ms)
    if problem is not None:
        return problem
    if record.get("kind") not in _PRODUCT_KINDS:
        return f"product event kind {printable(record.get('kind'))} is not one of {sorted(_PRODUCT_KINDS)}"
    price = record.get("price_minor")
    if price is not None:
        problem = _amount_problem(f"product {record['product_id']}", "price_minor", price)
        if problem is not None:
            return problem
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
