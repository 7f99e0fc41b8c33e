"""The storeml_kafka Spark source against the session's real broker and a local Spark."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from storeml.connectors.kafka_admin import ensure_topics, watermark_method_for
from storeml.connectors.kafka_source import (
    KAFKA_SCHEMA,
    SOURCE_NAME,
    KafkaDataSource,
    KafkaInputPartition,
    KafkaRangeGroup,
    KafkaStreamReader,
    pack_ranges,
    parse_options,
    share_cap,
)
from storeml.errors import ConfigError, ConnectorError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _produce(bootstrap: str, topic: str, plan: dict[int, int], first: int = 0) -> None:
    """plan[partition] records per partition; keys ``p-i`` with i counting from ``first``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, count in plan.items():
        for i in range(first, first + count):
            producer.produce(
                topic,
                key=f"{partition}-{i}".encode(),
                value=f"v{i}".encode(),
                partition=partition,
                headers=[("n", str(i).encode())] if i % 2 else None,
            )
    assert producer.flush(10) == 0


def _options(bootstrap: str, flavor: str, topics: str, **extra: str) -> dict[str, str]:
    return {
        "bootstrap.servers": bootstrap,
        "subscribe": topics,
        "watermarkMethod": watermark_method_for(flavor),
        **extra,
    }


@pytest.fixture(scope="module")
def kafka_spark(spark: SparkSession) -> SparkSession:
    spark.dataSource.register(KafkaDataSource)
    return spark


def _stream(spark: SparkSession, options: dict[str, str]) -> DataFrame:
    return spark.readStream.format(SOURCE_NAME).options(**options).load()


def _run_available_now(
    spark: SparkSession, options: dict[str, str], checkpoint: Path
) -> list[list[tuple[int, int, bytes]]]:
    """Run the stream to the current end; the (partition, offset, key) rows of each batch."""
    batches: list[list[tuple[int, int, bytes]]] = []

    def collect(frame: DataFrame, _batch_id: int) -> None:
        rows = frame.select("partition", "offset", "key").collect()
        batches.append([(r.partition, r.offset, bytes(r.key)) for r in rows])

    query = (
        _stream(spark, options)
        .writeStream.foreachBatch(collect)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    assert query.exception() is None
    return [batch for batch in batches if batch]


# --- options and pure logic ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"subscribe": "t"}, "bootstrap.servers"),
        ({"bootstrap.servers": "h:1"}, "subscribe"),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "maxRecordsPerTrigger": "0"},
            "maxRecordsPerTrigger",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "maxRecordsPerTrigger": "x"},
            "maxRecordsPerTrigger",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "maxPartitions": "0"},
            "maxPartitions",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "minRecordsPerPartition": "-5"},
            "minRecordsPerPartition",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "startingOffsets": "first"},
            "startingOffsets",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "watermarkMethod": "guess"},
            "watermarkMethod",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "endingOffsets": "latest"},
            "endingOffsets",
        ),
        (
            {"bootstrap.servers": "h:1", "subscribe": "t", "maxRecordPerTrigger": "5"},
            "maxrecordpertrigger",
        ),
    ],
)
def test_bad_options_raise_config_error_naming_them(options: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_options(options)


def test_options_parse_with_defaults_and_kafka_passthrough() -> None:
    parsed = parse_options(
        {
            "BOOTSTRAP.SERVERS": "h:1",
            "subscribe": " a, b ,",
            "kafka.security.protocol": "PLAINTEXT",
            "startingOffsets": json.dumps({"a": {"0": 5}}),
            "endingOffsets": "latest",
        },
        batch=True,
    )
    assert parsed.topics == ("a", "b")
    assert parsed.max_records == 50_000 and parsed.watermark_method == "list_offsets"
    assert parsed.starting == {("a", 0): 5} and parsed.ending == "latest"
    assert parsed.config == {"bootstrap.servers": "h:1", "security.protocol": "PLAINTEXT"}
    with pytest.raises(ConfigError, match="startingOffsets"):
        parse_options({"bootstrap.servers": "h:1", "subscribe": "a", "startingOffsets": "{}"})


def test_share_cap_is_exact_and_fair() -> None:
    a, b, c = ("t", 0), ("t", 1), ("t", 2)
    assert share_cap({a: 10, b: 0, c: 5}, None) == {a: 10, c: 5}
    assert share_cap({a: 10, c: 5}, 100) == {a: 10, c: 5}
    assert share_cap({a: 1000, b: 1000, c: 10}, 100) == {a: 45, b: 45, c: 10}
    assert sum(share_cap({a: 7, b: 9, c: 11}, 10).values()) == 10
    assert share_cap({a: 1000, b: 3}, 1) in ({a: 1}, {b: 1})


def test_pack_ranges_balances_records_over_at_most_the_cap() -> None:
    ranges = [
        KafkaInputPartition("a", 0, 0, 500),
        KafkaInputPartition("a", 1, 100, 200),
        KafkaInputPartition("b", 0, 0, 300),
        KafkaInputPartition("b", 1, 0, 250),
        KafkaInputPartition("b", 2, 7, 57),
    ]
    assert pack_ranges(ranges, None) == ranges
    assert pack_ranges(ranges, 5) == ranges
    packed = pack_ranges(ranges, 2)
    assert all(isinstance(group, KafkaRangeGroup) for group in packed)
    groups = [group.ranges for group in packed if isinstance(group, KafkaRangeGroup)]
    key = [(r.topic, r.partition, r.start, r.end) for r in ranges]
    assert sorted((r.topic, r.partition, r.start, r.end) for g in groups for r in g) == key
    sizes = sorted(sum(r.end - r.start for r in group) for group in groups)
    assert sizes == [600, 600]  # 500+100 | 300+250+50
    assert pack_ranges(list(reversed(ranges)), 2) == packed  # deterministic
    assert len(pack_ranges(ranges[:1], 3)) == 1
    # a small batch (1,200 records) with one partition per 1,000 records at most: two
    assert len(pack_ranges(ranges, 4, min_records=1_000)) == 2
    assert len(pack_ranges(ranges, 4, min_records=5_000)) == 1
    assert pack_ranges(ranges, 8, min_records=100) == ranges  # 12 allowed, 5 ranges


# --- the stream reader in this process (no Spark) ----------------------------------------------


def test_stream_reader_caps_batches_and_picks_up_new_topics(
    kafka_bootstrap: str, kafka_flavor: str, unique: str
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    first, later = f"test.{unique}.first", f"test.{unique}.later"
    ensure_topics(config, [first], partitions=2)
    _produce(kafka_bootstrap, first, {0: 50, 1: 10})
    source = KafkaDataSource(_options(kafka_bootstrap, kafka_flavor, f"{first},{later}"))
    reader = source.streamReader(KAFKA_SCHEMA)
    assert isinstance(reader, KafkaStreamReader)
    assert reader.getDefaultReadLimit() == ReadMaxRows(50_000)

    start = reader.initialOffset()
    assert start == {first: {"0": 0, "1": 0}}
    end = reader.latestOffset(start, ReadMaxRows(30))
    assert end == {first: {"0": 20, "1": 10}}  # fair share: the small partition gets all of it
    parts = reader.partitions(start, end)
    assert [(p.topic, p.partition, p.start, p.end) for p in parts] == [
        (first, 0, 0, 20),
        (first, 1, 0, 10),
    ]

    ensure_topics(config, [later], partitions=1)  # a topic (new partitions) appearing later
    _produce(kafka_bootstrap, later, {0: 4})
    registered = reader.latestOffset(end, ReadMaxRows(1000))
    assert registered == {first: {"0": 50, "1": 10}, later: {"0": 0}}
    assert reader.latestOffset(registered, ReadAllAvailable()) == {
        first: {"0": 50, "1": 10},
        later: {"0": 4},
    }
    assert reader.reportLatestOffset() == {first: {"0": 50, "1": 10}, later: {"0": 4}}

    clone = pickle.loads(pickle.dumps(reader))  # what Spark does to ship it to executors
    assert clone._watermarks is None
    batches = list(clone.read(parts[1]))
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.column("offset").to_pylist() == list(range(10))
    assert table.column("key").to_pylist() == [f"1-{i}".encode() for i in range(10)]
    assert table.column("headers").to_pylist()[:2] == [[], [{"key": "n", "value": b"1"}]]
    reader.stop()


def test_available_now_never_passes_the_prepared_target(
    kafka_bootstrap: str, kafka_flavor: str, unique: str
) -> None:
    topic = f"test.{unique}.target"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=1)
    _produce(kafka_bootstrap, topic, {0: 10})
    reader = KafkaDataSource(_options(kafka_bootstrap, kafka_flavor, topic)).streamReader(
        KAFKA_SCHEMA
    )
    start = reader.initialOffset()
    reader.prepareForTriggerAvailableNow()
    _produce(kafka_bootstrap, topic, {0: 5}, first=10)
    end = reader.latestOffset(start, ReadMaxRows(6))
    assert end == {topic: {"0": 6}}
    end = reader.latestOffset(end, ReadMaxRows(6))
    assert end == {topic: {"0": 10}}
    assert reader.latestOffset(end, ReadMaxRows(6)) == end
    reader.stop()


def test_read_fails_loudly_when_records_are_missing(
    kafka_bootstrap: str, kafka_flavor: str, unique: str
) -> None:
    topic = f"test.{unique}.gone"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=1)
    _produce(kafka_bootstrap, topic, {0: 5})
    options = _options(kafka_bootstrap, kafka_flavor, topic, timeoutSeconds="2")
    reader = KafkaDataSource(options).streamReader(KAFKA_SCHEMA)
    for start, end, named in ((0, 8, 5), (20, 30, 20)):  # ends past the log end; starts past it
        with pytest.raises(ConnectorError, match=rf"{re.escape(topic)}\[0\].*\b{named}\b"):
            list(reader.read(KafkaInputPartition(topic, 0, start, end)))


# --- through Spark -----------------------------------------------------------------------------


def test_batch_read_returns_exactly_the_produced_records(
    kafka_spark: SparkSession, kafka_bootstrap: str, kafka_flavor: str, unique: str
) -> None:
    topic = f"test.{unique}.batch"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=3)
    plan = {0: 40, 1: 25}  # partition 2 empty
    _produce(kafka_bootstrap, topic, plan)
    options = _options(kafka_bootstrap, kafka_flavor, topic)
    frame = kafka_spark.read.format(SOURCE_NAME).options(**options).load()
    assert frame.schema == KAFKA_SCHEMA
    rows = frame.collect()
    assert sorted((r.partition, r.offset, bytes(r.key), bytes(r.value)) for r in rows) == [
        (p, i, f"{p}-{i}".encode(), f"v{i}".encode()) for p in sorted(plan) for i in range(plan[p])
    ]
    assert {r.topic for r in rows} == {topic}
    assert all(r.timestamp > 1_600_000_000_000 for r in rows)
    assert next(r for r in rows if r.offset == 1).headers[0].asDict() == {"key": "n", "value": b"1"}

    packed = kafka_spark.read.format(SOURCE_NAME).options(**options, maxPartitions="1").load()
    assert packed.rdd.getNumPartitions() == 1
    assert sorted(
        tuple(r) for r in packed.select("partition", "offset", "key").collect()
    ) == sorted((r.partition, r.offset, r.key) for r in rows)

    ranged = (
        kafka_spark.read.format(SOURCE_NAME)
        .options(**options)
        .option("startingOffsets", json.dumps({topic: {"0": 10}}))
        .option("endingOffsets", json.dumps({topic: {"0": 15, "1": 2}}))
        .load()
    )
    assert sorted((r.partition, r.offset) for r in ranged.collect()) == [
        *((0, i) for i in range(10, 15)),
        (1, 0),
        (1, 1),
    ]


def test_stream_reads_everything_in_capped_batches_and_resumes_without_gaps(
    kafka_spark: SparkSession, kafka_bootstrap: str, kafka_flavor: str, unique: str, tmp_path: Path
) -> None:
    topic = f"test.{unique}.stream"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=3)
    _produce(kafka_bootstrap, topic, {0: 300, 1: 150, 2: 50})
    cap = 120
    options = _options(kafka_bootstrap, kafka_flavor, topic, maxRecordsPerTrigger=str(cap))
    checkpoint = tmp_path / "checkpoint"

    first = _run_available_now(kafka_spark, options, checkpoint)
    assert len(first) >= 5 and all(len(batch) <= cap for batch in first)
    _produce(kafka_bootstrap, topic, {0: 40, 2: 100}, first=1000)
    second = _run_available_now(kafka_spark, options, checkpoint)
    assert second and all(len(batch) <= cap for batch in second)

    seen = [(p, o) for batch in first + second for p, o, _key in batch]
    assert len(seen) == len(set(seen)), "a record was read twice"
    expected = {(0, o) for o in range(340)} | {(1, o) for o in range(150)}
    expected |= {(2, o) for o in range(150)}
    assert set(seen) == expected
    assert {key for batch in second for _p, _o, key in batch} == {
        f"{p}-{i}".encode() for p, n in ((0, 40), (2, 100)) for i in range(1000, 1000 + n)
    }


def test_starting_offsets_latest_skips_existing_records(
    kafka_spark: SparkSession, kafka_bootstrap: str, kafka_flavor: str, unique: str, tmp_path: Path
) -> None:
    topic = f"test.{unique}.latest"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=2)
    _produce(kafka_bootstrap, topic, {0: 20, 1: 20})
    options = _options(kafka_bootstrap, kafka_flavor, topic, startingOffsets="latest")
    checkpoint = tmp_path / "checkpoint"
    assert _run_available_now(kafka_spark, options, checkpoint) == []
    _produce(kafka_bootstrap, topic, {1: 3}, first=100)
    batches = _run_available_now(kafka_spark, options, checkpoint)
    assert sorted(row for batch in batches for row in batch) == [
        (1, 20, b"1-100"),
        (1, 21, b"1-101"),
        (1, 22, b"1-102"),
    ]


def test_bad_option_fails_the_spark_query_naming_it(
    kafka_spark: SparkSession, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    options = {"bootstrap.servers": kafka_bootstrap, "subscribe": f"test.{unique}.x"}
    with pytest.raises(Exception, match=r"ConfigError(.|\n)*maxRecordsPerTrigger") as info:
        query = (
            _stream(kafka_spark, {**options, "maxRecordsPerTrigger": "-5"})
            .writeStream.format("noop")
            .option("checkpointLocation", str(tmp_path / "checkpoint"))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
    assert not isinstance(info.value, AssertionError)
