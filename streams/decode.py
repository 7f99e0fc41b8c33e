"""Decode inside the source's read task: Kafka rows -> fact rows; bad messages -> dead letters.

Avro single-object messages are decoded and validated; bad ones go to the dead-letter topic with
the stage, the reason and the original bytes, the rest become fact rows tagged with their store's
state bucket (:func:`decode_frames`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from storeml.streams.context import JobContext, client

__all__ = ["DECODE_STATS", "decode_frames", "decode_batches", "decode_schema"]

#: ``kind`` of the one row per decode task that carries its counts (columns ``decode_*``).
DECODE_STATS = "decode_stats"

_STATS_COLUMNS = ("decode_events", "decode_dead_letters", "decode_s")


def decode_frames(ctx: JobContext, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Raw Kafka rows -> fact rows; bad messages -> dead-letter topic; then one stats row.

    ``frames`` have the Kafka source's ``topic, partition, offset, key, value`` columns. The last
    frame yielded is a single row of kind :data:`DECODE_STATS` whose ``decode_events``,
    ``decode_dead_letters`` and ``decode_s`` say what this call did (the stream reports them per
    micro-batch). With the event lake on (``ctx.lake_root``), each accepted event's key and value
    ride along on its first fact row (``raw_key``/``raw_value``, :func:`decode_schema`) to the
    enrich task, which archives them.
    """
    from storeml.connectors.dead_letter import DeadLetterSink
    from storeml.errors import CodecError
    from storeml.models.events import FactColumns, bucket_of, validate_order, validate_product
    from storeml.models.profiles import facts_frame
    from storeml.schemas.codec import get_codec

    dlq: DeadLetterSink | None = (
        client(DeadLetterSink, ctx.kafka, ctx.dead_letter_topic, ctx.dead_letter_max_bytes)
        if ctx.dead_letter_topic
        else None
    )
    max_future_ms = ctx.max_event_future_ms
    archive = ctx.lake_root is not None
    seen = bad = 0
    seconds = 0.0

    def reject(*args: Any) -> None:
        nonlocal bad
        bad += 1
        if dlq is not None:
            dlq.send(*args)

    routes = {
        ctx.orders_topic: (get_codec("order_event"), validate_order, FactColumns.add_order),
        ctx.products_topic: (get_codec("product_event"), validate_product, FactColumns.add_product),
    }
    buckets: dict[str, int] = {}
    for frame in frames:
        started = time.perf_counter()
        columns = FactColumns()
        raw_keys: list[Any] = []
        raw_values: list[Any] = []
        # the record timestamps bound how far ahead an event may be dated; history read from the
        # lake has none (it holds accepted events only)
        stamps: Any = itertools.repeat(None)
        if "timestamp" in frame:  # int64 with nulls arrives as float64 with NaN
            missing = frame["timestamp"].isna().to_numpy()
            known = frame["timestamp"].where(~missing, 0).tolist()
            stamps = [None if m else int(t) for t, m in zip(known, missing, strict=True)]
        for topic, partition, offset, stamp, key, value in zip(
            frame["topic"],
            frame["partition"],
            frame["offset"],
            stamps,
            frame["key"],
            frame["value"],
            strict=False,
        ):
            seen += 1
            route = routes.get(topic)
            if route is None:
                reject(
                    topic,
                    partition,
                    offset,
                    key,
                    value,
                    "decode",
                    "UnknownTopic",
                    f"no decoder for topic {topic!r}",
                )
                continue
            codec, validate, to_facts = route
            try:
                record = codec.decode(value)
            except CodecError as exc:
                reject(topic, partition, offset, key, value, "decode", type(exc).__name__, str(exc))
                continue
            reason = validate(record, stamp, max_future_ms)
            if reason is not None:
                reject(topic, partition, offset, key, value, "validate", "InvalidEvent", reason)
                continue
            if ctx.until_ms is not None and record["event_time"] > ctx.until_ms:
                continue  # recompute --as-of: not yet happened
            store = record["store_id"]
            bucket = buckets.get(store)
            if bucket is None:
                bucket = buckets[store] = bucket_of(store, ctx.state_buckets)
            before = len(columns)
            to_facts(columns, record, topic, int(partition), int(offset), bucket)
            if archive and len(columns) > before:
                padding = [None] * (len(columns) - before - 1)
                raw_keys += [key, *padding]
                raw_values += [value, *padding]
        facts = columns.frame()
        if archive:
            facts["raw_key"] = pd.Series(raw_keys, dtype=object)
            facts["raw_value"] = pd.Series(raw_values, dtype=object)
        for name in _STATS_COLUMNS:
            facts[name] = None
        seconds += time.perf_counter() - started
        if len(facts):
            yield facts
    started = time.perf_counter()
    if dlq is not None:
        dlq.flush()
    stats = facts_frame([{"bucket": -1, "kind": DECODE_STATS}])
    if archive:
        stats["raw_key"] = stats["raw_value"] = None
    stats["decode_events"] = seen
    stats["decode_dead_letters"] = bad
    stats["decode_s"] = seconds + time.perf_counter() - started
    yield stats


def decode_batches(ctx: JobContext) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """:func:`decode_frames` as a ``mapInPandas`` function (schema :func:`decode_schema`)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return decode_frames(ctx, batches)

    return run


def decode_schema(ctx: JobContext) -> str:
    """Spark schema of :func:`decode_frames`' output: facts, raw bytes for the lake, counts."""
    from storeml.models.profiles import FACT_SPARK_SCHEMA

    raw = "" if ctx.lake_root is None else ", raw_key binary, raw_value binary"
    return (
        f"{FACT_SPARK_SCHEMA}{raw}, decode_events long, decode_dead_letters long, decode_s double"
    )
