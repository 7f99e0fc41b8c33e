"""Score folded profiles per store and write them: profile files, the enriched topics, Redis.

The executor side shared by the stream's enrich tasks and the recompute's (:func:`publish_profiles`),
and the record layout consumers see (:func:`encode_profiles`, :func:`profile_headers`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from storeml.streams.context import JobContext, client, drop_client

__all__ = [
    "MAX_FAULTS",
    "rebase",
    "CUSTOMER_FIELDS",
    "PRODUCT_FIELDS",
    "Published",
    "publish_profiles",
    "expire_profiles",
    "encode_profiles",
    "profile_headers",
]

log = logging.getLogger("storeml.stream")

CUSTOMER_FIELDS = [
    "store_id",
    "customer_id",
    "profile_version",
    "order_count",
    "total_spend_minor",
    "avg_order_value_minor",
    "first_order_time",
    "last_order_time",
    "last_event_time",
    "days_since_last_order",
    "top_categories",
    "product_views",
    "propensity",
    "model",
    "source",
    "shadow",
]

PRODUCT_FIELDS = [
    "store_id",
    "product_id",
    "profile_version",
    "views",
    "order_count",
    "units",
    "revenue_minor",
    "title",
    "description",
    "price_minor",
    "category",
    "last_event_time",
    "predicted_categories",
    "model",
    "source",
    "shadow",
]


def profile_headers(record: Mapping[str, Any], schema: str) -> list[tuple[str, bytes]]:
    """The headers of an enriched record that let a consumer drop replays (see the README)."""
    model = record["model"]
    ranges = [
        [r["topic"], r["partition"], r["first_offset"], r["last_offset"]] for r in record["source"]
    ]
    return [
        ("storeml.profile_version", str(record["profile_version"]).encode()),
        ("storeml.source", _compact_json(ranges).encode()),
        ("storeml.schema", schema.encode()),
        ("storeml.model", _model_label(model).encode()),
    ] + (
        [("storeml.shadow_model", _model_label(record["shadow"]["model"]).encode())]
        if record.get("shadow")
        else []
    )


#: Faults a task reports in detail (the count is always complete).
MAX_FAULTS = 100

_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def encode_profiles(
    customer_topic: str,
    product_topic: str,
    customers: list[dict[str, Any]],
    products: list[dict[str, Any]],
) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    """``(topic, key, value, headers)`` of every profile record, ready to produce.

    Keys are ``<store_id>|<entity_id>``, values Avro single-object encoded with the current
    profile schemas, headers :func:`profile_headers`.
    """
    from storeml.schemas.codec import get_codec

    out = []
    for topic, records, id_field, name in (
        (customer_topic, customers, "customer_id", "customer_profile"),
        (product_topic, products, "product_id", "product_profile"),
    ):
        codec = get_codec(name)
        schema = f"{name}/v{codec.version}"
        out += [
            (
                topic,
                f"{r['store_id']}|{r[id_field]}".encode(),
                codec.encode(r),
                profile_headers(r, schema),
            )
            for r in records
        ]
    return out


def _model_label(model: dict[str, Any]) -> str:
    return f"{model['name']}:{model['version'] or 'none'}"


@dataclass
class Published:
    """What :func:`publish_profiles` wrote."""

    customers: int = 0
    products: int = 0
    kafka_records: int = 0
    redis_written: int = 0
    redis_skipped: int = 0
    stores: dict[str, list[int]] = field(default_factory=dict)
    cache: dict[str, float] = field(default_factory=dict)
    #: Model failures while scoring (:meth:`storeml.models.serving.Fault.as_dict`), at most
    #: :data:`MAX_FAULTS` of them; ``fault_count`` counts them all.
    faults: list[dict[str, Any]] = field(default_factory=list)
    fault_count: int = 0

    def add(self, other: Published) -> None:
        for name in (
            "customers",
            "products",
            "kafka_records",
            "redis_written",
            "redis_skipped",
            "fault_count",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.faults = (self.faults + other.faults)[:MAX_FAULTS]
        for store, counts in other.stores.items():
            total = self.stores.setdefault(store, [0, 0])
            total[0] += counts[0]
            total[1] += counts[1]
        self.cache = other.cache


def publish_profiles(
    ctx: JobContext,
    customers: pd.DataFrame,
    products: pd.DataFrame,
    handles: dict[str, Any],
    shadows: dict[str, Any],
    part: str,
    lap: Callable[[str], None] = lambda name: None,
    producer_id: str | None = None,
) -> Published:
    """Score folded profiles per store, then write them: Parquet files, Kafka, Redis (executor).

    ``part`` names this call's profile files (``ctx.profiles_dir``); ``producer_id`` (default
    ``part``) its transactional producer, which must be the same for the same task on every
    run. ``lap`` is called as each stage ends (score_s, encode_s, kafka_s, redis_s).
    """
    from storeml.connectors.profile_files import write_profiles
    from storeml.connectors.redis_sink import RedisProfileSink
    from storeml.errors import ArtifactUnavailableError
    from storeml.models.profiles import to_records
    from storeml.models.serving import Fault, Scorer, score_kind
    from storeml.models.store_models import get_model_cache

    cache = get_model_cache(ctx.model_cache_size)
    if ctx.version_base:  # the checkpoint's generation (streams/checkpoint.py)
        customers = rebase(customers, ctx.version_base)
        products = rebase(products, ctx.version_base)

    def scorer(handle: Any) -> Scorer:
        """The opened version; one that cannot be opened leaves its rows to the fallback.

        An artifact store that does not answer is waited for (a replay must publish what the
        first attempt would have), up to ``ctx.model_fetch_retry_seconds``; then the task fails.
        """
        if handle is None:
            return Scorer(None, None)
        deadline = time.monotonic() + ctx.model_fetch_retry_seconds
        pause = 0.5
        while True:
            try:
                return Scorer(cache.bundle(handle, ctx.tracking_uri, ctx.registry_uri), handle)
            except ArtifactUnavailableError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("%s; retrying in %.1fs", exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
            except Exception as exc:  # a broken version must not stop every store
                log.warning("cannot open %s version %s: %s", handle.name, handle.version, exc)
                return Scorer(None, handle, f"{type(exc).__name__}: {exc}"[:500])

    faults: list[Fault] = []
    customers = score_kind(
        "customer",
        customers,
        scorer(handles.get("customer")),
        scorer(shadows.get("customer")),
        model_name=ctx.customer_model,
        faults=faults,
    )
    products = score_kind(
        "product",
        products,
        scorer(handles.get("product")),
        scorer(shadows.get("product")),
        model_name=ctx.product_model,
        faults=faults,
    )
    lap("score_s")
    customer_records = to_records(customers, CUSTOMER_FIELDS)
    product_records = to_records(products, PRODUCT_FIELDS)
    if ctx.profiles_dir is not None:
        write_profiles(ctx.profiles_dir, part, customer_records, product_records)
    encoded = (
        encode_profiles(ctx.customer_topic, ctx.product_topic, customer_records, product_records)
        if ctx.publish
        else []
    )
    lap("encode_s")
    done = Published(
        customers=len(customer_records),
        products=len(product_records),
        kafka_records=len(encoded),
        stores=_per_store(customers, products),
        faults=[f.as_dict() for f in faults[:MAX_FAULTS]],
        fault_count=len(faults),
    )
    if ctx.publish:
        transactional_id = (
            f"{ctx.transactional_prefix}-{producer_id or part}"
            if ctx.transactional_prefix
            else None
        )
        _produce(ctx, transactional_id, encoded)
        lap("kafka_s")
        redis_sink: RedisProfileSink = client(
            RedisProfileSink, ctx.redis, ctx.redis_prefix, ctx.redis_retry_seconds
        )
        cw, cs = redis_sink.write("customer", customer_records, "customer_id")
        pw, ps = redis_sink.write("product", product_records, "product_id")
        done.redis_written, done.redis_skipped = cw + pw, cs + ps
        lap("redis_s")
    done.cache = cache.stats()
    return done


def _produce(
    ctx: JobContext,
    transactional_id: str | None,
    encoded: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]],
) -> None:
    """Produce and flush (one transaction with an id); a fenced producer is replaced once.

    Several worker processes may each hold a producer for a task's id; the one that last
    initialised it fenced the others. The records of a fenced transaction were aborted, so they
    are all written again with a new producer (which fences the other holder in turn).
    """
    from storeml.connectors.kafka_sink import KafkaRecordSink
    from storeml.errors import FencedError

    for attempt in (1, 2):
        producer: KafkaRecordSink = client(KafkaRecordSink, ctx.kafka, transactional_id)
        try:
            for topic, record_key, value, headers in encoded:
                producer.produce(topic, record_key, value, headers)
            producer.flush()
            return
        except FencedError:
            drop_client(KafkaRecordSink, ctx.kafka, transactional_id)
            if attempt == 2:
                raise
            log.warning("producer %s was fenced; writing with a new one", transactional_id)


def expire_profiles(ctx: JobContext, expired: dict[str, pd.DataFrame]) -> None:
    """Delete expired entities' profiles from Redis (guarded: a newer profile stays)."""
    from storeml.connectors.redis_sink import RedisProfileSink

    redis_sink: RedisProfileSink = client(
        RedisProfileSink, ctx.redis, ctx.redis_prefix, ctx.redis_retry_seconds
    )
    for kind, table, id_field in (
        ("customer", "customers", "customer_id"),
        ("product", "products", "product_id"),
    ):
        gone = expired.get(table)
        if gone is not None and len(gone):
            gone = rebase(gone, ctx.version_base)
            redis_sink.delete(
                kind, zip(gone["store_id"], gone[id_field], gone["profile_version"], strict=True)
            )


def rebase(frame: pd.DataFrame, base: int) -> pd.DataFrame:
    """``frame`` with ``base`` added to ``profile_version`` (a no-op for base 0)."""
    if not base:
        return frame
    return frame.assign(profile_version=frame["profile_version"].astype("int64") + base)


def _per_store(customers: pd.DataFrame, products: pd.DataFrame) -> dict[str, list[int]]:
    """``{store_id: [customer profiles, product profiles]}`` written by one task."""
    out: dict[str, list[int]] = {}
    for column, frame in enumerate((customers, products)):
        for store, count in frame["store_id"].value_counts().items():
            out.setdefault(str(store), [0, 0])[column] = int(count)
    return out
