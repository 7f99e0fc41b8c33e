"""End to end on real services: broker -> Spark stream -> Kafka + Redis, with models from MLflow.

* values checked against an independent plain-pandas computation of the same profiles;
* malformed events land in the dead-letter topic with their reason, and the stream goes on;
* a ``kill -9`` of the stream process mid-run, then a restart, leaves Redis and the enriched topic
  as an uninterrupted run does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.redis_sink import FeatureStore
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.errors import CodecError
from storeml.models.events import ORDER, PRODUCT, validate_order, validate_product
from storeml.schemas.codec import get_codec
from storeml.settings import Settings
from tests.reference import assert_profiles_match, reference_profiles

pytestmark = pytest.mark.slow


def produce(settings: Settings, config: GeneratorConfig) -> list[Any]:
    ensure_topics(settings.kafka_config(), settings.topics, 3)
    events = list(generate(config))
    produce_events(settings.kafka_config(), events, settings.topic_orders, settings.topic_products)
    return events


def input_events(settings: Settings) -> tuple[list[tuple[str, dict, str, int, int]], list[tuple]]:
    """The produced input as the broker holds it: (good events with coordinates, bad messages),
    judged with each record's Kafka timestamp, as the stream does."""
    method = watermark_method_for(settings.kafka_flavor)
    future_ms = int(settings.max_event_future_seconds * 1000)
    good: list[tuple[str, dict, str, int, int]] = []
    bad: list[tuple] = []
    for topic, kind, schema, validate in (
        (settings.topic_orders, ORDER, "order_event", validate_order),
        (settings.topic_products, PRODUCT, "product_event", validate_product),
    ):
        for r in read_all(settings.kafka_config(), topic, method):
            try:
                record = get_codec(schema).decode(r.value)
            except CodecError:
                bad.append((topic, r.partition, r.offset))
                continue
            if validate(record, r.timestamp_ms, future_ms) is not None:
                bad.append((topic, r.partition, r.offset))
            else:
                good.append((kind, record, topic, r.partition, r.offset))
    return good, bad


def latest_from_topic(settings: Settings, topic: str, id_field: str, schema: str) -> dict:
    """Latest record per (store, entity) by profile_version, plus all (key, version) pairs seen."""
    codec = get_codec(schema)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_all(settings.kafka_config(), topic, watermark_method_for(settings.kafka_flavor)):
        record = codec.decode(r.value)
        headers = dict(r.headers)
        assert int(headers["storeml.profile_version"]) == record["profile_version"]
        assert headers["storeml.schema"].startswith(schema.encode())
        key = (record["store_id"], record[id_field])
        assert r.key == f"{key[0]}|{key[1]}".encode()
        if key not in latest or record["profile_version"] >= latest[key]["profile_version"]:
            latest[key] = record
    return latest


def variant(base: Settings, name: str, tmp_path: Path) -> Settings:
    """``base`` with its own output topics, Redis prefix and checkpoint (same input topics)."""
    s = base.model_copy(
        update={
            "topic_customer_profiles": f"{base.topic_customer_profiles}.{name}",
            "topic_product_profiles": f"{base.topic_product_profiles}.{name}",
            "topic_dead_letter": f"{base.topic_dead_letter}.{name}",
            "redis_prefix": f"{base.redis_prefix}:{name}",
            "checkpoint_dir": tmp_path / name,
        }
    )
    ensure_topics(s.kafka_config(), s.topics, 3)
    return s


def redis_profiles(settings: Settings, kind: str) -> dict[str, dict[str, Any]]:
    """Every hash of ``kind`` (key without the prefix), without ``written_at`` (a wall clock)."""
    store = FeatureStore(settings.redis_url, settings.redis_prefix)
    out = {}
    for key in store.scan(kind):
        raw = store._client.hgetall(key)  # noqa: SLF001 - test reads the raw hash
        out[key[len(settings.redis_prefix) :]] = {
            k.decode(): v.decode() for k, v in raw.items() if k != b"written_at"
        }
    return out


def redis_indexes(settings: Settings) -> dict[str, dict[str, float]]:
    """Every score index set under the prefix (key without the prefix -> member -> score)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.redis_prefix
    try:
        keys = client.scan_iter(match=f"{prefix}:{{*}}:index:*", count=5000)
        return {
            key.decode()[len(prefix) :]: {
                m.decode(): score for m, score in client.zrange(key, 0, -1, withscores=True)
            }
            for key in keys
        }
    finally:
        client.close()


def test_stream_matches_plain_pandas_and_dead_letters(spark: Any, settings: Settings) -> None:
    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 2_500})
    handles = train_on_synthetic(settings, stores=6, events=6_000, seed=11)
    produce(settings, GeneratorConfig(stores=6, events=8_000, seed=5, malformed_fraction=0.01))
    good, bad = input_events(settings)
    assert bad, "the generator should have injected malformed messages"

    query, handler = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None
    assert len(handler.reports) >= 3, "expected several micro-batches under the cap"
    assert sum(r.events for r in handler.reports) == len(good) + len(bad)
    assert sum(r.dead_letters for r in handler.reports) == len(bad)

    want_c, want_p = reference_profiles(good)
    got_c = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    got_p = latest_from_topic(
        settings, settings.topic_product_profiles, "product_id", "product_profile"
    )
    assert_profiles_match(got_c, want_c)
    assert_profiles_match(got_p, want_p)

    # every record says which model version scored it; uncategorised products get 5 ranked guesses
    versions = {handles["customer"].version}
    assert {r["model"]["version"] for r in got_c.values()} == versions
    assert {r["model"]["scope"] for r in got_c.values()} <= {"store", "global"}
    assert all(0.0 <= r["propensity"] <= 1.0 for r in got_c.values())
    uncategorised = [p for p in got_p.values() if p["category"] is None and p["title"]]
    assert uncategorised
    for p in uncategorised:
        assert [c["rank"] for c in p["predicted_categories"]] == [0, 1, 2, 3, 4]
        probs = [c["probability"] for c in p["predicted_categories"]]
        assert probs == sorted(probs, reverse=True)
    assert all(not p["predicted_categories"] for p in got_p.values() if p["category"])

    # Redis holds the latest profile of every entity
    redis_c = redis_profiles(settings, "customer")
    assert len(redis_c) == len(want_c)
    for (store, customer), record in got_c.items():
        stored = redis_c[f":{{{store}}}:customer:{customer}"]
        assert int(stored["profile_version"]) == record["profile_version"]
        assert int(stored["total_spend_minor"]) == record["total_spend_minor"]
    assert len(redis_profiles(settings, "product")) == len(want_p)

    # dead letters: one per bad message, with the reason and the original bytes
    letters = [
        get_codec("dead_letter").decode(r.value)
        for r in read_all(
            settings.kafka_config(),
            settings.topic_dead_letter,
            watermark_method_for(settings.kafka_flavor),
        )
    ]
    assert sorted(
        (d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters
    ) == sorted(bad)
    assert {d["stage"] for d in letters} <= {"decode", "validate"}
    assert all(d["reason"] and d["value"] is not None for d in letters)


# --- crash and restart ----------------------------------------------------------------------------
def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREML_")}
    values = {
        "home": settings.home,
        "kafka_bootstrap": settings.kafka_bootstrap,
        "kafka_flavor": settings.kafka_flavor,
        "redis_url": settings.redis_url,
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow_artifact_root": settings.artifact_root,
        "topic_orders": settings.topic_orders,
        "topic_products": settings.topic_products,
        "topic_customer_profiles": settings.topic_customer_profiles,
        "topic_product_profiles": settings.topic_product_profiles,
        "topic_dead_letter": settings.topic_dead_letter,
        "redis_prefix": settings.redis_prefix,
        "checkpoint_dir": settings.checkpoint_path,
        "customer_model": settings.customer_model,
        "product_model": settings.product_model,
        "max_records_per_batch": settings.max_records_per_batch,
    }
    env.update({f"STOREML_{k.upper()}": str(v) for k, v in values.items()})
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stream(settings: Settings, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "storeml.cli", "stream", "run", *args],
        env=_env(settings),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill -9 takes the JVM down with it
    )


def _committed(checkpoint: Path) -> int:
    commits = checkpoint / "commits"
    return len([p for p in commits.iterdir() if p.name.isdigit()]) if commits.exists() else 0


def test_kill_9_mid_run_then_restart_equals_uninterrupted(
    settings: Settings, tmp_path: Path
) -> None:
    from storeml.batch.history import train_on_synthetic

    base = settings.model_copy(update={"max_records_per_batch": 1_500})
    train_on_synthetic(base, stores=5, events=5_000, seed=21)
    produce(base, GeneratorConfig(stores=5, events=12_000, seed=9, malformed_fraction=0.005))

    crashed, clean = variant(base, "crashed", tmp_path), variant(base, "clean", tmp_path)
    log = tmp_path / "stream.log"

    # run, and kill -9 the whole process group once two micro-batches have committed
    proc = _stream(crashed, log=log)
    deadline = time.monotonic() + 300
    while _committed(crashed.checkpoint_path) < 2:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _committed(crashed.checkpoint_path)
    # restart from the checkpoint and run until caught up
    restart = _stream(crashed, "--available-now", log=log)
    assert restart.wait(600) == 0, log.read_text()[-3000:]
    # the same input, uninterrupted
    uninterrupted = _stream(clean, "--available-now", log=log)
    assert uninterrupted.wait(600) == 0, log.read_text()[-3000:]
    assert _committed(crashed.checkpoint_path) > killed_at

    # Redis: exactly the same hashes
    for kind in ("customer", "product"):
        got, want = redis_profiles(crashed, kind), redis_profiles(clean, kind)
        assert len(want) > 0
        assert got == want, kind
    assert redis_indexes(crashed) == redis_indexes(clean)  # and the same score index

    # topic: the same latest record per key; replays only repeat (key, version) pairs already seen
    for topic_attr, id_field, schema in (
        ("topic_customer_profiles", "customer_id", "customer_profile"),
        ("topic_product_profiles", "product_id", "product_profile"),
    ):
        got = latest_from_topic(crashed, getattr(crashed, topic_attr), id_field, schema)
        want = latest_from_topic(clean, getattr(clean, topic_attr), id_field, schema)
        assert got == want, topic_attr
    dead_crashed = {
        (r.key, r.value)
        for r in read_all(
            crashed.kafka_config(),
            crashed.topic_dead_letter,
            watermark_method_for(crashed.kafka_flavor),
        )
    }
    dead_clean = {
        (r.key, r.value)
        for r in read_all(
            clean.kafka_config(), clean.topic_dead_letter, watermark_method_for(clean.kafka_flavor)
        )
    }
    assert dead_crashed == dead_clean and dead_clean


def test_a_checkpoint_resumes_with_more_and_fewer_tasks_and_equals_an_uninterrupted_run(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    """2 enrich tasks, then 4 on the same checkpoint, then 2 again: the same profiles as one run."""
    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    base = settings.model_copy(update={"max_records_per_batch": 2_000, "task_records": 100})
    train_on_synthetic(base, stores=5, events=4_000, seed=23)
    ensure_topics(base.kafka_config(), base.topics, 3)
    events = list(generate(GeneratorConfig(stores=5, events=9_000, seed=29)))
    thirds = [events[:3_000], events[3_000:6_000], events[6_000:]]

    def run(s: Settings, tasks: int) -> list[Any]:
        spark.conf.set("spark.sql.shuffle.partitions", str(tasks))
        try:
            query, handler = start_enrichment(
                spark, s.model_copy(update={"source_tasks": tasks}), available_now=True
            )
            query.awaitTermination(600)
            assert query.exception() is None
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")
        return handler.reports

    resized, whole = variant(base, "resized", tmp_path), variant(base, "whole", tmp_path)
    tasks_seen = []
    for part, tasks in zip(thirds, (2, 4, 2), strict=True):
        produce_events(base.kafka_config(), part, base.topic_orders, base.topic_products)
        tasks_seen.append({r.tasks for r in run(resized, tasks)})
    assert max(tasks_seen[1]) == 4 and max(tasks_seen[2]) == 2, tasks_seen
    run(whole, 2)

    for kind in ("customer", "product"):
        got = {
            k: {f: v for f, v in h.items() if f != "source"}
            for k, h in redis_profiles(resized, kind).items()
        }
        want = {
            k: {f: v for f, v in h.items() if f != "source"}
            for k, h in redis_profiles(whole, kind).items()
        }
        assert len(want) > 0 and got == want, kind
    assert redis_indexes(resized) == redis_indexes(whole)
    good, _ = input_events(base)
    want_c, want_p = reference_profiles(good)
    latest = latest_from_topic(
        resized, resized.topic_customer_profiles, "customer_id", "customer_profile"
    )
    assert_profiles_match(latest, want_c)


def test_idle_customers_expire_from_state_and_redis_and_come_back_afresh(
    spark: Any, settings: Settings
) -> None:
    """state_ttl_hours on a running checkpoint: idle entities leave the state (and Redis, asked)."""
    from storeml.batch.latest import export_latest_profiles
    from storeml.connectors.profile_files import read_profiles
    from storeml.connectors.synthetic import SyntheticEvent
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(
        # no model trained: serve none on purpose (a missing alias would stop the stream)
        update={
            "state_ttl_hours": 2 / 3600,
            "state_expire_redis": True,
            "serving_alias": "",
            "shadow_alias": "",
        }
    )
    first = produce(settings, GeneratorConfig(stores=3, events=1_500, seed=41))

    def run() -> list[Any]:
        query, handler = start_enrichment(spark, settings, available_now=True)
        query.awaitTermination(600)
        assert query.exception() is None
        return handler.reports

    run()
    before = redis_profiles(settings, "customer")
    order = next(e.record for e in first if e.topic_kind == "orders" and e.record)
    key = f":{{{order['store_id']}}}:customer:{order['customer_id']}"
    old = before[key]
    time.sleep(3)  # everyone is now idle for longer than the 2 s limit
    codec = get_codec("order_event")
    again = {**order, "order_id": "again-1", "event_time": order["event_time"] + 1}
    produce_events(
        settings.kafka_config(),
        [SyntheticEvent("orders", f"{order['store_id']}|x".encode(), again, codec.encode(again))],
        settings.topic_orders,
        settings.topic_products,
    )
    reports = run()
    assert sum(r.state.get("expired", 0) for r in reports) >= len(before) - 1

    # the state holds only what the last batch touched; the customer starts afresh
    export_latest_profiles(spark, settings, settings.home / "latest")
    customers = read_profiles(settings.home / "latest", "customer")
    assert [(c["store_id"], c["customer_id"]) for c in customers] == [
        (order["store_id"], order["customer_id"])
    ]
    after = redis_profiles(settings, "customer")
    assert list(after) == [key]  # the others were deleted from Redis (state_expire_redis)
    assert int(after[key]["order_count"]) == 1
    assert int(after[key]["profile_version"]) == int(old["profile_version"]) + 1
