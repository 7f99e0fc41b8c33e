"""The enrichment stream: Kafka -> decode -> fold profiles -> score per store -> Kafka + Redis.

One micro-batch, as wired by :class:`EnrichBatch` (a ``foreachBatch`` function)::

    Kafka ranges ──read + decode (streams/event_source)──▶ facts ──by bucket: mapInPandas(enrich)──▶ metrics
                         │                                                  │
                 dead letters (Kafka)                       state (checkpoint), profiles (Kafka + Redis)

* decode (:func:`decode_frames`, inside the source's read task): Avro single-object messages are
  decoded and validated; bad ones go to the dead-letter topic with the reason and the original
  bytes, the rest become fact rows tagged with their store's state bucket;
* enrich (one call per task, which holds whole state buckets): per bucket, load its state as of
  the previous batch, fold the facts, commit the new state version; then score each store's
  touched profiles with one model call per store, and write the profiles to Kafka and Redis.

The registry aliases are resolved on the driver at the start of every micro-batch, so a moved alias
is served from the next batch on, without a restart. Replays after a crash recompute the same
records (same offsets, same state version), which the sinks absorb (see ``connectors``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from storeml.settings import Settings

__all__ = [
    "JobContext",
    "EnrichBatch",
    "start_enrichment",
    "source_options",
    "decode_batches",
    "decode_frames",
    "DECODE_STATS",
    "enrich_task",
    "METRICS_SCHEMA",
    "TASK_STAGES",
    "decode_schema",
    "enrich_facts",
    "partition_labels",
    "shuffle_partitions",
    "job_context",
    "model_versions",
    "profile_headers",
    "encode_profiles",
    "batch_totals",
]

log = logging.getLogger("storeml.stream")

#: Seconds each enrich task spends per stage (columns of :data:`METRICS_SCHEMA`).
TASK_STAGES = ("state_s", "lake_s", "fold_s", "score_s", "encode_s", "kafka_s", "redis_s")
METRICS_SCHEMA = (
    "buckets string, facts long, customers long, products long, kafka_records long,"
    " redis_written long, redis_skipped long, "
    + ", ".join(f"{name} double" for name in TASK_STAGES)
    + ", models string, pid long, cache string, stores string,"
    " events long, dead_letters long, decode_s double, state string"
)
_COUNTS = ("facts", "customers", "products", "redis_written", "redis_skipped")


@dataclass(frozen=True)
class JobContext:
    """Everything an executor needs, as plain values (pickled into every task).

    The stream uses the defaults of the last fields; the recompute (``batch/recompute.py``) sets
    them: no dead letters (None: counted only), no archiving, events after ``until_ms`` ignored,
    profiles written as Parquet to ``profiles_dir`` and/or published (``publish``).
    """

    kafka: dict[str, Any]
    orders_topic: str
    products_topic: str
    customer_topic: str
    product_topic: str
    dead_letter_topic: str | None
    redis_url: str
    redis_prefix: str
    state_root: str
    state_buckets: int
    snapshot_every: int
    retain: int
    tracking_uri: str
    registry_uri: str
    customer_model: str
    product_model: str
    serving_alias: str
    shadow_alias: str
    model_cache_size: int
    transactional_prefix: str | None
    lake_root: str | None = None
    lake_compact_seconds: float = 60.0
    state_id: str = ""
    state_cache_dir: str = ""
    state_cache_mb: int = 64
    state_ttl_ms: int = 0
    state_expire_redis: bool = False
    until_ms: int | None = None
    profiles_dir: str | None = None
    publish: bool = True


def job_context(
    settings: Settings, checkpoint: str | None = None, state_id: str = ""
) -> JobContext:
    root = checkpoint or str(settings.checkpoint_path)
    return JobContext(
        kafka=settings.kafka_config(),
        orders_topic=settings.topic_orders,
        products_topic=settings.topic_products,
        customer_topic=settings.topic_customer_profiles,
        product_topic=settings.topic_product_profiles,
        dead_letter_topic=settings.topic_dead_letter,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        state_root=f"{root}/profile-state",
        state_buckets=settings.state_buckets,
        snapshot_every=settings.state_snapshot_every,
        retain=settings.state_retain_batches,
        tracking_uri=settings.tracking_uri,
        registry_uri=settings.registry_uri,
        customer_model=settings.customer_model,
        product_model=settings.product_model,
        serving_alias=settings.serving_alias,
        shadow_alias=settings.shadow_alias,
        model_cache_size=settings.model_cache_size,
        transactional_prefix=(
            f"storeml-enrich-{abs(hash(root)) % 10**8}" if settings.kafka_transactions else None
        ),
        lake_root=str(settings.lake_path) if settings.lake_path else None,
        lake_compact_seconds=settings.lake_compact_seconds,
        state_id=state_id,
        state_cache_dir=str(settings.state_cache_path),
        state_cache_mb=settings.state_cache_mb,
        state_ttl_ms=int(settings.state_ttl_hours * 3_600_000),
        state_expire_redis=settings.state_expire_redis,
    )


# --- per-process clients (executor side) ------------------------------------------------------
_clients: dict[tuple[Any, ...], Any] = {}


def _client(kind: type, *args: Any) -> Any:
    key = (kind, *(json.dumps(a, sort_keys=True, default=str) for a in args))
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = kind(*args)
    return client


# --- decode ------------------------------------------------------------------------------------
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
        _client(DeadLetterSink, ctx.kafka, ctx.dead_letter_topic) if ctx.dead_letter_topic else None
    )
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
        for topic, partition, offset, key, value in zip(
            frame["topic"],
            frame["partition"],
            frame["offset"],
            frame["key"],
            frame["value"],
            strict=True,
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
            reason = validate(record)
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


# --- enrich ------------------------------------------------------------------------------------
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


def enrich_task(
    ctx: JobContext,
    batch_id: int | None,
    handles: dict[str, Any],
    shadows: dict[str, Any],
    partitions: int = 1,
    batch_ts_ms: int = 0,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per-task function (run by :func:`enrich_facts`): facts -> state, scores, sinks; metrics.

    The task is number ``bucket % partitions`` of ``partitions`` and holds the state buckets
    :func:`~storeml.connectors.state_store.task_buckets` names. It reads the state rows of the
    entities its facts touch (as of batch ``batch_id - 1``), folds all its facts in one call,
    commits the new rows as batch ``batch_id``, and runs the lake, the scoring, the encoding and
    the sinks once (their fixed costs per call dominate small micro-batches). ``batch_ts_ms`` is
    Spark's timestamp of the batch (idle expiry). ``batch_id`` None folds the facts into an empty
    state and keeps none (a caller that sees each entity's whole history at once).
    """

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        from storeml.connectors.event_lake import EventLakeSink
        from storeml.models.profiles import facts_frame

        timings: dict[str, float] = {}
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - mark
            mark = now

        if ctx.lake_root is not None:
            raw = pdf.loc[pdf["raw_value"].notna()]
            lake: EventLakeSink = _client(EventLakeSink, ctx.lake_root)
            lake.write(
                raw[
                    [
                        "topic",
                        "partition",
                        "offset",
                        "raw_key",
                        "raw_value",
                        "store_id",
                        "event_time",
                    ]
                ].rename(columns={"raw_key": "key", "raw_value": "value"})
            )
            lap("lake_s")
        facts = facts_frame(pdf)
        fact_count = len(facts)
        store = _state_store(ctx) if batch_id is not None else None
        step = fold_step(
            store,
            facts,
            batch_id,
            partitions,
            ctx.state_buckets,
            batch_ts_ms,
            ctx.state_ttl_ms,
            lap,
        )
        first_bucket = int(pdf["bucket"].min())  # names this task's files and producer
        done = publish_profiles(
            ctx, step.customers, step.products, handles, shadows, str(first_bucket), lap
        )
        if ctx.publish and ctx.state_expire_redis and step.expired:
            expire_profiles(ctx, step.expired)
            lap("redis_s")
        if step.committed is not None:
            step.committed.result()  # the state is durable before Spark commits the batch
        lap("state_s")

        return metrics_frame(
            sorted(int(b) for b in pdf["bucket"].unique()),
            fact_count,
            done,
            timings,
            model_versions(handles, shadows),
            step.state_info,
        )

    return run


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

    def add(self, other: Published) -> None:
        for name in ("customers", "products", "kafka_records", "redis_written", "redis_skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
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
) -> Published:
    """Score folded profiles per store, then write them: Parquet files, Kafka, Redis (executor).

    ``part`` names this call's profile files (``ctx.profiles_dir``) and its transactional
    producer. ``lap`` is called as each stage ends (score_s, encode_s, kafka_s, redis_s).
    """
    from storeml.connectors.kafka_sink import KafkaRecordSink
    from storeml.connectors.profile_files import write_profiles
    from storeml.connectors.redis_sink import RedisProfileSink
    from storeml.models.profiles import to_records
    from storeml.models.serving import Scorer, score_kind
    from storeml.models.store_models import get_model_cache

    cache = get_model_cache(ctx.model_cache_size)

    def scorer(handle: Any) -> Scorer:
        if handle is None:
            return Scorer(None, None)
        return Scorer(cache.bundle(handle, ctx.tracking_uri, ctx.registry_uri), handle)

    customers = score_kind(
        "customer",
        customers,
        scorer(handles.get("customer")),
        scorer(shadows.get("customer")),
        model_name=ctx.customer_model,
    )
    products = score_kind(
        "product",
        products,
        scorer(handles.get("product")),
        scorer(shadows.get("product")),
        model_name=ctx.product_model,
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
    )
    if ctx.publish:
        transactional_id = (
            f"{ctx.transactional_prefix}-{part}" if ctx.transactional_prefix else None
        )
        producer: KafkaRecordSink = _client(KafkaRecordSink, ctx.kafka, transactional_id)
        for topic, record_key, value, headers in encoded:
            producer.produce(topic, record_key, value, headers)
        producer.flush()
        lap("kafka_s")
        redis_sink: RedisProfileSink = _client(RedisProfileSink, ctx.redis_url, ctx.redis_prefix)
        cw, cs = redis_sink.write("customer", customer_records, "customer_id")
        pw, ps = redis_sink.write("product", product_records, "product_id")
        done.redis_written, done.redis_skipped = cw + pw, cs + ps
        lap("redis_s")
    done.cache = cache.stats()
    return done


def expire_profiles(ctx: JobContext, expired: dict[str, pd.DataFrame]) -> None:
    """Delete expired entities' profiles from Redis (guarded: a newer profile stays)."""
    from storeml.connectors.redis_sink import RedisProfileSink

    redis_sink: RedisProfileSink = _client(RedisProfileSink, ctx.redis_url, ctx.redis_prefix)
    for kind, table, id_field in (
        ("customer", "customers", "customer_id"),
        ("product", "products", "product_id"),
    ):
        gone = expired.get(table)
        if gone is not None and len(gone):
            redis_sink.delete(
                kind, zip(gone["store_id"], gone[id_field], gone["profile_version"], strict=True)
            )


def metrics_frame(
    buckets: list[int],
    facts: int,
    done: Published,
    timings: dict[str, float],
    versions: dict[str, str],
    state_info: dict[str, Any],
) -> pd.DataFrame:
    """The one metrics row (:data:`METRICS_SCHEMA`) an enrich or recompute task returns."""
    return pd.DataFrame(
        [
            {
                "buckets": ",".join(str(b) for b in buckets),
                "facts": facts,
                "customers": done.customers,
                "products": done.products,
                "kafka_records": done.kafka_records,
                "redis_written": done.redis_written,
                "redis_skipped": done.redis_skipped,
                **{name: timings.get(name, 0.0) for name in TASK_STAGES},
                "models": json.dumps(versions, sort_keys=True),
                "pid": os.getpid(),
                "cache": json.dumps(done.cache, sort_keys=True),
                "stores": json.dumps(done.stores),
                "events": 0,
                "dead_letters": 0,
                "decode_s": 0.0,
                "state": json.dumps(state_info),
            }
        ]
    )


@dataclass
class FoldStep:
    """What :func:`fold_step` did: profiles to score, and the state commit to wait for."""

    customers: pd.DataFrame
    products: pd.DataFrame
    expired: dict[str, pd.DataFrame]
    committed: Future[None] | None
    state_info: dict[str, Any]


def fold_step(
    store: Any,
    facts: pd.DataFrame,
    batch_id: int | None,
    partitions: int,
    buckets: int,
    batch_ts_ms: int,
    ttl_ms: int,
    lap: Callable[[str], None] = lambda name: None,
) -> FoldStep:
    """One task's state step: read the touched entities, expire, fold, commit; render profiles.

    ``store`` (a :class:`~storeml.connectors.state_store.StateStore`) None, or ``batch_id`` None,
    folds into an empty state and keeps none. ``lap`` is called with "state_s" and "fold_s" as
    each stage ends (timings).
    """
    from storeml.connectors.state_store import task_buckets
    from storeml.models.profiles import (
        ProfileState,
        apply_delta,
        customer_profiles,
        fold,
        product_profiles,
        restart_entities,
        stamp_delta,
    )

    expired: dict[str, pd.DataFrame] = {}
    partition = int(facts["bucket"].iloc[0]) % partitions if len(facts) else 0
    mine = task_buckets(partition, partitions, buckets)
    if store is None or batch_id is None:
        state = ProfileState()
    else:
        store.prepare(mine, batch_id - 1)
        if ttl_ms:
            expired = store.idle(mine, batch_ts_ms - ttl_ms)
        state = restart_entities(store.read(facts), expired)
    lap("state_s")
    delta = fold(state, facts)
    after = apply_delta(state, delta)
    customers = customer_profiles(after, delta, facts)
    products = product_profiles(after, delta, facts)
    lap("fold_s")
    if store is None or batch_id is None:
        return FoldStep(customers, products, expired, None, {})
    # the changelog is written while the caller scores and writes the sinks
    committed, changed = store.commit(
        batch_id, partition, partitions, mine, stamp_delta(delta, buckets, batch_ts_ms), expired
    )
    store.snapshot_due(mine, batch_id)
    stats = store.stats
    info = {
        "file": f"{partition}of{partitions}",
        "changed": changed,
        "keys_read": stats.keys_read,
        "rows_read": stats.rows_read,
        "rows_written": stats.rows_written,
        "expired": stats.rows_expired,
        "catch_ups": stats.catch_ups,
        "rebuilds": stats.rebuilds,
        "snapshots": stats.snapshots,
    }
    lap("state_s")
    return FoldStep(customers, products, expired, committed, info)


def _state_store(ctx: JobContext) -> Any:
    from storeml.connectors.state_store import StateStore

    return StateStore(
        ctx.state_root,
        ctx.state_id,
        ctx.state_buckets,
        ctx.state_cache_dir,
        snapshot_every=ctx.snapshot_every,
        retain=ctx.retain,
        cache_mb=ctx.state_cache_mb,
        expiry=bool(ctx.state_ttl_ms),
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _decode_metrics(stats: pd.DataFrame) -> pd.DataFrame:
    """One metrics row (no bucket) with the counts of :data:`DECODE_STATS` rows."""
    row: dict[str, Any] = {name: 0 for name in ("kafka_records", *_COUNTS)}
    row.update({name: 0.0 for name in TASK_STAGES})
    row.update(
        buckets="",
        models="{}",
        pid=os.getpid(),
        cache="",
        stores="{}",
        events=int(stats["decode_events"].sum()),
        dead_letters=int(stats["decode_dead_letters"].sum()),
        decode_s=float(stats["decode_s"].sum()),
        state="",
    )
    return pd.DataFrame([row])


def _per_store(customers: pd.DataFrame, products: pd.DataFrame) -> dict[str, list[int]]:
    """``{store_id: [customer profiles, product profiles]}`` written by one task."""
    out: dict[str, list[int]] = {}
    for column, frame in enumerate((customers, products)):
        for store, count in frame["store_id"].value_counts().items():
            out.setdefault(str(store), [0, 0])[column] = int(count)
    return out


def batch_totals(metrics: list[Any]) -> dict[str, Any]:
    """Sums over the tasks' metrics rows: counts, and seconds per :data:`TASK_STAGES` and decode."""
    out: dict[str, Any] = {
        name: sum(getattr(row, name) for row in metrics)
        for name in (*_COUNTS, "events", "dead_letters")
    }
    out["stages"] = {
        name: sum(getattr(row, name) for row in metrics) for name in ("decode_s", *TASK_STAGES)
    }
    return out


def model_versions(handles: dict[str, Any], shadows: dict[str, Any]) -> dict[str, str]:
    """``{"customer": "name:version", "customer.shadow": ...}`` (``none`` when unresolved)."""
    out = {
        kind: (f"{h.name}:{h.version}" if h is not None else "none") for kind, h in handles.items()
    }
    out.update({f"{kind}.shadow": f"{h.name}:{h.version}" for kind, h in shadows.items() if h})
    return out


def _cache_totals(metrics: list[Any]) -> dict[str, float]:
    """Model-cache counters summed over the worker processes that ran this batch's tasks.

    Each task reports its process's cumulative counters; the last report per process counts.
    """
    latest: dict[int, dict[str, float]] = {}
    for row in metrics:
        if row.cache:  # decode rows carry none
            latest[int(row.pid)] = json.loads(row.cache)
    totals: dict[str, float] = {}
    for stats in latest.values():
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + value
    lookups = totals.get("hits", 0) + totals.get("misses", 0)
    totals["hit_rate"] = totals.get("hits", 0) / lookups if lookups else 1.0
    totals["processes"] = len(latest)
    return totals


def partition_labels(spark: Any, buckets: int, partitions: int) -> dict[int, int]:
    """For each state bucket, an int whose Spark hash partition is ``bucket % partitions``.

    ``repartition(n, col)`` places rows by ``pmod(hash(col), n)``, which may put several of a few
    buckets in one partition and leave a core idle (buckets 0 and 1 share a partition of 2). Rows
    are repartitioned by these labels instead, so buckets spread evenly over the partitions.
    """
    from pyspark.sql import functions as F

    candidates = spark.range(0, 64 * max(buckets, partitions)).select(
        F.col("id").cast("int").alias("label"),
        F.expr(f"pmod(hash(cast(id as int)), {partitions})").alias("partition"),
    )
    free: dict[int, list[int]] = {}
    for row in candidates.collect():
        free.setdefault(int(row.partition), []).append(int(row.label))
    return {bucket: free[bucket % partitions].pop(0) for bucket in range(buckets)}


def enrich_facts(
    facts: Any,
    run_task: Callable[[Any], Any],
    labels: dict[int, int],
    partitions: int | None = None,
    chunked: bool = False,
) -> Any:
    """Metrics DataFrame of ``run_task`` applied to each task's buckets (a lazy Spark plan).

    ``labels`` come from :func:`partition_labels` for ``partitions`` (default: the session's
    shuffle partitions); each partition's Python worker gathers its buckets' facts whole and hands
    them to ``run_task`` (a micro-batch), or, ``chunked``, hands it an iterator of the facts in
    Arrow-batch-sized chunks, sorted by source coordinates and never splitting one message's rows,
    from which ``run_task`` yields metrics rows (history larger than memory; Spark's sort spills). The decode tasks' :data:`DECODE_STATS` rows become one metrics row (no bucket) per
    partition that received any.
    """
    from pyspark.sql import functions as F

    mapping = F.create_map(*[F.lit(v) for pair in sorted(labels.items()) for v in pair])
    placed = facts.withColumn("_part", mapping[F.col("bucket")]).repartition(
        partitions or shuffle_partitions(facts.sparkSession), "_part"
    )

    def run_chunked(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        stats: list[pd.DataFrame] = []

        def facts_only() -> Iterator[pd.DataFrame]:
            # Rows arrive sorted by source coordinates; the rows of one message (an order's
            # lines) are held back until the next chunk when a chunk ends among them, so that
            # no message is folded in two pieces (the fold counts an order once per chunk).
            carry: pd.DataFrame | None = None
            for chunk in chunks:
                marks = chunk["kind"] == DECODE_STATS
                if marks.any():
                    stats.append(chunk[marks])
                    chunk = chunk[~marks]
                if not len(chunk):
                    continue
                rows = chunk if carry is None else pd.concat([carry, chunk], ignore_index=True)
                last = rows.iloc[-1]
                tail = (
                    (rows["offset"] == last["offset"])
                    & (rows["partition"] == last["partition"])
                    & (rows["topic"] == last["topic"])
                )
                carry = rows[tail]
                if (~tail).any():
                    yield rows[~tail].drop(columns="_part").reset_index(drop=True)
            if carry is not None and len(carry):
                yield carry.drop(columns="_part").reset_index(drop=True)

        yield from run_task(facts_only())
        if stats:
            yield _decode_metrics(pd.concat(stats, ignore_index=True))

    def run(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = [chunk for chunk in chunks if len(chunk)]
        if not frames:
            return
        rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        stats = rows["kind"] == DECODE_STATS
        if stats.any():
            yield _decode_metrics(rows[stats])
            rows = rows[~stats]
        if len(rows):
            yield run_task(rows.drop(columns="_part").reset_index(drop=True))

    if chunked:
        placed = placed.sortWithinPartitions("topic", "partition", "offset")
        return placed.mapInPandas(run_chunked, METRICS_SCHEMA)
    return placed.mapInPandas(run, METRICS_SCHEMA)


def shuffle_partitions(spark: Any) -> int:
    """The session's ``spark.sql.shuffle.partitions``."""
    return int(spark.conf.get("spark.sql.shuffle.partitions"))


# --- driver ------------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """What one micro-batch did (driver side)."""

    batch_id: int
    events: int
    dead_letters: int
    facts: int
    customers: int
    products: int
    redis_written: int
    redis_skipped: int
    seconds: float
    stages: dict[str, float]
    models: dict[str, str]
    model_cache: dict[str, float]
    tasks: int = 0  # Spark tasks per stage (read, enrich): 1 for a small batch
    state: dict[str, int] = field(default_factory=dict)  # state reads/writes, summed over tasks


class EnrichBatch:
    """The ``foreachBatch`` function of the enrichment stream."""

    def __init__(
        self, ctx: JobContext, on_batch: Callable[[BatchReport], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.on_batch = on_batch
        self.reports: list[BatchReport] = []
        self._labels: dict[int, dict[int, int]] = {}  # per enrich partition count
        self._compactor: subprocess.Popen[str] | None = None
        self._compacted_at = time.monotonic()
        self._started = False
        self._cleaner: Future[int] | None = None

    def resolve_models(self, alias: str | None = None) -> dict[str, Any]:
        """Current targets of ``alias`` (default: the served one) per kind (driver side; a few ms).

        An empty alias (shadow scoring disabled) resolves to no model.
        """
        from storeml.connectors.mlflow_registry import resolve_alias

        ctx = self.ctx
        alias = ctx.serving_alias if alias is None else alias
        models = {"customer": ctx.customer_model, "product": ctx.product_model}
        return {
            kind: resolve_alias(ctx.tracking_uri, ctx.registry_uri, name, alias) if alias else None
            for kind, name in models.items()
        }

    def _commit_state(self, batch_id: int, metrics: list[Any]) -> dict[str, int]:
        """Write the batch's state manifest (its commit), start a due cleaning; sum the counters."""
        from storeml.connectors.state_store import clean, write_manifest

        files: dict[str, list[int]] = {}
        totals: dict[str, int] = {}
        for row in metrics:
            if not row.state:
                continue
            info = json.loads(row.state)
            files[info.pop("file")] = info.pop("changed")
            for name, value in info.items():
                totals[name] = totals.get(name, 0) + int(value)
        write_manifest(self.ctx.state_root, batch_id, files)
        if batch_id % self.ctx.snapshot_every == 0 and (
            self._cleaner is None or self._cleaner.done()
        ):
            if self._cleaner is not None and self._cleaner.exception() is not None:
                log.error("state cleaning failed: %s", self._cleaner.exception())
            self._cleaner = _driver_pool.submit(
                clean, self.ctx.state_root, batch_id, self.ctx.retain
            )
        return totals

    def _maybe_compact(self) -> None:
        """Start a lake compaction (a low-priority child process) when one is due and none runs.

        A failed compaction is logged and retried at the next interval; the stream goes on, and
        the incoming files are read as they are meanwhile.
        """
        from storeml.connectors.event_lake import compaction_outcome, start_compaction
        from storeml.errors import ConnectorError

        if self.ctx.lake_root is None:
            return
        if self._compactor is not None:
            if self._compactor.poll() is None:
                return
            try:
                done = compaction_outcome(self._compactor)
                log.info(
                    "event lake: %d incoming files (%d events) -> %d files in %.1fs",
                    done.incoming_files,
                    done.events,
                    done.files_written,
                    done.seconds,
                )
            except ConnectorError as exc:
                log.error("%s; retried at the next interval", exc)
            self._compactor = None
        if time.monotonic() - self._compacted_at < self.ctx.lake_compact_seconds:
            return
        self._compacted_at = time.monotonic()
        self._compactor = start_compaction(self.ctx.lake_root)

    def __call__(self, facts: Any, batch_id: int) -> None:
        """Enrich one micro-batch of the ``storeml_events`` source (already decoded facts)."""
        from storeml.connectors.state_store import prepare_checkpoint

        started = time.perf_counter()
        if not self._started:  # files of an attempt that never committed go first
            prepare_checkpoint(self.ctx.state_root, batch_id)
            self._started = True
        handles = self.resolve_models()
        shadows = self.resolve_models(self.ctx.shadow_alias)
        resolve_s = time.perf_counter() - started
        # as many enrich tasks as read tasks: the source made a small batch one task
        spark = facts.sparkSession
        partitions = max(1, min(shuffle_partitions(spark), facts.rdd.getNumPartitions()))
        if partitions not in self._labels:
            self._labels[partitions] = partition_labels(spark, self.ctx.state_buckets, partitions)
        job = enrich_facts(
            facts,
            enrich_task(
                self.ctx,
                batch_id,
                handles,
                shadows,
                partitions,
                batch_timestamp_ms(self.ctx.state_root, batch_id),
            ),
            self._labels[partitions],
            partitions,
        )
        plan_s = time.perf_counter() - started - resolve_s
        metrics = job.collect()
        state = self._commit_state(batch_id, metrics)
        totals = batch_totals(metrics)
        report = BatchReport(
            batch_id=batch_id,
            events=totals["events"],
            dead_letters=totals["dead_letters"],
            facts=totals["facts"],
            customers=totals["customers"],
            products=totals["products"],
            redis_written=totals["redis_written"],
            redis_skipped=totals["redis_skipped"],
            seconds=time.perf_counter() - started,
            stages={"resolve_models_s": resolve_s, "plan_s": plan_s, **totals["stages"]},
            models=model_versions(handles, shadows),
            model_cache=_cache_totals(metrics),
            tasks=partitions,
            state=state,
        )
        self.reports.append(report)
        self._maybe_compact()
        log.info(
            "batch %d: %d events (%d dead letters) -> %d customer, %d product profiles in %.2fs;"
            " models %s; model cache hit rate %.3f, %d store models in memory",
            batch_id,
            report.events,
            report.dead_letters,
            report.customers,
            report.products,
            report.seconds,
            report.models,
            report.model_cache["hit_rate"],
            report.model_cache.get("store_models", 0),
        )
        if self.on_batch is not None:
            self.on_batch(report)


_driver_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storeml-state-clean")


def batch_timestamp_ms(state_root: str, batch_id: int) -> int:
    """Spark's timestamp of micro-batch ``batch_id``, from its offset log entry.

    The write-ahead log records it before the batch runs, so a replayed batch gets the same
    timestamp (idle expiry then drops the same entities). The checkpoint is the state root's
    parent; without an entry (tests calling the batch function directly) the clock is used.
    """
    from pathlib import Path

    path = Path(state_root).parent / "offsets" / str(batch_id)
    try:
        lines = path.read_text().splitlines()
        return int(json.loads(lines[1])["batchTimestampMs"])
    except (OSError, IndexError, KeyError, ValueError):
        return int(time.time() * 1000)


def source_options(settings: Settings, tasks: int | None = None) -> dict[str, str]:
    """Options of the ``storeml_kafka`` source reading the order and product topics.

    ``tasks``: most Spark tasks per read (``maxPartitions``, and one per
    ``settings.task_records`` records); None: one per topic partition.
    """
    from storeml.connectors.kafka_admin import watermark_method_for

    options = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "subscribe": f"{settings.topic_orders},{settings.topic_products}",
        "startingOffsets": settings.starting_offsets,
        "maxRecordsPerTrigger": str(settings.max_records_per_batch),
        "watermarkMethod": watermark_method_for(settings.kafka_flavor),
    }
    for name, value in settings.kafka_config().items():
        if name != "bootstrap.servers":
            options[f"kafka.{name}"] = str(value)
    if tasks:
        options["maxPartitions"] = str(tasks)
        options["minRecordsPerPartition"] = str(settings.task_records)
    return options


def start_enrichment(
    spark: Any,
    settings: Settings,
    *,
    available_now: bool = False,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> tuple[Any, EnrichBatch]:
    """Start the enrichment query; returns (StreamingQuery, the foreachBatch function)."""
    from storeml.streams.event_source import EVENT_SOURCE_NAME, EventSource, context_option

    checkpoint = settings.checkpoint_path
    state_id = _check_checkpoint(checkpoint, settings)
    ctx = job_context(settings, str(checkpoint), state_id)
    spark.dataSource.register(EventSource)
    tasks = settings.source_tasks or shuffle_partitions(spark)
    reader = (
        spark.readStream.format(EVENT_SOURCE_NAME)
        .options(**source_options(settings, tasks))
        .options(**context_option(ctx))
    )
    handler = EnrichBatch(ctx, on_batch)
    writer = (
        reader.load()
        .writeStream.queryName("storeml_enrich")
        .foreachBatch(handler)
        .option("checkpointLocation", str(checkpoint))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    return writer.start(), handler


def _check_checkpoint(checkpoint: Any, settings: Settings) -> str:
    """Refuse to reuse a checkpoint with another state layout; returns the checkpoint's state id.

    The id (made when the checkpoint is) names the hosts' working copies of the state, so a new
    checkpoint at the same path never picks up an old copy.
    """
    import uuid
    from pathlib import Path

    from storeml.errors import ConfigError

    meta_path = Path(checkpoint) / "storeml.json"
    if (Path(checkpoint) / "profile-state" / "bucket=00000").exists():
        raise ConfigError(
            f"{checkpoint}: the checkpoint holds profile state in the layout of storeml before"
            " entity-keyed state; start from a new STOREML_CHECKPOINT_DIR (run `storeml recompute`"
            " to rebuild the profiles from the event lake)"
        )
    if meta_path.exists():
        stored = json.loads(meta_path.read_text())
        if stored.get("state_buckets") != settings.state_buckets:
            raise ConfigError(
                f"{meta_path}: checkpoint was written with state_buckets="
                f"{stored.get('state_buckets')}, settings say {settings.state_buckets}; keep"
                " STOREML_STATE_BUCKETS as it was or start from a new STOREML_CHECKPOINT_DIR"
            )
        if "state_id" in stored:
            return str(stored["state_id"])
        meta = {**stored, "state_id": uuid.uuid4().hex}
    else:
        meta = {"state_buckets": settings.state_buckets, "state_id": uuid.uuid4().hex}
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    return str(meta["state_id"])


def report_dict(report: BatchReport) -> dict[str, Any]:
    return asdict(report)
