"""Topic creation, partitions, watermarks and read_all against the session's real broker."""

from __future__ import annotations

import pickle

import pytest
from confluent_kafka import Producer

from storeml.connectors.kafka_admin import (
    KafkaRecord,
    WatermarkReader,
    ensure_topics,
    high_watermarks,
    low_watermarks,
    partitions_of,
    read_all,
    watermark_method_for,
)
from storeml.errors import ConfigError


def _produce(bootstrap: str, topic: str, plan: dict[int, int], batch: int = 500) -> None:
    """Produce plan[partition] records to each partition, flushing every ``batch`` records so the
    log holds many record batches (what trips Tansu's ListOffsets)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent = 0
    for partition, count in plan.items():
        for i in range(count):
            producer.produce(
                topic,
                key=f"{partition}-{i}".encode(),
                value=f"value-{partition}-{i}".encode(),
                partition=partition,
                headers=[("seq", str(i).encode())],
            )
            sent += 1
            if sent % batch == 0:
                producer.flush()
    assert producer.flush(10) == 0


def test_watermark_method_for_each_flavor() -> None:
    assert watermark_method_for("tansu") == "fetch"
    assert watermark_method_for("apache") == "list_offsets"
    with pytest.raises(ConfigError, match="redpanda"):
        watermark_method_for("redpanda")


def test_ensure_topics_creates_missing_and_accepts_existing(
    kafka_bootstrap: str, unique: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    first, second = f"test.{unique}.a", f"test.{unique}.b"
    ensure_topics(config, [first], partitions=3)
    ensure_topics(config, [first, second], partitions=2)  # first exists (3 partitions): fine
    assert partitions_of(config, [first, second, f"test.{unique}.missing"]) == [
        (first, 0),
        (first, 1),
        (first, 2),
        (second, 0),
        (second, 1),
    ]


def test_fetch_watermarks_are_exact(kafka_bootstrap: str, kafka_flavor: str, unique: str) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topic = f"test.{unique}.wm"
    ensure_topics(config, [topic], partitions=4)
    plan = {0: 2600, 1: 1700, 2: 700}  # 5,000 records; partition 3 stays empty
    _produce(kafka_bootstrap, topic, plan)
    keys = partitions_of(config, [topic])
    expected = {(topic, p): plan.get(p, 0) for p in range(4)}

    assert high_watermarks(config, keys, "fetch") == expected
    assert low_watermarks(config, keys, "fetch") == {key: 0 for key in keys}
    assert high_watermarks(config, keys, watermark_method_for(kafka_flavor)) == expected
    listed = high_watermarks(config, keys, "list_offsets")
    if kafka_flavor == "tansu":
        # Tansu's ListOffsets(LATEST) answers the last record batch's base offset + 1. If this
        # fails, Tansu was fixed and watermark_method_for("tansu") can become "list_offsets".
        assert listed != expected
        assert all(listed[k] <= expected[k] for k in keys)
    else:
        assert listed == expected


def test_watermark_reader_is_reusable_fresh_and_picklable(
    kafka_bootstrap: str, unique: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topic = f"test.{unique}.reuse"
    ensure_topics(config, [topic], partitions=2)
    reader = WatermarkReader(config, "fetch")
    keys = reader.partitions([topic])
    assert reader.high(keys) == {(topic, 0): 0, (topic, 1): 0}
    _produce(kafka_bootstrap, topic, {0: 30})
    assert reader.high(keys) == {(topic, 0): 30, (topic, 1): 0}  # no stale cached answer
    _produce(kafka_bootstrap, topic, {0: 5, 1: 7})
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._consumer is None
    assert clone.high(keys) == {(topic, 0): 35, (topic, 1): 7}
    # A hint past the log end (topic recreated, broker restarted) still gets the true answer.
    assert clone.high(keys, positions={(topic, 0): 500, (topic, 1): 500}) == {
        (topic, 0): 35,
        (topic, 1): 7,
    }
    reader.close()
    clone.close()


def test_read_all_returns_every_record_in_order(
    kafka_bootstrap: str, kafka_flavor: str, unique: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topic = f"test.{unique}.all"
    ensure_topics(config, [topic], partitions=3)
    method = watermark_method_for(kafka_flavor)
    assert read_all(config, topic, method) == []
    plan = {0: 120, 2: 45}
    _produce(kafka_bootstrap, topic, plan, batch=50)
    records = read_all(config, topic, method)
    assert [(r.partition, r.offset) for r in records] == [
        (p, o) for p in sorted(plan) for o in range(plan[p])
    ]
    first = records[0]
    assert isinstance(first, KafkaRecord)
    assert (first.topic, first.key, first.value) == (topic, b"0-0", b"value-0-0")
    assert first.headers == [("seq", b"0")]
    assert first.timestamp_ms is not None and first.timestamp_ms > 1_600_000_000_000
