"""Hostile messages through the real stream (Spark, broker, Redis, MLflow): it stays alive, every
bad message is in the dead-letter topic with its reason, the good events are enriched exactly as a
plain-pandas computation says, and no hostile id reaches Redis or the enriched topics."""

from __future__ import annotations

import hashlib
import random
import re
import time
from typing import Any

import pytest

from storeml.connectors.event_producer import EventProducer
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.schemas.codec import get_codec
from storeml.settings import Settings
from tests.reference import assert_profiles_match, reference_profiles
from tests.test_hostile_input import HOSTILE_IDS, _hostile, _mutate
from tests.test_stream_e2e import input_events, latest_from_topic, redis_profiles

pytestmark = pytest.mark.slow

_VALID_KEY = re.compile(r"\{[A-Za-z0-9._~@-]{1,128}\}:(customer|product):[A-Za-z0-9._~@-]{1,128}")


def _hostile_messages(rng: random.Random, now_ms: int, count: int) -> list[tuple[str, bytes]]:
    """(``order``/``product``, value) pairs that must all be dead-lettered."""
    orders, products = get_codec("order_event"), get_codec("product_event")
    out: list[tuple[str, bytes]] = []
    while len(out) < count:
        kind = "order" if rng.random() < 0.6 else "product"
        codec = orders if kind == "order" else products
        record, _ = _hostile(rng, kind)
        if "event_time" in record and record["event_time"] > 0:
            # the generator's times are relative to 2026-01-01; move them to now
            record["event_time"] = now_ms + (record["event_time"] - 1_767_225_600_000)
        value = codec.encode(record)
        if rng.random() < 0.3:  # mutated until the decoder refuses it
            value = _mutate(rng, value, value)
            try:
                codec.decode(value)
                continue
            except Exception:
                pass
        out.append((kind, value))
    return out


def test_the_stream_survives_hostile_input(spark: Any, settings: Settings) -> None:
    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 2_000})
    ensure_topics(settings.kafka_config(), settings.topics, 3)
    train_on_synthetic(settings, stores=4, events=4_000, seed=3)
    rng = random.Random(7)
    good_events = list(generate(GeneratorConfig(stores=4, events=3_000, seed=9)))
    hostile = _hostile_messages(rng, int(time.time() * 1000), 1_500)
    producer = EventProducer({**settings.kafka_config(), "message.max.bytes": 5_000_000})
    topics = {"order": settings.topic_orders, "product": settings.topic_products}
    mixed: list[tuple[str, bytes | None, bytes]] = [
        (
            settings.topic_orders if e.topic_kind == "orders" else settings.topic_products,
            e.key,
            e.value,
        )
        for e in good_events
    ]
    for kind, value in hostile:
        mixed.insert(
            rng.randrange(len(mixed) + 1), (topics[kind], rng.choice(HOSTILE_IDS).encode(), value)
        )
    big = b"\xc3\x01" + rng.randbytes(1_500_000)  # above the dead-letter limit: cut, not a crash
    mixed.insert(len(mixed) // 2, (settings.topic_orders, b"big", big))
    for topic, key, value in mixed:
        producer.send(topic, key, value)
    producer.flush()
    producer.close()
    good, bad = input_events(settings)
    assert len(bad) == len(hostile) + 1 and len(good) == len(good_events)

    query, handler = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None, "the stream must stay alive"
    assert sum(r.events for r in handler.reports) == len(good) + len(bad)
    assert sum(r.dead_letters for r in handler.reports) == len(bad)

    # dead letters are complete: one per bad message, each with a reason
    method = watermark_method_for(settings.kafka_flavor)
    letters = [
        get_codec("dead_letter").decode(r.value)
        for r in read_all(settings.kafka_config(), settings.topic_dead_letter, method)
    ]
    sources = {(d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters}
    assert sources == set(bad) and len(letters) == len(bad)
    assert all(d["reason"] and d["reason"].isprintable() for d in letters)
    (cut,) = [d for d in letters if d["truncated"]]
    assert cut["value_sha256"] == hashlib.sha256(big).hexdigest() and cut["value_size"] == len(big)

    # good events are enriched as the reference computes them; no hostile id got anywhere
    want_c, want_p = reference_profiles(good)
    got_c = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    got_p = latest_from_topic(
        settings, settings.topic_product_profiles, "product_id", "product_profile"
    )
    assert_profiles_match(got_c, want_c)
    assert_profiles_match(got_p, want_p)
    keys = list(redis_profiles(settings, "customer")) + list(redis_profiles(settings, "product"))
    assert keys and all(_VALID_KEY.fullmatch(k.lstrip(":")) for k in keys), keys[:3]
