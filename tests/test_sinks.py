"""Sinks against the real broker and Redis: version guard, headers, dead letters."""

from __future__ import annotations

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
    }
    assert dict(dead.headers)["storeml.source"] == b"orders:1:42"
