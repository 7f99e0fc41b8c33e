"""Streaming benchmark: the Spark enrichment stream against two plain-Python baselines.

Run from the repository root (several minutes at the default sizes)::

    .venv/bin/python -m bench.stream_bench                       # 200,000 events, 1,000 stores
    .venv/bin/python -m bench.stream_bench --events 20000 --stores 50 --latency-seconds 10
    .venv/bin/python -m bench.stream_bench --json /tmp/bench.json --set state_buckets=4 \\
        --spark-conf spark.sql.shuffle.partitions=4

One invocation starts private services (a Tansu broker on a free port; the Redis on
127.0.0.1:6379 under a unique key prefix, else a ``redis-server`` of its own; MLflow on SQLite in a
temporary folder), trains and registers per-store models, pre-loads the events into fresh input
topics, and then measures on those same events:

* **spark** the enrichment stream (``streams.enrich``) with ``availableNow``: wall time from query
  start to termination (the Spark session start is reported apart and not counted), with and
  without the first micro-batch (which pays for Python workers and cold model loads);
* **baseline A** one process, one event at a time: consume, decode, update a dict profile, one
  ``predict_proba`` per touched profile that needs a score, Avro encode, produce, one un-pipelined
  Redis HSET per touched profile. Run on the first ``--baseline-a-events`` events;
* **baseline B** one process, batches of ``--baseline-b-batch`` events through the same
  ``models`` code as the stream (facts, fold, per-store scoring), pipelined Redis via
  ``RedisProfileSink``; whole input;
* **latency** the stream running continuously (processing-time trigger 0 s, fresh topics and
  checkpoint) while events are produced at a steady ``--latency-rate``; for every
  ``--latency-sample-every``-th order the time from ``produce()`` until the customer's Redis hash
  shows a ``profile_version`` counting that order. The stream is first warmed up with one second's
  worth of events (its first micro-batch starts Python workers and loads models), then the paced
  production starts and the first ``--latency-warmup`` seconds of samples are discarded.

Spark's own per-trigger phases (``durationMs``: ``latestOffset``, ``addBatch`` = our
foreachBatch, ``walCommit``, ``commitOffsets``) are printed as medians. Keep the latency run short
(the default 30 s) on the embedded Tansu broker: its memory storage spends CPU per fetch in
proportion to the partition's log, so after a minute or two at 2,000 events/s ``latestOffset``
grows from ~50 ms to seconds and the run measures the broker, not the stream.

Every stage writes to its own output topics and Redis prefix. Nothing here asserts a time: the
script prints numbers (and ``--json`` writes them); the targets are printed next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit

__all__ = [
    "TARGET_EVENTS_PER_S",
    "TARGET_P99_S",
    "BenchError",
    "Services",
    "build_parser",
    "main",
    "run",
    "start_services",
    "train_models",
    "preload_events",
    "run_spark",
    "run_baseline_a",
    "run_baseline_b",
    "run_latency",
    "format_report",
    "use_bytecode_cache",
]

#: End-to-end rate the stream must reach on a 2-core machine (events/s).
TARGET_EVENTS_PER_S = 25_000.0
#: Produce-to-Redis p99 latency target at the steady latency rate (seconds).
TARGET_P99_S = 2.0

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

log = logging.getLogger("storeml.bench")


class BenchError(RuntimeError):
    """A benchmark stage could not run to completion (timeout, stream failure, lost records)."""


# --- small helpers ------------------------------------------------------------------------------
_T0 = time.perf_counter()


def _say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _rate(events: int, seconds: float | None) -> float | None:
    return events / seconds if seconds and seconds > 0 else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.asarray(values, dtype="float64"), q))


def _kv(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


# --- services -----------------------------------------------------------------------------------
@dataclass
class Services:
    """The private services of one run and the settings pointing at them.

    ``settings_kwargs`` are the ``load_settings`` arguments of the run; stages derive their own
    settings from them (own topics, Redis prefix, checkpoint) with :meth:`settings_for`.
    """

    workdir: Path
    run_id: str
    settings_kwargs: dict[str, Any]
    broker: Any
    redis_server: Any | None
    startup_s: float
    mlflow_init_s: float
    prefixes: list[str] = field(default_factory=list)

    def settings_for(self, stage: str, **changes: Any) -> Any:
        """Settings of one stage: its own output topics, Redis prefix and checkpoint."""
        from storeml.settings import load_settings

        base = self.settings_kwargs
        prefix = f"{base['redis_prefix']}:{stage}"
        self.prefixes.append(prefix)
        values = {
            **base,
            "topic_customer_profiles": f"{base['topic_orders']}.{stage}.customer-profiles",
            "topic_product_profiles": f"{base['topic_orders']}.{stage}.product-profiles",
            "topic_dead_letter": f"{base['topic_orders']}.{stage}.dead-letter",
            "redis_prefix": prefix,
            "checkpoint_dir": self.workdir / "checkpoints" / stage,
            **changes,
        }
        settings = load_settings(**values)
        from storeml.connectors.kafka_admin import ensure_topics

        ensure_topics(settings.kafka_config(), settings.topics, settings.topic_partitions)
        return settings

    def stop(self, keep_workdir: bool) -> None:
        """Stop what we started, delete our Redis keys, remove the work folder."""
        with contextlib.suppress(Exception):
            _delete_redis_keys(self.settings_kwargs["redis_url"], self.prefixes)
        if self.redis_server is not None:
            self.redis_server.stop()
        self.broker.stop()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _delete_redis_keys(url: str, prefixes: list[str]) -> int:
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        for prefix in prefixes:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


def start_services(
    workdir: Path,
    *,
    max_records_per_batch: int,
    overrides: Mapping[str, str],
    partitions: int | None = None,
) -> Services:
    """Broker, Redis, MLflow store and the run's settings (input topics created)."""
    from storeml.connectors.kafka_admin import ensure_topics
    from storeml.settings import load_settings
    from storeml.stack import RedisServer, TansuBroker, init_mlflow, redis_answers

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    broker = TansuBroker(workdir=workdir / "tansu")
    broker.start()
    redis_server = None
    redis_url = DEFAULT_REDIS_URL
    if not redis_answers(DEFAULT_REDIS_URL):
        redis_server = RedisServer(workdir=workdir / "redis")
        redis_server.start()
        redis_url = redis_server.url
    mlflow_dir = workdir / "mlflow"
    tracking_uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    artifact_root = (mlflow_dir / "artifacts").as_uri()
    mlflow_started = time.perf_counter()
    init_mlflow(tracking_uri, artifact_root)
    mlflow_init_s = time.perf_counter() - mlflow_started
    kwargs: dict[str, Any] = {
        "home": workdir,
        "kafka_bootstrap": broker.bootstrap,
        "kafka_flavor": "tansu",
        "redis_url": redis_url,
        "redis_prefix": f"bench:{run_id}",
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_artifact_root": artifact_root,
        "topic_orders": f"bench.{run_id}.orders",
        "topic_products": f"bench.{run_id}.products",
        "customer_model": f"bench-{run_id}-customers",
        "product_model": f"bench-{run_id}-products",
        "max_records_per_batch": max_records_per_batch,
        "checkpoint_dir": workdir / "checkpoints" / "default",
        **({"topic_partitions": partitions} if partitions else {}),
        **overrides,
    }
    settings = load_settings(**kwargs)
    ensure_topics(
        settings.kafka_config(),
        [settings.topic_orders, settings.topic_products],
        settings.topic_partitions,
    )
    return Services(
        workdir=workdir,
        run_id=run_id,
        settings_kwargs=kwargs,
        broker=broker,
        redis_server=redis_server,
        startup_s=time.perf_counter() - started,
        mlflow_init_s=mlflow_init_s,
    )


# --- models and input ---------------------------------------------------------------------------
def train_models(settings: Any, stores: int, events: int, seed: int) -> dict[str, Any]:
    """Train and register per-store models on synthetic history; handles, time, model counts."""
    from storeml.batch.history import train_on_synthetic
    from storeml.models.store_models import get_model_cache

    started = time.perf_counter()
    handles = train_on_synthetic(settings, stores=stores, events=events, seed=seed)
    seconds = time.perf_counter() - started
    cache = get_model_cache()
    own = {
        kind: len(cache.bundle(handle, settings.tracking_uri, settings.registry_uri).stores)
        for kind, handle in handles.items()
    }
    return {
        "handles": handles,
        "seconds": seconds,
        "history_events": events,
        "store_models": own,
        "versions": {kind: f"{h.name}:{h.version}" for kind, h in handles.items()},
    }


def preload_events(
    settings: Any, stores: int, events: int, seed: int, events_per_second: float = 1_000.0
) -> dict[str, Any]:
    """Generate ``events`` synthetic events and produce them to the input topics."""
    from storeml.connectors.event_producer import produce_events
    from storeml.connectors.synthetic import GeneratorConfig, SyntheticEvent, generate

    started = time.perf_counter()
    config = GeneratorConfig(
        stores=stores, events=events, seed=seed, events_per_second=events_per_second
    )
    # keep only the bytes: the decoded records of 200k events would cost ~0.5 GB here
    messages = [
        SyntheticEvent(e.topic_kind, e.key, None, e.value, e.malformed) for e in generate(config)
    ]
    generate_s = time.perf_counter() - started
    stats = produce_events(
        settings.kafka_config(), messages, settings.topic_orders, settings.topic_products
    )
    return {
        "events": stats.sent,
        "orders": stats.orders,
        "product_events": stats.products,
        "bytes": stats.bytes,
        "generate_s": generate_s,
        "produce_s": stats.seconds,
        "produce_rate": stats.rate,
    }


# --- Spark end to end ---------------------------------------------------------------------------
def start_spark(settings: Any, spark_conf: Mapping[str, str]) -> tuple[Any, float]:
    """A local Spark session for the run and how long it took to start."""
    from storeml.streams.spark_session import get_spark

    started = time.perf_counter()
    spark = get_spark(settings, app_name="storeml-bench", **dict(spark_conf))
    return spark, time.perf_counter() - started


def _sum_stages(reports: list[Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for report in reports:
        for name, seconds in report.stages.items():
            totals[name] = totals.get(name, 0.0) + float(seconds)
    return totals


def _count_keys(url: str, prefix: str, kind: str) -> int:
    import redis

    from storeml.connectors.redis_sink import profile_pattern

    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=profile_pattern(prefix, kind), count=5000))
    finally:
        client.close()


def run_spark(spark: Any, settings: Any, expected: int, timeout: float) -> dict[str, Any]:
    """The enrichment stream with availableNow over the pre-loaded input."""
    from storeml.streams.enrich import start_enrichment

    marks: list[float] = []
    started = time.perf_counter()
    query, handler = start_enrichment(
        spark, settings, available_now=True, on_batch=lambda _r: marks.append(time.perf_counter())
    )
    finished = query.awaitTermination(timeout)
    ended = time.perf_counter()
    if not finished:
        query.stop()
        raise BenchError(f"the Spark stream did not finish {expected} events within {timeout:.0f}s")
    if query.exception() is not None:
        raise BenchError(f"the Spark stream failed: {query.exception()}")
    reports = list(handler.reports)
    events = sum(r.events for r in reports)
    if events != expected:
        raise BenchError(f"the Spark stream read {events} events, {expected} were pre-loaded")
    wall = ended - started
    out: dict[str, Any] = {
        "events": events,
        "wall_s": wall,
        "rate": _rate(events, wall),
        "batches": len(reports),
        "batch_events": [r.events for r in reports],
        "batch_seconds": [round(r.seconds, 3) for r in reports],
        "foreach_batch_s": sum(r.seconds for r in reports),
        "stages_s": _sum_stages(reports),
        "first_batch_s": marks[0] - started if marks else None,
        "customers_written": sum(r.customers for r in reports),
        "products_written": sum(r.products for r in reports),
        "dead_letters": sum(r.dead_letters for r in reports),
        "redis_customers": _count_keys(settings.redis_url, settings.redis_prefix, "customer"),
        "redis_products": _count_keys(settings.redis_url, settings.redis_prefix, "product"),
    }
    if len(reports) > 1:
        steady_events = events - reports[0].events
        steady_s = ended - marks[0]
        out.update(
            steady_events=steady_events,
            steady_s=steady_s,
            steady_rate=_rate(steady_events, steady_s),
            steady_stages_s=_sum_stages(reports[1:]),
        )
    else:
        out.update(steady_events=None, steady_s=None, steady_rate=None, steady_stages_s=None)
    out["triggers"] = _triggers(query)
    out["trigger_ms"] = _trigger_phases(out["triggers"])
    return out


def _triggers(query: Any) -> list[dict[str, Any]]:
    """Spark's recent triggers: input rows and milliseconds per phase (``durationMs``)."""
    return [
        {"rows": t.get("numInputRows"), **(t.get("durationMs") or {})} for t in query.recentProgress
    ]


def _trigger_phases(triggers: list[dict[str, Any]]) -> dict[str, float]:
    """Median milliseconds per phase of the :func:`_triggers` that read data.

    ``addBatch`` is our foreachBatch; ``latestOffset`` asks the broker for the end offsets;
    ``walCommit``/``commitOffsets`` write the checkpoint's offset and commit logs;
    ``triggerExecution`` is the whole trigger.
    """
    phases: dict[str, list[float]] = {}
    for trigger in triggers:
        if not trigger["rows"]:
            continue
        for name, ms in trigger.items():
            if name != "rows":
                phases.setdefault(name, []).append(float(ms))
    return {name: round(statistics.median(values), 1) for name, values in sorted(phases.items())}


# --- baselines: shared pieces -------------------------------------------------------------------
_BASELINE_CONSUMER: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "fetch.queue.backoff.ms": 5,  # the default (1000) stalls fetches on this broker
    "fetch.wait.max.ms": 100,
    "fetch.max.bytes": 52_428_800,
}


@contextlib.contextmanager
def _assigned_consumer(settings: Any) -> Iterator[Any]:
    """A consumer assigned to every input partition from offset 0 (no group join)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        settings.kafka_config(**{**_BASELINE_CONSUMER, "group.id": f"bench-{uuid.uuid4().hex}"})
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        assignment = [
            TopicPartition(topic, partition, 0)
            for topic in (settings.topic_orders, settings.topic_products)
            for partition in sorted(metadata.topics[topic].partitions)
        ]
        consumer.assign(assignment)
        yield consumer
    finally:
        consumer.close()


def _bundles(handles: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """Opened bundles from a freshly cleared process cache (so each run loads models cold)."""
    from storeml.models.store_models import get_model_cache

    cache = get_model_cache(settings.model_cache_size)
    cache.clear()
    return {
        kind: cache.bundle(handle, settings.tracking_uri, settings.registry_uri)
        for kind, handle in handles.items()
    }


# --- baseline A: one event at a time ------------------------------------------------------------
@dataclass
class _Customer:
    version: int = 0
    orders: int = 0
    spend: int = 0
    first: int | None = None
    last: int | None = None
    last_event: int = 0
    views: int = 0
    categories: dict[str, int] = field(default_factory=dict)


@dataclass
class _Product:
    version: int = 0
    views: int = 0
    orders: int = 0
    units: int = 0
    revenue: int = 0
    last_event: int = 0
    attr_position: tuple[int, str, int, int] | None = None
    title: str | None = None
    description: str | None = None
    price_minor: int | None = None
    category: str | None = None


def _customer_record(
    store: str, customer: str, c: _Customer, source: dict[str, Any]
) -> dict[str, Any]:
    from storeml.models.profiles import MS_PER_DAY, TOP_CATEGORIES

    ranked = sorted(c.categories.items(), key=lambda item: (-item[1], item[0]))[:TOP_CATEGORIES]
    tops = [
        {"category": cat, "spend_minor": spend, "share": spend / c.spend if c.spend else 0.0}
        for cat, spend in ranked
    ]
    return {
        "store_id": store,
        "customer_id": customer,
        "profile_version": c.version,
        "order_count": c.orders,
        "total_spend_minor": c.spend,
        "avg_order_value_minor": c.spend / c.orders if c.orders else None,
        "first_order_time": c.first,
        "last_order_time": c.last,
        "last_event_time": c.last_event,
        "days_since_last_order": (
            (c.last_event - c.last) / MS_PER_DAY if c.last is not None else None
        ),
        "top_categories": tops,
        "product_views": c.views,
        "propensity": None,
        "model": None,
        "source": [source],
    }


def _customer_feature_row(record: Mapping[str, Any]) -> np.ndarray:
    """``models.scoring.customer_features`` of one profile dict, without building a DataFrame."""
    from storeml.models.scoring import NO_ORDER_DAYS

    orders = float(record["order_count"])
    first = record["first_order_time"]
    active = (record["last_event_time"] - first) / 86_400_000.0 if first is not None else 0.0
    since = record["days_since_last_order"]
    tops = record["top_categories"]
    return np.array(
        [
            [
                orders,
                math.log1p(max(record["total_spend_minor"], 0)),
                math.log1p(max(record["avg_order_value_minor"] or 0.0, 0.0)),
                since if since is not None else NO_ORDER_DAYS,
                max(active, 0.0),
                1.0 if orders > 0 else 0.0,
                math.log1p(max(record["product_views"], 0)),
                float(len(tops)),
                float(tops[0]["share"]) if tops else 0.0,
            ]
        ]
    )


def run_baseline_a(
    settings: Any, handles: Mapping[str, Any], limit: int, timeout: float = 60.0
) -> dict[str, Any]:
    """The naive loop: per event decode, fold into dicts, predict, encode, produce, HSET."""
    import pandas as pd
    import redis

    from storeml.connectors.kafka_sink import KafkaRecordSink
    from storeml.connectors.redis_sink import encode_fields, profile_key
    from storeml.models.events import validate_order, validate_product
    from storeml.models.scoring import TOP_K, customer_features
    from storeml.schemas.codec import get_codec
    from storeml.streams.publish import profile_headers

    order_codec, product_codec = get_codec("order_event"), get_codec("product_event")
    customer_codec, product_profile_codec = (
        get_codec("customer_profile"),
        get_codec("product_profile"),
    )
    customer_schema = f"customer_profile/v{customer_codec.version}"
    product_schema = f"product_profile/v{product_profile_codec.version}"
    customer_handle, product_handle = handles.get("customer"), handles.get("product")
    customers: dict[tuple[str, str], _Customer] = {}
    products: dict[tuple[str, str], _Product] = {}
    producer = KafkaRecordSink(settings.kafka_config())
    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.redis_prefix
    checked = 0
    counts = {"events": 0, "predicts": 0, "records": 0, "hsets": 0}

    started = time.perf_counter()
    bundles = _bundles(handles, settings)
    customer_bundle, product_bundle = bundles.get("customer"), bundles.get("product")

    def publish(kind: str, record: dict[str, Any], entity: str) -> None:
        codec, topic, schema = (
            (customer_codec, settings.topic_customer_profiles, customer_schema)
            if kind == "customer"
            else (product_profile_codec, settings.topic_product_profiles, product_schema)
        )
        key = f"{record['store_id']}|{record[entity]}".encode()
        producer.produce(topic, key, codec.encode(record), profile_headers(record, schema))
        fields = encode_fields(record)
        client.hset(
            profile_key(prefix, kind, record["store_id"], record[entity]),
            mapping=dict(zip(fields[::2], fields[1::2], strict=True)),
        )
        counts["records"] += 1
        counts["hsets"] += 1

    def score_customer(store: str, customer: str, c: _Customer, source: dict[str, Any]) -> None:
        nonlocal checked
        record = _customer_record(store, customer, c, source)
        estimator, scope = (
            customer_bundle.model_for(store) if customer_bundle is not None else (None, "none")
        )
        if estimator is not None:
            row = _customer_feature_row(record)
            if checked < 50:  # the hand-written row must equal the shared feature code
                shared = customer_features(pd.DataFrame([record])).to_numpy(dtype="float64")
                if not np.allclose(row, shared):
                    raise BenchError(f"baseline A features {row} differ from {shared}")
                checked += 1
            proba = estimator.predict_proba(row)
            classes = list(estimator.classes_)
            record["propensity"] = float(proba[0, classes.index(1)])
            counts["predicts"] += 1
        else:
            scope = "none"
        version = customer_handle.version if customer_handle is not None else None
        record["model"] = {"name": settings.customer_model, "version": version, "scope": scope}
        publish("customer", record, "customer_id")

    def score_product(store: str, product: str, p: _Product, source: dict[str, Any]) -> None:
        record = {
            "store_id": store,
            "product_id": product,
            "profile_version": p.version,
            "views": p.views,
            "order_count": p.orders,
            "units": p.units,
            "revenue_minor": p.revenue,
            "title": p.title,
            "description": p.description,
            "price_minor": p.price_minor,
            "category": p.category,
            "last_event_time": p.last_event,
            "predicted_categories": [],
            "model": None,
            "source": [source],
        }
        scope = "none"
        text = f"{p.title or ''} {p.description or ''}".strip()
        if product_bundle is not None and p.category is None and text:
            estimator, scope = product_bundle.model_for(store)
            if estimator is not None:
                proba = estimator.predict_proba([text])[0]
                classes = estimator.classes_
                best = np.argsort(-proba, kind="stable")[: min(TOP_K, len(proba))]
                record["predicted_categories"] = [
                    {"category": str(classes[j]), "probability": float(proba[j]), "rank": rank}
                    for rank, j in enumerate(best.tolist())
                ]
                counts["predicts"] += 1
            else:
                scope = "none"
        version = product_handle.version if product_handle is not None else None
        record["model"] = {"name": settings.product_model, "version": version, "scope": scope}
        publish("product", record, "product_id")

    last_progress = time.monotonic()
    with _assigned_consumer(settings) as consumer:
        while counts["events"] < limit:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() - last_progress > timeout:
                    raise BenchError(f"baseline A: no record for {timeout:.0f}s")
                continue
            if message.error():
                raise BenchError(f"baseline A: consumer error {message.error()}")
            last_progress = time.monotonic()
            counts["events"] += 1
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            source = {
                "topic": topic,
                "partition": partition,
                "first_offset": offset,
                "last_offset": offset,
            }
            if topic == settings.topic_orders:
                record = order_codec.decode(message.value())
                if validate_order(record) is not None:
                    continue
                store, when = record["store_id"], record["event_time"]
                key = (store, record["customer_id"])
                c = customers.get(key) or customers.setdefault(key, _Customer())
                amount = 0
                touched: dict[str, tuple[int, int]] = {}
                for line in record["lines"]:
                    line_amount = line["quantity"] * line["unit_price_minor"]
                    amount += line_amount
                    if line.get("category"):
                        c.categories[line["category"]] = (
                            c.categories.get(line["category"], 0) + line_amount
                        )
                    units, revenue = touched.get(line["product_id"], (0, 0))
                    touched[line["product_id"]] = (units + line["quantity"], revenue + line_amount)
                c.version += 1
                c.orders += 1
                c.spend += amount
                c.first = when if c.first is None else min(c.first, when)
                c.last = when if c.last is None else max(c.last, when)
                c.last_event = max(c.last_event, when)
                score_customer(store, record["customer_id"], c, source)
                for product_id, (units, revenue) in touched.items():
                    pkey = (store, product_id)
                    p = products.get(pkey) or products.setdefault(pkey, _Product())
                    p.version += 1
                    p.orders += 1
                    p.units += units
                    p.revenue += revenue
                    p.last_event = max(p.last_event, when)
                    score_product(store, product_id, p, source)
            else:
                record = product_codec.decode(message.value())
                if validate_product(record) is not None:
                    continue
                store, when = record["store_id"], record["event_time"]
                pkey = (store, record["product_id"])
                p = products.get(pkey) or products.setdefault(pkey, _Product())
                p.version += 1
                p.last_event = max(p.last_event, when)
                if record["kind"] == "viewed":
                    p.views += 1
                elif record["kind"] in ("created", "updated"):
                    position = (when, topic, partition, offset)
                    if p.attr_position is None or position > p.attr_position:
                        p.attr_position = position
                        p.title, p.description = record.get("title"), record.get("description")
                        p.price_minor, p.category = (
                            record.get("price_minor"),
                            record.get("category"),
                        )
                score_product(store, record["product_id"], p, source)
                if record["kind"] == "viewed" and record.get("customer_id"):
                    key = (store, record["customer_id"])
                    c = customers.get(key) or customers.setdefault(key, _Customer())
                    c.version += 1
                    c.views += 1
                    c.last_event = max(c.last_event, when)
                    score_customer(store, record["customer_id"], c, source)
        producer.flush()
    seconds = time.perf_counter() - started
    client.close()
    return {**counts, "seconds": seconds, "rate": _rate(counts["events"], seconds)}


# --- baseline B: vectorised batches -------------------------------------------------------------
def run_baseline_b(
    settings: Any,
    handles: Mapping[str, Any],
    limit: int,
    batch_size: int,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Batches through ``models`` (facts, fold, per-store scoring), pipelined Redis writes."""
    from storeml.connectors.kafka_sink import KafkaRecordSink
    from storeml.connectors.redis_sink import RedisProfileSink
    from storeml.models.events import FactColumns, validate_order, validate_product
    from storeml.models.profiles import (
        ProfileState,
        apply_delta,
        customer_profiles,
        fold,
        product_profiles,
        to_records,
    )
    from storeml.models.scoring import score_customers, score_products
    from storeml.schemas.codec import get_codec
    from storeml.streams.publish import CUSTOMER_FIELDS, PRODUCT_FIELDS, encode_profiles

    routes = {
        settings.topic_orders: (get_codec("order_event"), validate_order, FactColumns.add_order),
        settings.topic_products: (
            get_codec("product_event"),
            validate_product,
            FactColumns.add_product,
        ),
    }
    producer = KafkaRecordSink(settings.kafka_config())
    redis_sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    state = ProfileState()
    stages = dict.fromkeys(("decode_s", "fold_s", "score_s", "encode_s", "kafka_s", "redis_s"), 0.0)
    latencies: list[float] = []
    events = records = 0

    started = time.perf_counter()
    bundles = _bundles(handles, settings)
    last_progress = time.monotonic()
    with _assigned_consumer(settings) as consumer:
        while events < limit:
            messages = consumer.consume(min(batch_size, limit - events), timeout=0.5)
            if not messages:
                if time.monotonic() - last_progress > timeout:
                    raise BenchError(f"baseline B: no record for {timeout:.0f}s")
                continue
            last_progress = time.monotonic()
            batch_started = mark = time.perf_counter()

            def lap(name: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                stages[name] += now - mark
                mark = now

            columns = FactColumns()
            for message in messages:
                if message.error():
                    raise BenchError(f"baseline B: consumer error {message.error()}")
                topic = message.topic()
                codec, validate, to_facts = routes[topic]
                record = codec.decode(message.value())
                if validate(record) is None:
                    to_facts(columns, record, topic, message.partition(), message.offset(), 0)
            events += len(messages)
            facts = columns.frame()
            lap("decode_s")
            delta = fold(state, facts)
            state = apply_delta(state, delta)
            customers = customer_profiles(state, delta, facts)
            products = product_profiles(state, delta, facts)
            lap("fold_s")
            customers = score_customers(
                customers,
                bundles.get("customer"),
                handles.get("customer"),
                model_name=settings.customer_model,
            )
            products = score_products(
                products,
                bundles.get("product"),
                handles.get("product"),
                model_name=settings.product_model,
            )
            lap("score_s")
            customer_records = to_records(customers, CUSTOMER_FIELDS)
            product_records = to_records(products, PRODUCT_FIELDS)
            encoded = encode_profiles(
                settings.topic_customer_profiles,
                settings.topic_product_profiles,
                customer_records,
                product_records,
            )
            lap("encode_s")
            for topic, key, value, headers in encoded:
                producer.produce(topic, key, value, headers)
            producer.flush()
            lap("kafka_s")
            redis_sink.write("customer", customer_records, "customer_id")
            redis_sink.write("product", product_records, "product_id")
            lap("redis_s")
            records += len(encoded)
            latencies.append(time.perf_counter() - batch_started)
    seconds = time.perf_counter() - started
    redis_sink.close()
    return {
        "events": events,
        "records": records,
        "batches": len(latencies),
        "seconds": seconds,
        "rate": _rate(events, seconds),
        "batch_p50_s": _quantile(latencies, 0.5),
        "batch_p99_s": _quantile(latencies, 0.99),
        "stages_s": stages,
        "redis_customers": _count_keys(settings.redis_url, settings.redis_prefix, "customer"),
        "redis_products": _count_keys(settings.redis_url, settings.redis_prefix, "product"),
    }


# --- latency ------------------------------------------------------------------------------------
@dataclass
class _Sample:
    key: str
    threshold: int
    sent: float = 0.0
    seen: float | None = None


def _latency_plan(
    stores: int, rate: float, seconds: float, seed: int, sample_every: int
) -> tuple[list[Any], dict[int, tuple[str, str, int]]]:
    """Events to produce and, per sampled order's index, (store, customer, versions needed).

    A customer's ``profile_version`` counts its orders and its views; the sampled order is folded
    once the version reaches the count of that customer's events produced up to it (exact when
    micro-batches take everything available, which they do below the per-batch cap).
    """
    from storeml.connectors.synthetic import GeneratorConfig, generate

    total = max(int(rate * seconds), stores * 5)
    events = list(
        generate(GeneratorConfig(stores=stores, events=total, seed=seed, events_per_second=rate))
    )
    counts: dict[tuple[str, str], int] = {}
    plan: dict[int, tuple[str, str, int]] = {}
    orders = 0
    for index, event in enumerate(events):
        record = event.record
        if record is None:
            continue
        customer = record.get("customer_id")
        if event.topic_kind == "products" and (record["kind"] != "viewed" or not customer):
            continue
        key = (record["store_id"], customer)
        counts[key] = counts.get(key, 0) + 1
        if event.topic_kind == "orders":
            if orders % sample_every == 0:
                plan[index] = (key[0], key[1], counts[key])
            orders += 1
    return events, plan


def run_latency(
    spark: Any,
    settings: Any,
    *,
    stores: int,
    rate: float,
    seconds: float,
    warmup: float,
    sample_every: int,
    seed: int,
    drain_timeout: float,
) -> dict[str, Any]:
    """Produce at a steady rate into a running stream; produce-to-Redis latency of sampled orders."""
    import redis

    from storeml.connectors.event_producer import EventProducer
    from storeml.connectors.redis_sink import profile_key
    from storeml.streams.enrich import start_enrichment

    events, plan = _latency_plan(stores, rate, seconds, seed, sample_every)
    pending: list[_Sample] = []
    done: list[_Sample] = []
    lock = threading.Lock()
    stop = threading.Event()
    poll_errors: list[str] = []

    def poller() -> None:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            while not stop.is_set():
                with lock:
                    batch = list(pending)
                if batch:
                    pipe = client.pipeline(transaction=False)
                    for sample in batch:
                        pipe.hget(sample.key, "profile_version")
                    values = pipe.execute()
                    now = time.perf_counter()
                    resolved = [
                        s
                        for s, v in zip(batch, values, strict=True)
                        if v is not None and int(v) >= s.threshold
                    ]
                    if resolved:
                        with lock:
                            for sample in resolved:
                                sample.seen = now
                                pending.remove(sample)
                                done.append(sample)
                stop.wait(0.01)
        except Exception as exc:  # reported, never hangs the run
            poll_errors.append(repr(exc))
        finally:
            client.close()

    marks: list[float] = []
    query, handler = start_enrichment(
        spark, settings, available_now=False, on_batch=lambda _r: marks.append(time.perf_counter())
    )
    thread = threading.Thread(target=poller, name="bench-latency-poller", daemon=True)
    thread.start()
    producer = EventProducer(settings.kafka_config())
    topics = {"orders": settings.topic_orders, "products": settings.topic_products}
    interval = 1.0 / rate
    # Warm the stream up first: one second's worth of events at once, then wait until a batch has
    # processed them (Python workers started, models loaded, clients connected). A stream runs for
    # days; its first micro-batch is not the steady state this run measures.
    first = min(int(rate), len(events) // 10)
    try:
        warm_started = time.perf_counter()
        for event in events[:first]:
            producer.send(topics[event.topic_kind], event.key, event.value)
        producer.flush()
        deadline = time.monotonic() + drain_timeout
        while sum(r.events for r in handler.reports) < first:
            if query.exception() is not None:
                raise BenchError(f"the Spark stream failed: {query.exception()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the stream did not process {first} warm-up events in time")
            time.sleep(0.05)
        warm_s = time.perf_counter() - warm_started
        warm_batches = len(handler.reports)
        paced = time.perf_counter()
        started = paced - first * interval  # event i is due at started + i * interval
        for index, event in enumerate(events[first:], start=first):
            due = started + index * interval
            ahead = due - time.perf_counter()
            if ahead > 0.001:
                producer.poll()
                time.sleep(ahead)
            target = plan.get(index)
            if target is not None:
                store, customer, threshold = target
                sample = _Sample(
                    profile_key(settings.redis_prefix, "customer", store, customer), threshold
                )
                sample.sent = time.perf_counter()
                producer.send(topics[event.topic_kind], event.key, event.value)
                if sample.sent - paced >= warmup:
                    with lock:
                        pending.append(sample)
            else:
                producer.send(topics[event.topic_kind], event.key, event.value)
            if index % 200 == 0:
                producer.poll()
            if query.exception() is not None:
                raise BenchError(f"the Spark stream failed: {query.exception()}")
        producer.flush()
        produced_s = time.perf_counter() - paced
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            with lock:
                if not pending:
                    break
            if query.exception() is not None:
                raise BenchError(f"the Spark stream failed: {query.exception()}")
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        producer.close()
        # stop between micro-batches: interrupting one makes Spark 4.3 print a StackOverflowError
        # from matching its long error message (harmless, but noise in the report)
        idle_by = time.monotonic() + 10
        while query.status.get("isTriggerActive") and time.monotonic() < idle_by:
            time.sleep(0.01)
        triggers = _triggers(query)
        query.stop()
        with contextlib.suppress(Exception):
            query.awaitTermination(30)
    latencies = [s.seen - s.sent for s in done if s.seen is not None]
    reports = list(handler.reports)[warm_batches:]
    return {
        "rate_target": rate,
        "events": len(events) - first,
        "warmup_events": first,
        "warmup_s": warm_s,
        "produce_s": produced_s,
        "rate_achieved": _rate(len(events) - first, produced_s),
        "samples": len(latencies),
        "unresolved": len(pending),
        "p50_s": _quantile(latencies, 0.5),
        "p90_s": _quantile(latencies, 0.9),
        "p99_s": _quantile(latencies, 0.99),
        "max_s": max(latencies) if latencies else None,
        "batches": len(reports),
        "mean_batch_events": statistics.fmean([r.events for r in reports]) if reports else None,
        "mean_batch_s": statistics.fmean([r.seconds for r in reports]) if reports else None,
        "batch_events": [r.events for r in reports],
        "batch_seconds": [round(r.seconds, 3) for r in reports],
        "batch_tasks": [r.tasks for r in reports],
        "batch_stages_s": [{k: round(v, 3) for k, v in r.stages.items()} for r in reports],
        "trigger_ms": _trigger_phases(triggers),
        "triggers": triggers,
        "poll_errors": poll_errors,
    }


# --- report -------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def format_report(results: Mapping[str, Any]) -> str:
    """The human-readable tables of a run."""
    lines: list[str] = []
    machine = results["machine"]
    lines.append(
        f"machine: {machine['cpus']} CPUs ({machine['cpus_usable']} usable), Python"
        f" {machine['python']}, PySpark {machine['pyspark']}, Spark {machine.get('spark', '-')},"
        f" load avg at start {machine['load_start']}, at end {machine.get('load_end', '-')}"
    )
    setup = results["setup"]
    lines.append(
        f"input: {setup['events']:,} events ({setup['orders']:,} orders, "
        f"{setup['product_events']:,} product events), {results['args']['stores']:,} stores;"
        f" generated in {setup['generate_s']:.1f}s, produced in {setup['produce_s']:.1f}s"
        f" ({setup['produce_rate']:,.0f} events/s)"
    )
    train = results["train"]
    lines.append(
        f"models: trained + registered in {train['seconds']:.1f}s on {train['history_events']:,}"
        f" history events; own store models {train['store_models']} (others use the global model)"
    )
    cache = results.get("bytecode_cache") or {}
    lines.append(
        f"bytecode cache: {cache.get('folder') or 'off'} (environment before:"
        f" {cache.get('environment_before')})"
    )
    lines.append(
        f"services up in {results['services']['startup_s']:.1f}s (MLflow store init"
        f" {results['services']['mlflow_init_s']:.1f}s)"
        + (
            f"; Spark session start {results['spark_start_s']:.1f}s (not counted)"
            if results.get("spark_start_s") is not None
            else ""
        )
    )
    lines.append("")
    spark, a, b = results.get("spark"), results.get("baseline_a"), results.get("baseline_b")
    rate_a = a["rate"] if a else None
    rate_b = b["rate"] if b else None
    header = (
        f"{'stage':<34}{'events':>10}{'seconds':>10}{'events/s':>12}{'vs B':>8}{'vs A':>8}"
        f"  target met"
    )
    lines.append(header)
    lines.append("-" * len(header))

    def row(
        name: str,
        events: int | None,
        seconds: float | None,
        rate: float | None,
        target: bool | None,
    ) -> None:
        lines.append(
            f"{name:<34}{_fmt(events, 0):>10}{_fmt(seconds, 2):>10}{_fmt(rate, 0):>12}"
            f"{_ratio(rate, rate_b):>8}{_ratio(rate, rate_a):>8}  {_yes(target)}"
        )

    if spark:
        for label, events, seconds, rate in (
            ("spark e2e (incl. first batch)", spark["events"], spark["wall_s"], spark["rate"]),
            (
                "spark e2e steady (excl. first)",
                spark["steady_events"],
                spark["steady_s"],
                spark["steady_rate"],
            ),
        ):
            target = None
            if rate is not None:
                target = rate >= TARGET_EVENTS_PER_S and (rate_b is None or rate >= rate_b)
            row(label, events, seconds, rate, target)
    if a:
        row("baseline A: per-event loop", a["events"], a["seconds"], a["rate"], None)
    if b:
        row(
            f"baseline B: {results['args']['baseline_b_batch']:,}-event batches",
            b["events"],
            b["seconds"],
            b["rate"],
            None,
        )
    lines.append(f"target: spark >= {TARGET_EVENTS_PER_S:,.0f} events/s and >= baseline B")
    latency = results.get("latency")
    if latency:
        lines.append("")
        ok = latency["p99_s"] is not None and latency["p99_s"] < TARGET_P99_S
        ok = ok and latency["unresolved"] == 0
        lines.append(
            f"latency at {latency['rate_target']:,.0f} events/s (achieved"
            f" {_fmt(latency['rate_achieved'], 0)}): p50 {_fmt(latency['p50_s'], 2, ' s')},"
            f" p90 {_fmt(latency['p90_s'], 2, ' s')}, p99 {_fmt(latency['p99_s'], 2, ' s')},"
            f" max {_fmt(latency['max_s'], 2, ' s')} over {latency['samples']} sampled orders"
            f" ({latency['unresolved']} unresolved); {latency['batches']} micro-batches of"
            f" {_fmt(latency['mean_batch_events'], 0)} events / {_fmt(latency['mean_batch_s'], 2)}"
            f" s on average (after a warm-up of {latency['warmup_events']:,} events,"
            f" {latency['warmup_s']:.1f} s, and {results['args']['latency_warmup']:g} s of"
            f" samples discarded); target p99 < {TARGET_P99_S:g} s met: {_yes(ok)}"
        )
    for label, run in (("spark e2e", spark), ("latency run", latency)):
        if run and run.get("trigger_ms"):
            phases = ", ".join(f"{k} {v:,.0f}" for k, v in run["trigger_ms"].items())
            lines.append(f"{label}: median ms per trigger with data (Spark's durationMs): {phases}")
    stage_rows = []
    if spark:
        stage_rows.append(("spark (all batches, summed over tasks)", spark["stages_s"]))
        if spark.get("steady_stages_s"):
            stage_rows.append(("spark (steady batches)", spark["steady_stages_s"]))
    if b:
        stage_rows.append(("baseline B", b["stages_s"]))
    if stage_rows:
        names = [
            "resolve_models_s",
            "plan_s",
            "decode_s",
            "state_s",
            "lake_s",
            "fold_s",
            "score_s",
            "encode_s",
            "kafka_s",
            "redis_s",
        ]
        lines.append("")
        head = f"{'per-stage seconds':<40}" + "".join(f"{n[:-2]:>9}" for n in names)
        lines.append(head)
        lines.append("-" * len(head))
        for label, stages in stage_rows:
            lines.append(f"{label:<40}" + "".join(f"{_fmt(stages.get(n), 2):>9}" for n in names))
    if spark:
        lines.append("")
        lines.append(
            f"spark: {spark['batches']} micro-batches {spark['batch_events']}; foreachBatch"
            f" seconds {spark['batch_seconds']} (sum {spark['foreach_batch_s']:.1f}s of"
            f" {spark['wall_s']:.1f}s wall); first batch done after"
            f" {_fmt(spark['first_batch_s'], 1, ' s')}; profiles written"
            f" {spark['customers_written']:,} customer / {spark['products_written']:,} product;"
            f" Redis keys {spark['redis_customers']:,} / {spark['redis_products']:,}"
        )
    if b:
        lines.append(
            f"baseline B: {b['batches']} batches, batch latency p50"
            f" {_fmt(b['batch_p50_s'], 3, ' s')}, p99 {_fmt(b['batch_p99_s'], 3, ' s')};"
            f" Redis keys {b['redis_customers']:,} / {b['redis_products']:,}"
        )
    if a:
        lines.append(
            f"baseline A: {a['predicts']:,} predict_proba calls, {a['records']:,} profiles"
            f" produced, {a['hsets']:,} HSETs"
        )
    return "\n".join(lines)


# --- driver -------------------------------------------------------------------------------------
def add_world_options(
    parser: argparse.ArgumentParser, *, events: int, train_events: int | None, train_help: str
) -> None:
    """The options the stream benchmarks share: the synthetic world, the stream, the output."""
    add = parser.add_argument
    add("--events", type=int, default=events, help="events pre-loaded")
    add("--stores", type=int, default=1_000, help="stores in the synthetic world")
    add("--seed", type=int, default=7, help="generator seed (history for training uses seed+1000)")
    add("--train-events", type=int, default=train_events, help=train_help)
    add("--max-records-per-batch", type=int, default=50_000, help="stream micro-batch cap")
    add("--timeout", type=float, default=1_800.0, help="limit of the stream run (s)")
    add(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra storeml setting for the stream (e.g. state_buckets=4); repeatable",
    )
    add(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark property (e.g. spark.sql.shuffle.partitions=4); repeatable",
    )
    add("--json", type=Path, default=None, help="also write the results as JSON here")
    add("--keep-temp", action="store_true", help="keep the temporary work folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_world_options(
        parser,
        events=200_000,
        train_events=None,
        train_help="synthetic history events to train on (default: --events)",
    )
    add = parser.add_argument
    add("--partitions", type=int, default=None, help="input topic partitions (default: settings)")
    add(
        "--baseline-a-events",
        type=int,
        default=30_000,
        help="events the per-event baseline processes (the first ones read)",
    )
    add("--baseline-b-batch", type=int, default=5_000, help="events per batch of baseline B")
    add("--latency-rate", type=float, default=2_000.0, help="events/s produced in the latency run")
    add(
        "--latency-seconds", type=float, default=30.0, help="how long to produce in the latency run"
    )
    add(
        "--latency-warmup",
        type=float,
        default=5.0,
        help="seconds at the start of the paced production whose samples are discarded (the"
        " stream is warmed up with one second's worth of events before that)",
    )
    add(
        "--latency-sample-every",
        type=int,
        default=20,
        help="sample every N-th order for the latency measurement",
    )
    add(
        "--latency-drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the last samples after producing",
    )
    add(
        "--seed-entities",
        type=int,
        default=0,
        help="customers put into the state of the Spark and latency runs before they start"
        " (e.g. 1000000: the same runs with a million entities already in state)",
    )
    add("--skip-latency", action="store_true", help="skip the latency run")
    add("--skip-baselines", action="store_true", help="skip baselines A and B")
    add("--skip-spark", action="store_true", help="skip the Spark end-to-end run")
    add(
        "--bytecode-cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "storeml-bench-pycache",
        help="PYTHONPYCACHEPREFIX for this run and its Spark workers (see use_bytecode_cache)",
    )
    add(
        "--no-bytecode-cache",
        action="store_true",
        help="leave PYTHONDONTWRITEBYTECODE / PYTHONPYCACHEPREFIX as they are",
    )
    return parser


def _machine() -> dict[str, Any]:
    import pyspark

    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyspark": pyspark.__version__,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def use_bytecode_cache(folder: Path | None) -> dict[str, Any]:
    """Let this process and every Python it starts (Spark workers) cache compiled bytecode.

    With ``PYTHONDONTWRITEBYTECODE=1`` and a virtualenv installed without ``.pyc`` files (uv's
    default), every new Python process compiles pandas, scikit-learn, pyarrow... from source:
    about 7 s of CPU per Spark Python worker, several workers per run. A ``PYTHONPYCACHEPREFIX``
    folder outside the virtualenv caches the bytecode without writing into it. ``folder`` None
    leaves the environment as it is.
    """
    before = {
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX"),
    }
    if folder is None:
        return {"folder": None, "environment_before": before}
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    sys.dont_write_bytecode = False
    sys.pycache_prefix = str(folder)
    return {"folder": str(folder), "environment_before": before}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage of the benchmark; returns the results (as written with ``--json``)."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": _machine(),
        "bytecode_cache": use_bytecode_cache(
            None if args.no_bytecode_cache else args.bytecode_cache
        ),
    }
    overrides = _kv(args.settings, "--set")
    spark_conf = _kv(args.spark_conf, "--spark-conf")
    workdir = Path(tempfile.mkdtemp(prefix="storeml-bench-"))
    _say(f"work folder {workdir}; starting services")
    services = start_services(
        workdir,
        max_records_per_batch=args.max_records_per_batch,
        overrides=overrides,
        partitions=args.partitions,
    )
    spark = None
    try:
        results["services"] = {
            "startup_s": services.startup_s,
            "mlflow_init_s": services.mlflow_init_s,
            "kafka": services.settings_kwargs["kafka_bootstrap"],
            "redis": services.settings_kwargs["redis_url"],
        }
        base = services.settings_for("train")
        train_events = args.train_events or args.events
        _say(f"training per-store models ({args.stores} stores, {train_events:,} history events)")
        train = train_models(base, args.stores, train_events, args.seed)
        handles = train.pop("handles")
        results["train"] = train
        _say(f"trained in {train['seconds']:.1f}s; own store models {train['store_models']}")
        _say(f"pre-loading {args.events:,} events")
        results["setup"] = preload_events(base, args.stores, args.events, args.seed)
        _say(
            f"produced {results['setup']['events']:,} events at"
            f" {results['setup']['produce_rate']:,.0f}/s"
        )
        expected = results["setup"]["events"]

        if not args.skip_baselines:
            _say("baseline B (vectorised batches)")
            results["baseline_b"] = run_baseline_b(
                services.settings_for("baseline-b"), handles, expected, args.baseline_b_batch
            )
            _say(f"baseline B: {results['baseline_b']['rate']:,.0f} events/s")
            limit = min(args.baseline_a_events, expected)
            _say(f"baseline A (per event, first {limit:,} events)")
            results["baseline_a"] = run_baseline_a(
                services.settings_for("baseline-a"), handles, limit
            )
            _say(f"baseline A: {results['baseline_a']['rate']:,.0f} events/s")

        if not (args.skip_spark and args.skip_latency):
            _say("starting Spark")
            spark, results["spark_start_s"] = start_spark(base, spark_conf)
            results["machine"]["spark"] = spark.version
            results["spark_conf"] = spark_conf
            results["settings_overrides"] = overrides
        if not args.skip_spark:
            _say("Spark end to end (availableNow)")
            spark_settings = services.settings_for("spark")
            results["seeded"] = _seed(spark_settings, args)
            results["spark"] = run_spark(spark, spark_settings, expected, args.timeout)
            _say(
                f"Spark: {results['spark']['rate']:,.0f} events/s, steady"
                f" {_fmt(results['spark']['steady_rate'], 0)}"
            )
        if not args.skip_latency:
            _say(
                f"latency: {args.latency_rate:,.0f} events/s for {args.latency_seconds:g}s into a"
                " running stream"
            )
            latency_settings = services.settings_for(
                "latency",
                topic_orders=f"bench.{services.run_id}.latency.orders",
                topic_products=f"bench.{services.run_id}.latency.products",
                trigger_seconds=0.0,
                starting_offsets="earliest",  # fresh, empty topics: earliest is the current end
            )
            results["latency_seeded"] = _seed(latency_settings, args)
            results["latency"] = run_latency(
                spark,
                latency_settings,
                stores=args.stores,
                rate=args.latency_rate,
                seconds=args.latency_seconds,
                warmup=args.latency_warmup,
                sample_every=args.latency_sample_every,
                seed=args.seed + 1,
                drain_timeout=args.latency_drain_timeout,
            )
            _say(
                f"latency p50 {_fmt(results['latency']['p50_s'], 2)} s,"
                f" p99 {_fmt(results['latency']['p99_s'], 2)} s"
            )
    finally:
        results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        if spark is not None:
            with contextlib.suppress(Exception):
                spark.stop()
        services.stop(args.keep_temp)
    return results


def _seed(settings: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """``--seed-entities`` customers into a run's fresh state (None without the option)."""
    if not args.seed_entities:
        return None
    from bench.seeding import seed_state

    seeded = seed_state(settings, args.stores, args.seed_entities, int(time.time() * 1000))
    _say(f"seeded {seeded['seeded']:,} customers into the state in {seeded['seed_s']:.1f}s")
    return seeded


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic", "py4j", "storeml"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    results = run(args)
    emit(results, format_report(results), args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
