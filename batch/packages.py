"""History for package training: the input topics read back, and training cutoffs from dates.

:func:`facts_from_topics` reads every record now in the order and product topics, decodes and
validates them with the stream's own codec and checks, and builds the facts table the profile fold
reads. Records the stream would dead-letter are skipped and counted, never fatal.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from storeml.errors import ConfigError, ModelError
from storeml.settings import Settings

__all__ = ["facts_from_topics", "cutoff_from_date", "default_cutoff"]


def cutoff_from_date(value: str | date) -> int:
    """Epoch milliseconds of midnight UTC starting ``value`` (``YYYY-MM-DD``)."""
    if isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value))
        except ValueError as exc:
            raise ConfigError(
                f"training date {value!r} is not a date; write YYYY-MM-DD, e.g. 2024-03-01"
            ) from exc
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def default_cutoff(facts: pd.DataFrame, fraction: float = 0.7) -> int:
    """The event time with ``fraction`` of the facts before it (labels need history after it)."""
    if facts.empty:
        raise ModelError("no history to train from: the facts table is empty")
    times = facts["event_time"].sort_values().to_numpy()
    return int(times[min(int(len(times) * fraction), len(times) - 1)])


def facts_from_topics(settings: Settings) -> tuple[pd.DataFrame, dict[str, int]]:
    """Facts of every valid record in the order and product topics, and counts of what was read.

    Counts: ``orders``, ``products`` (records read) and ``skipped`` (undecodable or invalid).
    """
    from storeml.connectors.kafka_admin import read_all, watermark_method_for
    from storeml.errors import CodecError
    from storeml.models.events import (
        ORDER,
        PRODUCT,
        facts_from_events,
        validate_order,
        validate_product,
    )
    from storeml.schemas.codec import get_codec

    method = watermark_method_for(settings.kafka_flavor)
    events: list[tuple[str, dict[str, Any], str, int, int]] = []
    counts = {"orders": 0, "products": 0, "skipped": 0}
    for kind, topic, schema, validate in (
        (ORDER, settings.topic_orders, "order_event", validate_order),
        (PRODUCT, settings.topic_products, "product_event", validate_product),
    ):
        codec = get_codec(schema)
        records = read_all(settings.kafka_config(), topic, method)
        counts["orders" if kind == ORDER else "products"] += len(records)
        for record in records:
            try:
                value = codec.decode(record.value)
            except CodecError:
                counts["skipped"] += 1
                continue
            if validate(value) is not None:
                counts["skipped"] += 1
                continue
            events.append((kind, value, record.topic, record.partition, record.offset))
    return facts_from_events(events), counts
