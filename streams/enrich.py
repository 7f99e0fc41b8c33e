"""The enrichment stream: Kafka -> decode -> fold profiles -> score per store -> Kafka + Redis.

One micro-batch, as wired by :class:`EnrichBatch` (a ``foreachBatch`` function)::

    Kafka ranges ──read + decode (event_source, decode)──▶ facts ──by bucket: enrich_facts(enrich_task)──▶ metrics
                         │                                               │
                 dead letters (Kafka)                 state (state_step), profiles (publish: Kafka + Redis)

The parts, in the order of the data flow:

* ``streams/context.py``: :class:`JobContext`, the plain values every task receives;
* ``streams/decode.py`` (inside the source's read task): Avro single-object messages are decoded
  and validated; bad ones go to the dead-letter topic with the reason and the original bytes, the
  rest become fact rows tagged with their store's state bucket;
* ``streams/tasks.py``: the facts are placed by state bucket into one enrich task per shuffle
  partition; each task runs the state step (``streams/state_step.py``: read the touched entities,
  fold, commit), then scores each store's touched profiles with one model call per store and
  writes them to Kafka and Redis (``streams/publish.py``);
* this module: the driver side, one micro-batch after another.

The registry aliases are resolved on the driver at the start of every micro-batch, so a moved alias
is served from the next batch on, without a restart; the versions are recorded in the checkpoint
(``models/<batch>.json``). Replays after a crash recompute the same records (same offsets, same
state version, same model versions), which the sinks absorb (see ``connectors``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storeml.connectors.registry_aliases import AliasResolver
from storeml.settings import Settings
from storeml.streams.checkpoint import check_checkpoint
from storeml.streams.context import JobContext, job_context
from storeml.streams.decode import DECODE_STATS, decode_batches, decode_frames, decode_schema
from storeml.streams.publish import (
    CUSTOMER_FIELDS,
    PRODUCT_FIELDS,
    Published,
    encode_profiles,
    profile_headers,
    publish_profiles,
)
from storeml.streams.state_step import fold_step
from storeml.streams.tasks import (
    METRICS_SCHEMA,
    TASK_STAGES,
    batch_totals,
    cache_totals,
    enrich_facts,
    enrich_task,
    metrics_frame,
    model_versions,
    partition_labels,
    shuffle_partitions,
)

__all__ = [
    "EnrichBatch",
    "publish_notices",
    "BatchReport",
    "start_enrichment",
    "source_options",
    "batch_timestamp_ms",
    "check_checkpoint",
    # re-exported: the stream's parts, from the modules that hold them
    "JobContext",
    "job_context",
    "DECODE_STATS",
    "decode_batches",
    "decode_frames",
    "decode_schema",
    "CUSTOMER_FIELDS",
    "PRODUCT_FIELDS",
    "Published",
    "encode_profiles",
    "profile_headers",
    "publish_profiles",
    "fold_step",
    "METRICS_SCHEMA",
    "TASK_STAGES",
    "batch_totals",
    "enrich_facts",
    "enrich_task",
    "metrics_frame",
    "model_versions",
    "partition_labels",
    "shuffle_partitions",
]

log = logging.getLogger("storeml.stream")


@dataclass
class BatchReport:
    """What one micro-batch did (driver side)."""

    batch_id: int
    events: int
    dead_letters: int
    facts: int
    customers: int
    products: int
    redis_written: int
    redis_skipped: int
    seconds: float
    stages: dict[str, float]
    models: dict[str, str]
    model_cache: dict[str, float]
    tasks: int = 0  # Spark tasks per stage (read, enrich): 1 for a small batch
    state: dict[str, int] = field(default_factory=dict)  # state reads/writes, summed over tasks
    registry: dict[str, float] = field(default_factory=dict)  # alias resolution (RegistryCounts)
    model_faults: int = 0  # model failures while scoring (each also a notice record)


class EnrichBatch:
    """The ``foreachBatch`` function of the enrichment stream."""

    def __init__(
        self, ctx: JobContext, on_batch: Callable[[BatchReport], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.on_batch = on_batch
        self.reports: list[BatchReport] = []
        self._labels: dict[int, dict[int, int]] = {}  # per enrich partition count
        self._compactor: subprocess.Popen[str] | None = None
        self._compacted_at = time.monotonic()
        self._started = False
        self._cleaner: Future[int] | None = None
        self._aliases = AliasResolver(ctx.tracking_uri, ctx.registry_uri, ctx.registry_timeout_s)

    def resolve_models(self, alias: str | None = None) -> dict[str, Any]:
        """Current targets of ``alias`` (default: the served one) per kind (driver side; a few ms).

        An empty alias (shadow scoring disabled) resolves to no model. The served alias missing
        at start raises :class:`~storeml.errors.ModelError`, the registry down at start
        :class:`~storeml.errors.ConnectorError`; later, both keep the versions resolved last and
        are counted in the batch report's ``registry`` (see
        :mod:`storeml.connectors.registry_aliases`). Any other alias is an optional shadow.
        """
        ctx = self.ctx
        required = alias is None or alias == ctx.serving_alias
        models = {"customer": ctx.customer_model, "product": ctx.product_model}
        return self._aliases.resolve(
            models, ctx.serving_alias if alias is None else alias, required=required
        )

    def _batch_models(self, batch_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (served, shadow) versions batch ``batch_id`` is scored with.

        They are recorded in the checkpoint before the batch runs: a replay (after a crash) uses
        the versions of its first attempt, so it publishes the same records even when an alias
        moved in between; and a driver that restarts while the registry is down serves the
        versions of the last batch (logged), instead of failing until the registry answers.
        """
        from storeml.errors import ConnectorError
        from storeml.streams.checkpoint import (
            latest_batch_models,
            read_batch_models,
            write_batch_models,
        )

        checkpoint = Path(self.ctx.state_root).parent
        recorded = read_batch_models(checkpoint, batch_id)
        if recorded is not None:
            return recorded
        try:
            handles = self.resolve_models()
            shadows = self.resolve_models(self.ctx.shadow_alias)
        except ConnectorError as exc:
            previous = latest_batch_models(checkpoint, batch_id)
            if previous is None:
                raise
            log.error(
                "batch %d: %s; serving the versions batch %d used", batch_id, exc, previous[0]
            )
            handles, shadows = previous[1], previous[2]
        write_batch_models(checkpoint, batch_id, handles, shadows)
        return handles, shadows

    def _commit_state(self, batch_id: int, metrics: list[Any]) -> dict[str, int]:
        """Write the batch's state manifest (its commit), start a due cleaning; sum the counters."""
        from storeml.connectors.state_store import clean, write_manifest

        files: dict[str, list[int]] = {}
        totals: dict[str, int] = {}
        for row in metrics:
            if not row.state:
                continue
            info = json.loads(row.state)
            files[info.pop("file")] = info.pop("changed")
            for name, value in info.items():
                totals[name] = totals.get(name, 0) + int(value)
        write_manifest(self.ctx.state_root, batch_id, files)
        if batch_id % self.ctx.snapshot_every == 0 and (
            self._cleaner is None or self._cleaner.done()
        ):
            if self._cleaner is not None and self._cleaner.exception() is not None:
                log.error("state cleaning failed: %s", self._cleaner.exception())
            self._cleaner = _driver_pool.submit(
                clean, self.ctx.state_root, batch_id, self.ctx.retain
            )
        return totals

    def _maybe_compact(self) -> None:
        """Start a lake compaction (a low-priority child process) when one is due and none runs.

        A failed compaction is logged and retried at the next interval; the stream goes on, and
        the incoming files are read as they are meanwhile.
        """
        from storeml.connectors.event_lake import compaction_outcome, start_compaction
        from storeml.errors import ConnectorError

        if self.ctx.lake_root is None:
            return
        if self._compactor is not None:
            if self._compactor.poll() is None:
                return
            try:
                done = compaction_outcome(self._compactor)
                log.info(
                    "event lake: %d incoming files (%d events) -> %d files in %.1fs",
                    done.incoming_files,
                    done.events,
                    done.files_written,
                    done.seconds,
                )
            except ConnectorError as exc:
                log.error("%s; retried at the next interval", exc)
            self._compactor = None
        if time.monotonic() - self._compacted_at < self.ctx.lake_compact_seconds:
            return
        self._compacted_at = time.monotonic()
        self._compactor = start_compaction(self.ctx.lake_root)

    def close(self, timeout: float = 60.0) -> None:
        """Let a running lake compaction finish (within ``timeout``, then stop it); call when the
        query has stopped, so that no compaction outlives the stream holding the lake's lock.
        A compaction stopped half-way is finished by the next one (``docs/lake.md``)."""
        compactor, self._compactor = self._compactor, None
        if compactor is None or compactor.poll() is not None:
            return
        try:
            compactor.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("event lake: compaction still running after %.0fs; stopping it", timeout)
            compactor.terminate()
            try:
                compactor.wait(10)
            except subprocess.TimeoutExpired:
                compactor.kill()
                compactor.wait()

    def __call__(self, facts: Any, batch_id: int) -> None:
        """Enrich one micro-batch of the ``storeml_events`` source (already decoded facts)."""
        from storeml.connectors.state_store import prepare_checkpoint

        started = time.perf_counter()
        if not self._started:  # files of an attempt that never committed go first
            prepare_checkpoint(self.ctx.state_root, batch_id)
            self._started = True
        handles, shadows = self._batch_models(batch_id)
        resolve_s = time.perf_counter() - started
        # as many enrich tasks as read tasks: the source made a small batch one task
        spark = facts.sparkSession
        partitions = max(1, min(shuffle_partitions(spark), facts.rdd.getNumPartitions()))
        if partitions not in self._labels:
            self._labels[partitions] = partition_labels(spark, self.ctx.state_buckets, partitions)
        job = enrich_facts(
            facts,
            enrich_task(
                self.ctx,
                batch_id,
                handles,
                shadows,
                partitions,
                batch_timestamp_ms(self.ctx.state_root, batch_id),
            ),
            self._labels[partitions],
            partitions,
        )
        plan_s = time.perf_counter() - started - resolve_s
        metrics = job.collect()
        state = self._commit_state(batch_id, metrics)
        totals = batch_totals(metrics)
        if totals["faults"]:
            publish_notices(self.ctx, batch_id, totals["faults"], totals["fault_count"])
        report = BatchReport(
            batch_id=batch_id,
            events=totals["events"],
            dead_letters=totals["dead_letters"],
            facts=totals["facts"],
            customers=totals["customers"],
            products=totals["products"],
            redis_written=totals["redis_written"],
            redis_skipped=totals["redis_skipped"],
            seconds=time.perf_counter() - started,
            stages={"resolve_models_s": resolve_s, "plan_s": plan_s, **totals["stages"]},
            models=model_versions(handles, shadows),
            model_cache=cache_totals(metrics),
            tasks=partitions,
            state=state,
            model_faults=totals["fault_count"],
            registry=self._aliases.take_counts(),
        )
        self.reports.append(report)
        self._maybe_compact()
        log.info(
            "batch %d: %d events (%d dead letters) -> %d customer, %d product profiles in %.2fs;"
            " models %s; model cache hit rate %.3f, %d store models in memory",
            batch_id,
            report.events,
            report.dead_letters,
            report.customers,
            report.products,
            report.seconds,
            report.models,
            report.model_cache["hit_rate"],
            report.model_cache.get("store_models", 0),
        )
        if self.on_batch is not None:
            self.on_batch(report)


def publish_notices(
    ctx: JobContext, batch_id: int, faults: list[dict[str, Any]], count: int
) -> None:
    """Log the batch's model failures and send one notice record per failure (driver side).

    Notices are JSON values on ``ctx.notices_topic`` keyed by store (empty for a whole model
    version), with a ``storeml.notice`` header naming their kind; the monitor and operators read
    them. A replayed batch sends its notices again (at least once, like the dead letters). A
    failure to send is logged: the profiles are already written.
    """
    from storeml.connectors.kafka_sink import KafkaRecordSink
    from storeml.errors import ConnectorError
    from storeml.streams.context import client

    for fault in faults[:10]:
        log.warning(
            "batch %d: %s model %s:%s (%s) failed for %s: %s; %d rows served by the fallback",
            batch_id,
            fault["kind"],
            fault["model"],
            fault["version"],
            fault["role"],
            f"store {fault['store_id']!r}" if fault["store_id"] is not None else "every store",
            fault["error"],
            fault["rows"],
        )
    if count > 10:
        log.warning(
            "batch %d: %d model failures in all (notices on %s)", batch_id, count, ctx.notices_topic
        )
    if not ctx.notices_topic:
        return
    producer: KafkaRecordSink = client(KafkaRecordSink, ctx.kafka, None)
    try:
        for fault in faults:
            value = {"notice": "model_fault", "batch_id": batch_id, **fault}
            producer.produce(
                ctx.notices_topic,
                (fault["store_id"] or "").encode(),
                json.dumps(value, sort_keys=True).encode(),
                [("storeml.notice", b"model_fault")],
            )
        producer.flush(30)
    except ConnectorError as exc:
        log.error("batch %d: notices not sent: %s", batch_id, exc)


_driver_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storeml-state-clean")


def batch_timestamp_ms(state_root: str, batch_id: int) -> int:
    """Spark's timestamp of micro-batch ``batch_id``, from its offset log entry.

    The write-ahead log records it before the batch runs, so a replayed batch gets the same
    timestamp (idle expiry then drops the same entities). The checkpoint is the state root's
    parent; without an entry (tests calling the batch function directly) the clock is used.
    """
    from pathlib import Path

    path = Path(state_root).parent / "offsets" / str(batch_id)
    try:
        lines = path.read_text().splitlines()
        return int(json.loads(lines[1])["batchTimestampMs"])
    except (OSError, IndexError, KeyError, ValueError):
        return int(time.time() * 1000)


def source_options(settings: Settings, tasks: int | None = None) -> dict[str, str]:
    """Options of the ``storeml_kafka`` source reading the order and product topics.

    Secret Kafka properties (:func:`~storeml.redaction.is_secret_key`) go into the one option
    ``kafkaSecrets``, whose name Spark's default ``spark.redaction.regex`` redacts in plans and
    logs; ``kafka.ssl.key.pem`` or ``kafka.sasl.jaas.config`` would be printed as they are.

    ``tasks``: most Spark tasks per read (``maxPartitions``, and one per
    ``settings.task_records`` records); None: one per topic partition.
    """
    from storeml.connectors.kafka_admin import watermark_method_for
    from storeml.connectors.kafka_source import SECRETS_OPTION
    from storeml.redaction import is_secret_key

    options = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "subscribe": f"{settings.topic_orders},{settings.topic_products}",
        "startingOffsets": settings.starting_offsets,
        "maxRecordsPerTrigger": str(settings.max_records_per_batch),
        "watermarkMethod": watermark_method_for(settings.kafka_flavor),
    }
    secrets: dict[str, str] = {}
    for name, value in settings.kafka_config().items():
        if is_secret_key(name):
            secrets[name] = str(value)  # in kafkaSecrets: Spark redacts that option's value
        elif name != "bootstrap.servers":
            options[f"kafka.{name}"] = str(value)
    if secrets:
        options[SECRETS_OPTION] = json.dumps(secrets, sort_keys=True)
    if tasks:
        options["maxPartitions"] = str(tasks)
        options["minRecordsPerPartition"] = str(settings.task_records)
    return options


def start_enrichment(
    spark: Any,
    settings: Settings,
    *,
    available_now: bool = False,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> tuple[Any, EnrichBatch]:
    """Start the enrichment query; returns (StreamingQuery, the foreachBatch function)."""
    from storeml.streams.event_source import EVENT_SOURCE_NAME, EventSource, context_option

    checkpoint = settings.checkpoint_path
    meta = check_checkpoint(checkpoint, settings)
    ctx = dataclasses.replace(
        job_context(settings, str(checkpoint), meta.state_id), version_base=meta.version_base
    )
    spark.dataSource.register(EventSource)
    tasks = settings.source_tasks or shuffle_partitions(spark)
    reader = (
        spark.readStream.format(EVENT_SOURCE_NAME)
        .options(**source_options(settings, tasks))
        .options(**context_option(ctx))
    )
    handler = EnrichBatch(ctx, on_batch)
    writer = (
        reader.load()
        .writeStream.queryName("storeml_enrich")
        .foreachBatch(handler)
        .option("checkpointLocation", str(checkpoint))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    return writer.start(), handler


def report_dict(report: BatchReport) -> dict[str, Any]:
    return asdict(report)
