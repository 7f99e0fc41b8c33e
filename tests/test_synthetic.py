"""The synthetic event generator: determinism, shape, malformed injection, real produce."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics
from storeml.connectors.synthetic import (
    CATEGORIES,
    MALFORMED_KINDS,
    GeneratorConfig,
    SyntheticEvent,
    catalogue,
    generate,
    store_ids,
)
from storeml.errors import CodecError, ConfigError
from storeml.models.events import validate_order, validate_product
from storeml.schemas.codec import get_codec

SHAPE = GeneratorConfig(stores=30, events=60_000, seed=7)


@pytest.fixture(scope="module")
def shape_events() -> list[SyntheticEvent]:
    return list(generate(SHAPE))


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Messages of ``topic`` (assigned from offset 0, all partitions) once ``expected`` came."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 5,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
        # Anything beyond the expected count would be a duplicate: give it a moment to show up.
        messages.extend(m for m in consumer.consume(10_000, timeout=0.5) if m.error() is None)
        return messages
    finally:
        consumer.close()


def _signature(events: list[SyntheticEvent]) -> list[tuple[str, bytes, bytes, str | None]]:
    return [(e.topic_kind, e.key, e.value, e.malformed) for e in events]


def test_same_seed_gives_identical_bytes_and_other_seeds_differ() -> None:
    config = GeneratorConfig(stores=8, events=4_000, seed=42, malformed_fraction=0.05)
    first = _signature(list(generate(config)))
    again = _signature(
        list(generate(GeneratorConfig(stores=8, events=4_000, seed=42, malformed_fraction=0.05)))
    )
    other = _signature(
        list(generate(GeneratorConfig(stores=8, events=4_000, seed=43, malformed_fraction=0.05)))
    )
    assert len(first) == 4_000
    assert first == again
    assert first != other
    assert catalogue(config) == catalogue(GeneratorConfig(stores=8, events=4_000, seed=42))


def test_every_event_round_trips_through_the_codec(shape_events: list[SyntheticEvent]) -> None:
    codecs = {"orders": get_codec("order_event"), "products": get_codec("product_event")}
    for event in shape_events:
        assert event.malformed is None
        assert codecs[event.topic_kind].decode(event.value) == event.record
        record = event.record
        assert record is not None
        second = record["customer_id"] if event.topic_kind == "orders" else record["product_id"]
        assert event.key == f"{record['store_id']}|{second}".encode()


def test_store_sizes_follow_a_power_law(shape_events: list[SyntheticEvent]) -> None:
    per_store = Counter(e.record["store_id"] for e in shape_events if e.record)
    assert set(per_store) == set(store_ids(SHAPE))
    sizes = sorted(per_store.values(), reverse=True)
    assert sizes[0] >= 10 * statistics.median(sizes)
    assert min(sizes) >= SHAPE.min_store_events
    currencies = {e.record["currency"] for e in shape_events if e.topic_kind == "orders"}
    assert len(currencies) >= 2


def test_customers_products_and_views_are_realistic(shape_events: list[SyntheticEvent]) -> None:
    orders = [e.record for e in shape_events if e.topic_kind == "orders"]
    products = [e.record for e in shape_events if e.topic_kind == "products"]
    kinds = Counter(r["kind"] for r in products)
    assert kinds["viewed"] > len(orders) > kinds["updated"] > 0
    views = [r for r in products if r["kind"] == "viewed"]
    known = sum(r["customer_id"] is not None for r in views)
    assert 0.6 < known / len(views) < 1.0
    assert all(r["title"] is None and r["price_minor"] is None for r in views)

    per_customer = Counter((r["store_id"], r["customer_id"]) for r in orders)
    repeat = sum(1 for n in per_customer.values() if n >= 3)
    assert repeat >= 0.1 * len(per_customer)

    for order in orders:
        assert 1 <= len(order["lines"]) <= 4
        assert all(1 <= line["quantity"] <= 3 for line in order["lines"])
        assert all(line["unit_price_minor"] > 0 for line in order["lines"])
        assert order["channel"] in {"web", "app", "store", "marketplace"}
    sold = Counter((o["store_id"], line["product_id"]) for o in orders for line in o["lines"])
    top = sold.most_common(1)[0][1]
    assert top >= 10 * statistics.median(sold.values())


def test_products_are_created_before_use_with_consistent_attributes(
    shape_events: list[SyntheticEvent],
) -> None:
    created: dict[tuple[str, str], dict[str, Any]] = {}
    for event in shape_events:
        record = event.record
        assert record is not None
        if event.topic_kind == "products" and record["kind"] == "created":
            key = (record["store_id"], record["product_id"])
            assert key not in created
            created[key] = record
            continue
        if event.topic_kind == "orders":
            used = [(line["product_id"], line["category"]) for line in record["lines"]]
        else:
            used = [(record["product_id"], None)]
        for product_id, category in used:
            first = created[(record["store_id"], product_id)]
            assert first["event_time"] < record["event_time"]
            if event.topic_kind == "orders":
                assert category == first["category"]
        if event.topic_kind == "products" and record["kind"] == "updated":
            assert record["title"] == first["title"]
            assert record["category"] == first["category"]
            assert record["price_minor"] > 0

    listed = catalogue(SHAPE)
    all_products = [p for items in listed.values() for p in items]
    assert {(p.store_id, p.product_id) for p in all_products} == set(created)
    for product in all_products:
        first = created[(product.store_id, product.product_id)]
        assert first["category"] == product.listed_category
        assert first["title"] == product.title
        assert product.category in CATEGORIES
    uncategorised = sum(p.listed_category is None for p in all_products) / len(all_products)
    assert len(all_products) >= 500
    assert 0.10 <= uncategorised <= 0.20


def test_product_texts_carry_their_category() -> None:
    """Titles/descriptions use words of their own category far more than others' words."""
    products = [p for items in catalogue(SHAPE).values() for p in items]
    hits = 0
    for product in products:
        spec = CATEGORIES[product.category]
        own = set(spec.words) | set(spec.nouns)
        words = f"{product.title} {product.description}".lower().rstrip(".").split()
        hits += sum(w in own for w in words) > len(words) / 3
    assert hits >= 0.9 * len(products)


def test_event_times_advance_at_the_rate_with_small_jitter(
    shape_events: list[SyntheticEvent],
) -> None:
    times = [e.event_time for e in shape_events]
    assert all(t is not None for t in times)
    span = SHAPE.events / SHAPE.events_per_second * 1000
    assert abs((times[-1] - SHAPE.start_ms) - span) <= 3 * SHAPE.jitter_ms
    inversions = sum(1 for a, b in zip(times, times[1:], strict=False) if b < a)
    assert inversions > 0
    running_max = times[0]
    for t in times[1:]:
        assert t >= running_max - 3 * SHAPE.jitter_ms
        running_max = max(running_max, t)


def test_malformed_injection_is_marked_and_counted() -> None:
    config = GeneratorConfig(stores=6, events=20_000, seed=3, malformed_fraction=0.05)
    events = list(generate(config))
    bad = [e for e in events if e.malformed is not None]
    not_created = sum(1 for e in events if not (e.record and e.record.get("kind") == "created"))
    assert 0.8 * 0.05 * not_created <= len(bad) <= 1.2 * 0.05 * not_created
    assert set(Counter(e.malformed for e in bad)) == set(MALFORMED_KINDS)
    codecs = {"orders": get_codec("order_event"), "products": get_codec("product_event")}
    for event in bad:
        codec = codecs[event.topic_kind]
        if event.malformed in ("garbage", "truncated"):
            assert event.record is None
            with pytest.raises(CodecError):
                codec.decode(event.value)
            continue
        record = codec.decode(event.value)
        assert record == event.record
        if event.malformed == "empty_store_id":
            assert record["store_id"] == ""
        elif event.malformed == "quantity_zero":
            assert any(line["quantity"] < 1 for line in record["lines"])
        elif event.topic_kind == "orders":
            assert any(line["unit_price_minor"] < 0 for line in record["lines"])
        else:
            assert record["kind"] == "updated" and record["price_minor"] < 0
    # The stream's validation agrees: every decodable injected record fails it, no good one does.
    validate = {"orders": validate_order, "products": validate_product}
    for event in events:
        if event.record is not None:
            problem = validate[event.topic_kind](codecs[event.topic_kind].decode(event.value))
            assert (problem is None) == (event.malformed is None), (event, problem)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="events=10"):
        GeneratorConfig(stores=5, events=10)
    with pytest.raises(ConfigError, match="malformed_fraction"):
        GeneratorConfig(malformed_fraction=1.5)


def test_produce_to_the_broker(kafka_bootstrap: str, unique: str) -> None:
    orders_topic, products_topic = f"test.{unique}.orders", f"test.{unique}.products"
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, [orders_topic, products_topic], partitions=3)
    events = list(
        generate(GeneratorConfig(stores=5, events=3_000, seed=11, malformed_fraction=0.02))
    )
    seen: list[int] = []
    stats = produce_events(config, events, orders_topic, products_topic, progress=seen.append)
    orders = [e for e in events if e.topic_kind == "orders"]
    products = [e for e in events if e.topic_kind == "products"]
    assert (stats.sent, stats.orders, stats.products) == (3_000, len(orders), len(products))
    assert stats.malformed == sum(e.malformed is not None for e in events) > 0
    assert seen[-1] == 3_000
    for topic, expected in ((orders_topic, orders), (products_topic, products)):
        got = consume(kafka_bootstrap, topic, len(expected))
        assert Counter((m.key(), m.value()) for m in got) == Counter(
            (e.key, e.value) for e in expected
        )
        # One key always lands on one partition, so per-key order is kept.
        by_key: dict[bytes, set[int]] = {}
        for message in got:
            by_key.setdefault(message.key(), set()).add(message.partition())
        assert all(len(parts) == 1 for parts in by_key.values())


def test_produce_at_a_steady_rate(kafka_bootstrap: str, unique: str) -> None:
    orders_topic, products_topic = f"test.{unique}.orders", f"test.{unique}.products"
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, [orders_topic, products_topic], partitions=3)
    events = list(generate(GeneratorConfig(stores=2, events=400, seed=5)))
    stats = produce_events(config, events, orders_topic, products_topic, rate=2_000)
    assert stats.sent == 400
    # 400 events at 2,000/s cannot take less than ~0.2 s (a lower bound, not a timing check).
    assert stats.seconds >= 0.19
    orders = sum(e.topic_kind == "orders" for e in events)
    assert len(consume(kafka_bootstrap, orders_topic, orders)) == orders
