"""Full recompute: every profile rebuilt from history with the stream's own code (batch-to-Kafka).

Wiring only; every step is the stream's (``streams/enrich.py``)::

    history ──decode_batches──▶ facts ──by bucket: enrich_facts(recompute_task, chunked)──▶ sinks
    (event lake, or the input topics from their start)

The difference is the state: the stream folds each micro-batch into the state of the previous
one; the recompute folds each task's history, in chunks of ``task_chunk_rows`` facts, into a
task-local state (``batch/recompute_task.py``), so its memory does not grow with the history. It
runs one task per shuffle partition (``STOREML_SPARK_SHUFFLE_PARTITIONS``). The fold is made of
commutative integer aggregates, so both land on the same profile, field for field; only ``source``
differs (the recompute's record lists every offset range it folded). Scores come from the models the
aliases name when the recompute starts (champion served, challenger in shadow).

Outputs: the enriched topics and Redis (``publish``, the default), and/or Parquet files
(``output``, see :mod:`storeml.connectors.profile_files`). Publishing is safe while the stream runs:
Redis keeps the profile with the highest ``profile_version`` (events folded in), so an older
recompute never overwrites a fresher streamed profile, and topic consumers drop records at or below
the version they hold. ``as_of_ms`` rebuilds profiles as they stood then (no later event counts);
those are older than the live ones by construction, so they go to ``output`` only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from storeml.errors import ConfigError
from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["RecomputeSummary", "recompute", "read_history", "ProgressBar"]

Source = Literal["lake", "topic"]


@dataclass
class RecomputeSummary:
    """What a recompute did."""

    source: str
    events: int
    skipped: int
    customers: int
    products: int
    redis_written: int
    redis_skipped: int
    seconds: float
    stores: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    tasks: int = 0  # tasks that folded history
    max_chunk_rows: int = 0  # the most fact rows one task held at once

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self, top: int = 10) -> str:
        """A human summary: totals, then the ``top`` stores by profiles written."""
        rate = self.events / self.seconds if self.seconds else 0.0
        lines = [
            f"recompute from {self.source}: {self.events:,} events read ({self.skipped:,} invalid,"
            f" skipped) in {self.seconds:.1f}s ({rate:,.0f} events/s)",
            f"profiles: {self.customers:,} customers, {self.products:,} products in"
            f" {len(self.stores):,} stores; Redis {self.redis_written:,} written,"
            f" {self.redis_skipped:,} kept (a newer profile was there)",
            f"models: {json.dumps(self.models, sort_keys=True)}",
        ]
        ranked = sorted(self.stores.items(), key=lambda item: -sum(item[1]))
        for store, (customers, products) in ranked[:top]:
            lines.append(f"  {store}: {customers:,} customers, {products:,} products")
        if len(ranked) > top:
            lines.append(f"  ... {len(ranked) - top:,} more stores")
        return "\n".join(lines)


class ProgressBar:
    """Prints the running Spark job's task progress on one terminal line (stderr) until stopped."""

    def __init__(self, spark: SparkSession, label: str, every: float = 0.5) -> None:
        self.tracker = spark.sparkContext.statusTracker()
        self.label = label
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="storeml-progress")
        self.started = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _line(self) -> str:
        done = total = 0
        for stage_id in self.tracker.getActiveStageIds():
            info = self.tracker.getStageInfo(stage_id)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        width = 30
        filled = int(width * done / total) if total else 0
        elapsed = time.perf_counter() - self.started
        return (
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} tasks"
            f" {elapsed:6.1f}s"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sys.stderr.write(self._line())
            sys.stderr.flush()


def read_history(
    spark: SparkSession,
    settings: Settings,
    source: Source,
    *,
    stores: Iterable[str] | None = None,
    until_ms: int | None = None,
) -> DataFrame:
    """Source rows (``topic, partition, offset, key, value``) of every event in the history.

    From the topic also the record ``timestamp``, so decoding rejects far-future events as the
    stream did; the lake holds only events the stream accepted, and no timestamp.
    """
    if source == "lake":
        from storeml.connectors.event_lake import read_lake

        if settings.lake_path is None:
            raise ConfigError(
                "recompute --from-lake: the event lake is disabled (STOREML_LAKE_ENABLED=false);"
                " enable it, or use --from-topic"
            )
        return read_lake(spark, str(settings.lake_path), stores=stores, until_ms=until_ms)
    from storeml.connectors.kafka_source import KafkaDataSource
    from storeml.streams.enrich import source_options

    spark.dataSource.register(KafkaDataSource)
    options = {**source_options(settings), "startingOffsets": "earliest"}
    options.pop("maxRecordsPerTrigger")
    return (
        spark.read.format("storeml_kafka")
        .options(**options)
        .load()
        .select("topic", "partition", "offset", "timestamp", "key", "value")
    )


def recompute(
    spark: SparkSession,
    settings: Settings,
    *,
    source: Source = "lake",
    stores: Iterable[str] | None = None,
    as_of_ms: int | None = None,
    output: str | None = None,
    publish: bool | None = None,
    progress: bool = False,
    on_summary: Callable[[RecomputeSummary], None] | None = None,
) -> RecomputeSummary:
    """Rebuild profiles from ``source`` history; see the module docstring.

    ``publish`` defaults to True without ``as_of_ms`` and must stay False with it. ``stores``
    limits the recompute to those stores. ``progress`` draws a progress bar on stderr.
    """
    from pyspark.sql import functions as F

    from storeml.batch.recompute_task import recompute_task
    from storeml.streams.checkpoint import GENERATION_STEP, current_generation
    from storeml.streams.enrich import (
        DECODE_STATS,
        EnrichBatch,
        batch_totals,
        decode_batches,
        decode_schema,
        enrich_facts,
        job_context,
        model_versions,
        partition_labels,
        shuffle_partitions,
    )

    if publish is None:
        publish = as_of_ms is None
    if as_of_ms is not None and publish:
        raise ConfigError(
            "recompute --as-of rebuilds profiles as they stood in the past; they are older than"
            " the live ones, so they are written to --output only (drop --publish)"
        )
    if not publish and output is None:
        raise ConfigError("recompute with nothing to write: give --output DIR, or publish")
    store_list = sorted(set(stores)) if stores is not None else None
    started = time.perf_counter()
    ctx = dataclasses.replace(
        job_context(settings),
        dead_letter_topic=None,  # the stream dead-lettered them already
        lake_root=None,  # the recompute reads history, it does not add to it
        transactional_prefix=None,  # never fence the stream's transactional producers
        until_ms=as_of_ms,
        profiles_dir=output,
        publish=publish,
        # the live profiles' generation, so that the recompute's versions are the stream's
        version_base=current_generation(settings, ask_redis=publish) * GENERATION_STEP,
    )
    resolver = EnrichBatch(ctx)
    handles = resolver.resolve_models()
    shadows = resolver.resolve_models(ctx.shadow_alias)
    raw = read_history(spark, settings, source, stores=store_list, until_ms=as_of_ms)
    context = spark.sparkContext
    facts = raw.mapInPandas(decode_batches(ctx), decode_schema(ctx))
    if store_list is not None:  # the decode tasks' count rows have no store
        facts = facts.where((F.col("kind") == DECODE_STATS) | F.col("store_id").isin(store_list))
    partitions = shuffle_partitions(spark)
    labels = partition_labels(spark, ctx.state_buckets, partitions)
    task = recompute_task(ctx, handles, shadows, partitions, settings.task_chunk_rows)
    job = enrich_facts(facts, task, labels, partitions, chunked=True)
    context.setJobDescription(f"storeml recompute from {source}")
    batch_rows = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_rows) or "10000"
    spark.conf.set(batch_rows, str(settings.task_chunk_rows))
    try:
        if progress:
            with ProgressBar(spark, f"recompute from {source}"):
                metrics = job.collect()
        else:
            metrics = job.collect()
    finally:
        spark.conf.set(batch_rows, previous)
        if source == "lake" and settings.lake_path is not None:  # compactions may delete again
            from storeml.connectors.lake_reader import release_lake

            release_lake(settings.lake_path)
    chunking = [json.loads(row.state) for row in metrics if row.state]
    per_store: dict[str, list[int]] = {}
    for row in metrics:
        for store, counts in json.loads(row.stores).items():
            total = per_store.setdefault(store, [0, 0])
            total[0] += counts[0]
            total[1] += counts[1]
    totals = batch_totals(metrics)
    summary = RecomputeSummary(
        source=source,
        events=totals["events"],
        skipped=totals["dead_letters"],
        customers=totals["customers"],
        products=totals["products"],
        redis_written=totals["redis_written"],
        redis_skipped=totals["redis_skipped"],
        seconds=time.perf_counter() - started,
        stores=per_store,
        models=model_versions(handles, shadows),
        stages={k: v for k, v in totals["stages"].items() if k != "lake_s"},
        tasks=len(chunking),
        max_chunk_rows=max((c["max_chunk_rows"] for c in chunking), default=0),
    )
    if on_summary is not None:
        on_summary(summary)
    return summary
