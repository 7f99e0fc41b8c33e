"""Stream metrics: a real Spark query over the real broker, scraped over HTTP."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from storeml.connectors.kafka_admin import ensure_topics, watermark_method_for
from storeml.connectors.kafka_source import SOURCE_NAME, KafkaDataSource
from storeml.streams.stream_metrics import metrics_payload, source_lag, start_metrics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def test_source_lag_from_offset_json() -> None:
    latest = '{"t": {"0": 500, "1": 90}}'
    assert source_lag(latest, '{"t": {"0": 100, "1": 90}}') == 400
    assert source_lag({"0": 10, "1": 5}, {"0": 4, "1": 6}) == 6  # flat maps; never negative
    assert source_lag('{"t": {"0": 5}}', '{"t": {"0": 5}, "u": {"0": 2}}') == 0  # no latest: 0
    assert source_lag("123", "120") is None  # the rate source's plain numbers
    assert source_lag(None, '{"t": {"0": 1}}') is None
    assert source_lag("null", "not json") is None


def _scrape(port: int) -> dict[str, float]:
    """``{"name{query=...}": value}`` of every sample the endpoint serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_a_real_query_feeds_the_metrics_endpoint(
    spark: SparkSession,
    kafka_bootstrap: str,
    kafka_flavor: str,
    unique: str,
    tmp_path: Path,
) -> None:
    topic = f"test.{unique}.metrics"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(600):
        producer.produce(topic, key=str(i).encode(), value=b"v", partition=i % 2)
    assert producer.flush(10) == 0

    query_name = f"metrics_{unique}"
    label = f"query={query_name}"
    metrics = start_metrics(spark, 0, addr="127.0.0.1")
    spark.dataSource.register(KafkaDataSource)
    frame = (
        spark.readStream.format(SOURCE_NAME)
        .options(
            **{
                "bootstrap.servers": kafka_bootstrap,
                "subscribe": topic,
                "watermarkMethod": watermark_method_for(kafka_flavor),
                "maxRecordsPerTrigger": "150",
            }
        )
        .load()
    )

    def count(batch: DataFrame, _batch_id: int) -> None:
        batch.count()  # rows only count as input once the batch reads them

    query = (
        frame.writeStream.queryName(query_name)
        .foreachBatch(count)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(processingTime="0.2 seconds")
        .start()
    )
    lags: list[float] = []
    try:
        deadline = time.monotonic() + 40
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            samples = _scrape(metrics.port)
            lag = samples.get(f"storeml_stream_source_lag_records{{{label}}}")
            if lag is not None:
                lags.append(lag)
            if samples.get(f"storeml_stream_input_rows_total{{{label}}}", 0) >= 600 and lag == 0:
                break
            assert query.exception() is None
            time.sleep(0.1)
    finally:
        query.stop()
        metrics.stop()
    assert samples[f"storeml_stream_batches_total{{{label}}}"] >= 4  # 600 rows, 150 per batch
    assert samples[f"storeml_stream_input_rows_total{{{label}}}"] == 600
    assert f"storeml_stream_input_rows_per_second{{{label}}}" in samples
    assert f"storeml_stream_processed_rows_per_second{{{label}}}" in samples
    assert samples[f"storeml_stream_batch_rows{{{label}}}"] <= 150
    assert samples[f"storeml_stream_batch_duration_seconds_count{{{label}}}"] >= 4
    assert samples[f"storeml_stream_last_progress_timestamp_seconds{{{label}}}"] > time.time() - 60
    # the first batch left 450 records behind; the last left none
    assert max(lags) >= 300 and lags[-1] == 0
    # no store (or any other) label: the query is the only one
    payload, content_type = metrics_payload()
    assert content_type.startswith("text/plain")
    for family in text_string_to_metric_families(payload.decode()):
        if family.name.startswith("storeml_stream_"):
            for sample in family.samples:
                assert set(sample.labels) <= {"query", "le"}, sample
