"""Sinks against the real broker and Redis: version guard, headers, dead letters."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from storeml.connectors.dead_letter import DeadLetterSink
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.kafka_sink import KafkaRecordSink
from storeml.connectors.redis_sink import FeatureStore, RedisProfileSink, profile_key
from storeml.schemas.codec import get_codec
from storeml.settings import Settings


def _profile(version: int, spend: int, propensity: float | None) -> dict:
    return {
        "store_id": "s1",
        "customer_id": "c1",
        "profile_version": version,
        "order_count": version,
        "total_spend_minor": spend,
        "propensity": propensity,
        "top_categories": [{"category": "shoes", "spend_minor": spend, "share": 1.0}],
        "model": {"name": "m", "version": "3", "scope": "store"},
        "source": [],
    }


def test_redis_guard_never_lets_an_older_profile_win(settings: Settings) -> None:
    sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    store = FeatureStore(settings.redis_url, settings.redis_prefix)
    assert sink.write("customer", [_profile(5, 500, 0.25)], "customer_id") == (1, 0)
    # an older write (a late replay) is skipped, the newer one stays
    assert sink.write("customer", [_profile(3, 300, 0.9)], "customer_id") == (0, 1)
    got = store.customer("s1", "c1")
    assert got["profile_version"] == "5" and got["total_spend_minor"] == "500"
    assert got["top_categories"] == [{"category": "shoes", "share": 1.0, "spend_minor": 500}]
    # the same version again (a replay of the same batch) rewrites; a null field disappears
    assert sink.write("customer", [_profile(5, 500, None)], "customer_id") == (1, 0)
    got = store.customer("s1", "c1")
    assert "propensity" not in got and got["model"]["version"] == "3"
    assert sink.write("customer", [_profile(6, 700, 0.5)], "customer_id") == (1, 0)
    assert store.customer("s1", "c1")["total_spend_minor"] == "700"
    assert store.customer("s1", "nobody") is None
    assert store.scan("customer", "s1") == [
        profile_key(settings.redis_prefix, "customer", "s1", "c1")
    ]
    # Redis lost its script cache (a restart): the sink loads the guard again and goes on
    redis.Redis.from_url(settings.redis_url).script_flush()
    assert sink.write("customer", [_profile(7, 800, 0.5)], "customer_id") == (1, 0)
    assert sink.write("customer", [_profile(6, 1, 0.5)], "customer_id") == (0, 1)
    assert store.customer("s1", "c1")["total_spend_minor"] == "800"


def test_sinks_pickle_without_clients(settings: Settings) -> None:
    import pickle

    sink = RedisProfileSink(settings.redis_url, settings.redis_prefix)
    sink.write("product", [], "product_id")
    copy = pickle.loads(pickle.dumps(sink))
    assert copy.url == settings.redis_url and not getattr(copy, "_ready", False)


def test_kafka_sink_delivers_with_headers_and_dead_letters(settings: Settings) -> None:
    config = settings.kafka_config()
    ensure_topics(config, [settings.topic_customer_profiles, settings.topic_dead_letter], 2)
    sink = KafkaRecordSink(config)
    for i in range(10):
        sink.produce(
            settings.topic_customer_profiles,
            f"s|{i}".encode(),
            b"v%d" % i,
            [("storeml.profile_version", str(i).encode())],
        )
    sink.flush()
    dlq = DeadLetterSink(config, settings.topic_dead_letter)
    dlq.send("orders", 1, 42, b"k", b"\x00garbage", "decode", "CodecError", "not an Avro message")
    dlq.flush()
    method = watermark_method_for(settings.kafka_flavor)
    records = read_all(config, settings.topic_customer_profiles, method)
    assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(10))
    assert all(dict(r.headers)["storeml.profile_version"] for r in records)
    (dead,) = read_all(config, settings.topic_dead_letter, method)
    letter = get_codec("dead_letter").decode(dead.value)
    assert letter == {
        "source_topic": "orders",
        "source_partition": 1,
        "source_offset": 42,
        "key": b"k",
        "value": b"\x00garbage",
        "stage": "decode",
        "error_type": "CodecError",
        "reason": "not an Avro message",
        # dead_letter v2: the original's sizes and SHA-256, kept even when a letter is cut
        "key_size": 1,
        "key_sha256": hashlib.sha256(b"k").hexdigest(),
        "value_size": 8,
        "value_sha256": hashlib.sha256(b"\x00garbage").hexdigest(),
        "truncated": False,
    }
    assert dict(dead.headers)["storeml.source"] == b"orders:1:42"


def test_transactional_ids_are_stable_and_a_fenced_producer_is_replaced(
    settings: Settings, tmp_path: Path
) -> None:
    from storeml.errors import FencedError
    from storeml.streams.context import client, job_context, transactional_prefix
    from storeml.streams.publish import _produce

    # the same checkpoint gives the same prefix in another process (hash() is salted per process)
    code = f"from storeml.streams.context import transactional_prefix as t; print(t({'/c/x'!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == transactional_prefix("/c/x")

    ctx = job_context(settings.model_copy(update={"kafka_transactions": True}), str(tmp_path))
    assert ctx.transactional_prefix == transactional_prefix(str(tmp_path))
    topic = settings.topic_customer_profiles
    ensure_topics(ctx.kafka, [topic], 1)
    tid = f"{ctx.transactional_prefix}-task0of1"
    mine = client(KafkaRecordSink, ctx.kafka, tid)
    _produce(ctx, tid, [(topic, b"s|1", b"first", [])])
    assert client(KafkaRecordSink, ctx.kafka, tid) is mine

    # another worker process takes the id: ours is fenced on its next transaction ...
    theirs = KafkaRecordSink(ctx.kafka, tid)
    theirs.produce(topic, b"s|2", b"theirs")
    theirs.flush()
    # ... and is dropped and replaced, and every record of the task is written
    _produce(ctx, tid, [(topic, b"s|3", b"third", []), (topic, b"s|4", b"fourth", [])])
    assert mine.fenced
    replacement = client(KafkaRecordSink, ctx.kafka, tid)
    assert replacement is not mine
    with pytest.raises(FencedError):  # the other holder is fenced in turn
        theirs.produce(topic, b"s|5", b"late")
        theirs.flush()
    values = {
        r.value for r in read_all(ctx.kafka, topic, watermark_method_for(settings.kafka_flavor))
    }
    assert {b"first", b"theirs", b"third", b"fourth"} <= values
