"""The stream's source (storeml_events): Kafka ranges decoded into facts inside the read task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.settings import Settings
from storeml.streams.context import job_context
from storeml.streams.decode import DECODE_STATS
from storeml.streams.enrich import source_options
from storeml.streams.event_source import EVENT_SOURCE_NAME, EventSource, context_option

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_reads_facts_with_one_stats_row_per_task_and_dead_letters_the_rest(
    spark: SparkSession, settings: Settings
) -> None:
    config = settings.kafka_config()
    topics = [settings.topic_orders, settings.topic_products, settings.topic_dead_letter]
    ensure_topics(config, topics, settings.topic_partitions)
    events = list(generate(GeneratorConfig(stores=5, events=300, seed=3, malformed_fraction=0.05)))
    produce_events(config, events, settings.topic_orders, settings.topic_products)
    malformed = sum(1 for e in events if e.malformed is not None)
    assert malformed > 0

    spark.dataSource.register(EventSource)
    ctx = job_context(settings)
    options = {**source_options(settings, tasks=2), "endingOffsets": "latest"}
    options.pop("maxRecordsPerTrigger")
    rows = (
        spark.read.format(EVENT_SOURCE_NAME)
        .options(**options)
        .options(**context_option(ctx))
        .load()
        .collect()
    )
    stats = [r for r in rows if r.kind == DECODE_STATS]
    facts = [r for r in rows if r.kind != DECODE_STATS]
    # 300 events in 8 topic partitions: one task per 10,000 records, so one stats row
    assert len(stats) == 1
    assert stats[0].decode_events == len(events)
    assert stats[0].decode_dead_letters == malformed
    accepted = {(r.topic, r.partition, r.offset) for r in facts}
    assert len(accepted) == len(events) - malformed
    assert all(r.bucket in range(settings.state_buckets) for r in facts)
    # raw bytes ride on the first fact row of each event, for the lake
    assert sum(1 for r in facts if r.raw_value is not None) == len(accepted)
    letters = read_all(
        config, settings.topic_dead_letter, watermark_method_for(settings.kafka_flavor)
    )
    assert len(letters) == malformed


def test_the_context_option_carries_no_kafka_secret(settings: Settings) -> None:
    ctx = job_context(settings.model_copy(update={"kafka_password": SecretStr("s3cret")}))
    assert "s3cret" in str(ctx.kafka)
    assert "s3cret" not in str(context_option(ctx))
