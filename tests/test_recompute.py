"""Recompute from history equals the stream: real broker, Spark, MLflow and Redis.

* the stream archives every accepted event to the lake exactly once;
* recompute from the lake and from the topics rebuilds every profile field for field as the stream
  wrote it (``source`` aside: it lists the ranges the recompute folded), published to the
  enriched topics and Redis, or written to Parquet;
* ``--as-of`` equals a plain pandas computation over the events up to that time;
* a recompute of older history racing with the stream never leaves an older profile in Redis.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from storeml.connectors.event_lake import compact_lake
from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.profile_files import read_profiles
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.settings import Settings
from tests.reference import assert_profiles_match, reference_profiles
from tests.test_stream_e2e import input_events, redis_indexes, redis_profiles

pytestmark = pytest.mark.slow

KINDS = (
    ("customer", "topic_customer_profiles", "customer_profile"),
    ("product", "topic_product_profiles", "product_profile"),
)


def _without_source(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "source"}


def _keyed(records: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["store_id"], r[f"{kind}_id"]): _without_source(r) for r in records}


def _latest(settings: Settings, topic: str, schema: str, kind: str, *, after: int = 0) -> dict:
    """Latest record per key (highest profile_version, last written wins ties) from offset ``after``."""
    from storeml.schemas.codec import get_codec

    codec = get_codec(schema)
    records = [
        codec.decode(r.value)
        for r in read_all(
            settings.kafka_config(), topic, watermark_method_for(settings.kafka_flavor)
        )
        if r.offset >= after
    ]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["store_id"], record[f"{kind}_id"])
        if key not in latest or record["profile_version"] >= latest[key]["profile_version"]:
            latest[key] = record
    return {key: _without_source(r) for key, r in latest.items()}


def _run_stream(spark: Any, settings: Settings) -> list[Any]:
    from storeml.streams.enrich import start_enrichment

    query, handler = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None
    return handler.reports


def _redis(settings: Settings, kind: str) -> dict[str, dict[str, Any]]:
    """The hashes of ``kind`` without ``source`` and ``written_at`` (the wall clock of a write)."""
    return {
        k: {f: v for f, v in h.items() if f not in ("source", "written_at")}
        for k, h in redis_profiles(settings, kind).items()
    }


@pytest.fixture
def streamed(spark: Any, settings: Settings) -> Settings:
    """A stream run over 6 stores' events (a few malformed), with its lake."""
    from storeml.batch.history import train_on_synthetic

    settings = settings.model_copy(update={"max_records_per_batch": 2_000})
    train_on_synthetic(settings, stores=6, events=5_000, seed=13)
    ensure_topics(settings.kafka_config(), settings.topics, 3)
    events = list(
        generate(GeneratorConfig(stores=6, events=7_000, seed=17, malformed_fraction=0.01))
    )
    produce_events(settings.kafka_config(), events, settings.topic_orders, settings.topic_products)
    reports = _run_stream(spark, settings)
    assert len(reports) >= 3 and sum(r.dead_letters for r in reports) > 0
    return settings


def test_recompute_from_lake_and_topic_equals_the_stream(
    spark: Any, streamed: Settings, tmp_path: Path
) -> None:
    from storeml.batch.recompute import recompute

    settings = streamed
    good, _ = input_events(settings)
    # the lake holds every accepted event exactly once, by store and date (once compacted)
    assert settings.lake_path is not None
    compact_lake(settings.lake_path)
    lake = ds.dataset(settings.lake_path, format="parquet", partitioning="hive").to_table()
    coordinates = list(
        zip(*(lake.column(c).to_pylist() for c in ("topic", "partition", "offset")), strict=True)
    )
    assert sorted(coordinates) == sorted((t, p, o) for _, _, t, p, o in good)
    assert set(lake.column("store_id").to_pylist()) == {r["store_id"] for _, r, *_ in good}

    streamed_profiles = {
        kind: _latest(settings, getattr(settings, attr), schema, kind)
        for kind, attr, schema in KINDS
    }
    redis_before = {kind: _redis(settings, kind) for kind, _, _ in KINDS}
    indexes_before = redis_indexes(settings)
    assert indexes_before, "the stream should have filled the score index"
    ends = {
        kind: 1
        + max(
            r.offset
            for r in read_all(
                settings.kafka_config(),
                getattr(settings, attr),
                watermark_method_for(settings.kafka_flavor),
            )
        )
        for kind, attr, _ in KINDS
    }
    assert len(ends) == 2

    # from the lake, published: the topics get the same profiles again, Redis is unchanged
    summary = recompute(spark, settings, source="lake", output=str(tmp_path / "lake-out"))
    assert summary.events == len(good) and summary.skipped == 0
    assert summary.customers == len(streamed_profiles["customer"])
    assert summary.products == len(streamed_profiles["product"])
    assert sum(c for c, _ in summary.stores.values()) == summary.customers
    for kind, attr, schema in KINDS:
        want = streamed_profiles[kind]
        assert _keyed(read_profiles(tmp_path / "lake-out", kind), kind) == want
        published = _latest(settings, getattr(settings, attr), schema, kind)
        assert published == want
        assert _redis(settings, kind) == redis_before[kind]
    assert redis_indexes(settings) == indexes_before

    # from the topics (malformed events skipped, not dead-lettered again), Parquet only; each
    # task holds at most 500 facts at once, a small part of its history
    chunked = settings.model_copy(update={"task_chunk_rows": 500})
    summary = recompute(
        spark, chunked, source="topic", output=str(tmp_path / "topic-out"), publish=False
    )
    assert summary.skipped > 0 and summary.events == len(good) + summary.skipped
    # (a chunk may grow by the lines of one order held back from the previous one)
    assert 0 < summary.max_chunk_rows <= 520 and summary.events // (4 * summary.tasks) > 500
    for kind, _, _ in KINDS:
        assert _keyed(read_profiles(tmp_path / "topic-out", kind), kind) == streamed_profiles[kind]

    # --store limits the work to those stores
    store = sorted(summary.stores)[0]
    one = recompute(
        spark, settings, source="lake", stores=[store], output=str(tmp_path / "one"), publish=False
    )
    assert set(one.stores) == {store}
    assert _keyed(read_profiles(tmp_path / "one", "customer"), "customer") == {
        k: v for k, v in streamed_profiles["customer"].items() if k[0] == store
    }


def test_recompute_as_of_equals_pandas_over_earlier_events(
    spark: Any, streamed: Settings, tmp_path: Path
) -> None:
    from storeml.batch.recompute import recompute
    from storeml.errors import ConfigError

    settings = streamed
    good, _ = input_events(settings)
    times = sorted(r["event_time"] for _, r, *_ in good)
    as_of = times[len(times) // 2]
    before = [e for e in good if e[1]["event_time"] <= as_of]
    want_c, want_p = reference_profiles(before)

    with pytest.raises(ConfigError, match="--output only"):
        recompute(spark, settings, as_of_ms=as_of, publish=True, output=str(tmp_path / "x"))
    for source in ("lake", "topic"):
        out = tmp_path / source
        recompute(spark, settings, source=source, as_of_ms=as_of, output=str(out))
        got_c = {(r["store_id"], r["customer_id"]): r for r in read_profiles(out, "customer")}
        got_p = {(r["store_id"], r["product_id"]): r for r in read_profiles(out, "product")}
        assert_profiles_match(got_c, want_c)
        assert_profiles_match(got_p, want_p)


def test_recompute_racing_the_stream_never_leaves_an_older_profile_in_redis(
    spark: Any, streamed: Settings, tmp_path: Path
) -> None:
    from storeml.batch.recompute import recompute

    settings = streamed
    assert settings.lake_path is not None
    old_lake = shutil.copytree(settings.lake_path, tmp_path / "old-lake")  # history as of now
    produce_events(
        settings.kafka_config(),
        list(
            generate(GeneratorConfig(stores=6, events=4_000, seed=23, start_ms=1_706_745_600_000))
        ),
        settings.topic_orders,
        settings.topic_products,
    )
    old = settings.model_copy(update={"lake_dir": old_lake})
    results: list[Any] = []
    racer = threading.Thread(target=lambda: results.append(recompute(spark, old, source="lake")))
    racer.start()  # publishes the older profiles while the stream folds the new events
    _run_stream(spark, settings)
    racer.join(600)
    assert results and results[0].redis_skipped + results[0].redis_written > 0

    for kind, attr, schema in KINDS:
        newest = _latest(settings, getattr(settings, attr), schema, kind)
        redis = _redis(settings, kind)
        assert len(redis) == len(newest)
        for (store, entity), record in newest.items():
            stored = redis[f":{{{store}}}:{kind}:{entity}"]
            assert int(stored["profile_version"]) == record["profile_version"], (store, entity)


def test_the_latest_profiles_come_from_the_stream_state_without_a_recompute(
    spark: Any, streamed: Settings, tmp_path: Path
) -> None:
    """What a scheduled run scores: the stream's last committed profiles, read from its state."""
    from storeml.batch.latest import export_latest_profiles

    served = {"propensity", "predicted_categories", "model", "shadow", "source"}
    summary = export_latest_profiles(spark, streamed, tmp_path / "latest")
    assert summary.version >= 2
    for kind, attr, schema in KINDS:
        want = {
            key: {f: v for f, v in record.items() if f not in served}
            for key, record in _latest(streamed, getattr(streamed, attr), schema, kind).items()
        }
        got = {
            (r["store_id"], r[f"{kind}_id"]): {f: v for f, v in r.items() if f not in served}
            for r in read_profiles(tmp_path / "latest", kind)
        }
        assert got == want, kind
    assert summary.customers == len(read_profiles(tmp_path / "latest", "customer"))
