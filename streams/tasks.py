"""The enrich task and its placement: facts by state bucket -> one task per shuffle partition.

:func:`enrich_facts` places the decoded facts of a micro-batch (or of a recompute's history) by
state bucket into one Spark task per shuffle partition and runs :func:`enrich_task` (or the
recompute's chunked task) there; each returns one metrics row (:data:`METRICS_SCHEMA`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from storeml.streams.context import JobContext, client
from storeml.streams.decode import DECODE_STATS
from storeml.streams.publish import Published, expire_profiles, publish_profiles
from storeml.streams.state_step import fold_step, state_store

__all__ = [
    "StageTimer",
    "TASK_STAGES",
    "METRICS_SCHEMA",
    "enrich_task",
    "enrich_facts",
    "metrics_frame",
    "partition_labels",
    "shuffle_partitions",
    "batch_totals",
    "model_versions",
    "cache_totals",
]

#: Seconds each enrich task spends per stage (columns of :data:`METRICS_SCHEMA`).
TASK_STAGES = ("state_s", "lake_s", "fold_s", "score_s", "encode_s", "kafka_s", "redis_s")

METRICS_SCHEMA = (
    "buckets string, facts long, customers long, products long, kafka_records long,"
    " redis_written long, redis_skipped long, "
    + ", ".join(f"{name} double" for name in TASK_STAGES)
    + ", models string, pid long, cache string, stores string,"
    " events long, dead_letters long, decode_s double, state string, faults string,"
    " fault_count long"
)

_COUNTS = ("facts", "customers", "products", "redis_written", "redis_skipped", "fault_count")


class StageTimer:
    """Seconds a task spends per stage: ``lap(name)`` adds the time since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now


def enrich_task(
    ctx: JobContext,
    batch_id: int | None,
    handles: dict[str, Any],
    shadows: dict[str, Any],
    partitions: int = 1,
    batch_ts_ms: int = 0,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Per-task function (run by :func:`enrich_facts`): facts -> state, scores, sinks; metrics.

    The task is number ``bucket % partitions`` of ``partitions`` and holds the state buckets
    :func:`~storeml.connectors.state_store.task_buckets` names. It reads the state rows of the
    entities its facts touch (as of batch ``batch_id - 1``), folds all its facts in one call,
    commits the new rows as batch ``batch_id``, and runs the lake, the scoring, the encoding and
    the sinks once (their fixed costs per call dominate small micro-batches). ``batch_ts_ms`` is
    Spark's timestamp of the batch (idle expiry). ``batch_id`` None folds the facts into an empty
    state and keeps none (a caller that sees each entity's whole history at once).
    """

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        from storeml.connectors.event_lake import EventLakeSink
        from storeml.models.profiles import facts_frame

        timer = StageTimer()
        lap = timer.lap

        if ctx.lake_root is not None:
            raw = pdf.loc[pdf["raw_value"].notna()]
            lake: EventLakeSink = client(EventLakeSink, ctx.lake_root)
            lake.write(
                raw[
                    [
                        "topic",
                        "partition",
                        "offset",
                        "raw_key",
                        "raw_value",
                        "store_id",
                        "event_time",
                    ]
                ].rename(columns={"raw_key": "key", "raw_value": "value"})
            )
            lap("lake_s")
        facts = facts_frame(pdf)
        fact_count = len(facts)
        store = state_store(ctx) if batch_id is not None else None
        step = fold_step(
            store,
            facts,
            batch_id,
            partitions,
            ctx.state_buckets,
            batch_ts_ms,
            ctx.state_ttl_ms,
            lap,
        )
        first_bucket = int(pdf["bucket"].min())  # names this task's files
        done = publish_profiles(
            ctx,
            step.customers,
            step.products,
            handles,
            shadows,
            str(first_bucket),
            lap,
            producer_id=f"task{first_bucket % partitions}of{partitions}",
        )
        if ctx.publish and ctx.state_expire_redis and step.expired:
            expire_profiles(ctx, step.expired)
            lap("redis_s")
        if step.committed is not None:
            step.committed.result()  # the state is durable before Spark commits the batch
        lap("state_s")

        return metrics_frame(
            sorted(int(b) for b in pdf["bucket"].unique()),
            fact_count,
            done,
            timer.seconds,
            model_versions(handles, shadows),
            step.state_info,
        )

    return run


def metrics_frame(
    buckets: list[int],
    facts: int,
    done: Published,
    timings: dict[str, float],
    versions: dict[str, str],
    state_info: dict[str, Any],
) -> pd.DataFrame:
    """The one metrics row (:data:`METRICS_SCHEMA`) an enrich or recompute task returns."""
    return pd.DataFrame(
        [
            {
                "buckets": ",".join(str(b) for b in buckets),
                "facts": facts,
                "customers": done.customers,
                "products": done.products,
                "kafka_records": done.kafka_records,
                "redis_written": done.redis_written,
                "redis_skipped": done.redis_skipped,
                **{name: timings.get(name, 0.0) for name in TASK_STAGES},
                "models": json.dumps(versions, sort_keys=True),
                "pid": os.getpid(),
                "cache": json.dumps(done.cache, sort_keys=True),
                "stores": json.dumps(done.stores),
                "events": 0,
                "dead_letters": 0,
                "decode_s": 0.0,
                "state": json.dumps(state_info),
                "faults": json.dumps(done.faults),
                "fault_count": done.fault_count,
            }
        ]
    )


def _decode_metrics(stats: pd.DataFrame) -> pd.DataFrame:
    """One metrics row (no bucket) with the counts of :data:`DECODE_STATS` rows."""
    row: dict[str, Any] = {name: 0 for name in ("kafka_records", *_COUNTS)}
    row.update({name: 0.0 for name in TASK_STAGES})
    row.update(
        buckets="",
        models="{}",
        pid=os.getpid(),
        cache="",
        stores="{}",
        events=int(stats["decode_events"].sum()),
        dead_letters=int(stats["decode_dead_letters"].sum()),
        decode_s=float(stats["decode_s"].sum()),
        state="",
        faults="[]",
    )
    return pd.DataFrame([row])


def batch_totals(metrics: list[Any]) -> dict[str, Any]:
    """Sums over the tasks' metrics rows: counts, and seconds per :data:`TASK_STAGES` and decode."""
    out: dict[str, Any] = {
        name: sum(getattr(row, name) for row in metrics)
        for name in (*_COUNTS, "events", "dead_letters")
    }
    out["stages"] = {
        name: sum(getattr(row, name) for row in metrics) for name in ("decode_s", *TASK_STAGES)
    }
    out["faults"] = [fault for row in metrics for fault in json.loads(row.faults or "[]")]
    return out


def model_versions(handles: dict[str, Any], shadows: dict[str, Any]) -> dict[str, str]:
    """``{"customer": "name:version", "customer.shadow": ...}`` (``none`` when unresolved)."""
    out = {
        kind: (f"{h.name}:{h.version}" if h is not None else "none") for kind, h in handles.items()
    }
    out.update({f"{kind}.shadow": f"{h.name}:{h.version}" for kind, h in shadows.items() if h})
    return out


def cache_totals(metrics: list[Any]) -> dict[str, float]:
    """Model-cache counters summed over the worker processes that ran this batch's tasks.

    Each task reports its process's cumulative counters; the last report per process counts.
    """
    latest: dict[int, dict[str, float]] = {}
    for row in metrics:
        if row.cache:  # decode rows carry none
            latest[int(row.pid)] = json.loads(row.cache)
    totals: dict[str, float] = {}
    for stats in latest.values():
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + value
    lookups = totals.get("hits", 0) + totals.get("misses", 0)
    totals["hit_rate"] = totals.get("hits", 0) / lookups if lookups else 1.0
    totals["processes"] = len(latest)
    return totals


def partition_labels(spark: Any, buckets: int, partitions: int) -> dict[int, int]:
    """For each state bucket, an int whose Spark hash partition is ``bucket % partitions``.

    ``repartition(n, col)`` places rows by ``pmod(hash(col), n)``, which may put several of a few
    buckets in one partition and leave a core idle (buckets 0 and 1 share a partition of 2). Rows
    are repartitioned by these labels instead, so buckets spread evenly over the partitions.
    """
    from pyspark.sql import functions as F

    candidates = spark.range(0, 64 * max(buckets, partitions)).select(
        F.col("id").cast("int").alias("label"),
        F.expr(f"pmod(hash(cast(id as int)), {partitions})").alias("partition"),
    )
    free: dict[int, list[int]] = {}
    for row in candidates.collect():
        free.setdefault(int(row.partition), []).append(int(row.label))
    return {bucket: free[bucket % partitions].pop(0) for bucket in range(buckets)}


def enrich_facts(
    facts: Any,
    run_task: Callable[[Any], Any],
    labels: dict[int, int],
    partitions: int | None = None,
    chunked: bool = False,
) -> Any:
    """Metrics DataFrame of ``run_task`` applied to each task's buckets (a lazy Spark plan).

    ``labels`` come from :func:`partition_labels` for ``partitions`` (default: the session's
    shuffle partitions); each partition's Python worker gathers its buckets' facts whole and hands
    them to ``run_task`` (a micro-batch), or, ``chunked``, hands it an iterator of the facts in
    Arrow-batch-sized chunks, sorted by source coordinates and never splitting one message's rows,
    from which ``run_task`` yields metrics rows (history larger than memory; Spark's sort spills). The decode tasks' :data:`DECODE_STATS` rows become one metrics row (no bucket) per
    partition that received any.
    """
    from pyspark.sql import functions as F

    mapping = F.create_map(*[F.lit(v) for pair in sorted(labels.items()) for v in pair])
    placed = facts.withColumn("_part", mapping[F.col("bucket")]).repartition(
        partitions or shuffle_partitions(facts.sparkSession), "_part"
    )

    def run_chunked(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        stats: list[pd.DataFrame] = []

        def facts_only() -> Iterator[pd.DataFrame]:
            # Rows arrive sorted by source coordinates; the rows of one message (an order's
            # lines) are held back until the next chunk when a chunk ends among them, so that
            # no message is folded in two pieces (the fold counts an order once per chunk).
            carry: pd.DataFrame | None = None
            for chunk in chunks:
                marks = chunk["kind"] == DECODE_STATS
                if marks.any():
                    stats.append(chunk[marks])
                    chunk = chunk[~marks]
                if not len(chunk):
                    continue
                rows = chunk if carry is None else pd.concat([carry, chunk], ignore_index=True)
                last = rows.iloc[-1]
                tail = (
                    (rows["offset"] == last["offset"])
                    & (rows["partition"] == last["partition"])
                    & (rows["topic"] == last["topic"])
                )
                carry = rows[tail]
                if (~tail).any():
                    yield rows[~tail].drop(columns="_part").reset_index(drop=True)
            if carry is not None and len(carry):
                yield carry.drop(columns="_part").reset_index(drop=True)

        yield from run_task(facts_only())
        if stats:
            yield _decode_metrics(pd.concat(stats, ignore_index=True))

    def run(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        frames = [chunk for chunk in chunks if len(chunk)]
        if not frames:
            return
        rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        stats = rows["kind"] == DECODE_STATS
        if stats.any():
            yield _decode_metrics(rows[stats])
            rows = rows[~stats]
        if len(rows):
            yield run_task(rows.drop(columns="_part").reset_index(drop=True))

    if chunked:
        placed = placed.sortWithinPartitions("topic", "partition", "offset")
        return placed.mapInPandas(run_chunked, METRICS_SCHEMA)
    return placed.mapInPandas(run, METRICS_SCHEMA)


def shuffle_partitions(spark: Any) -> int:
    """The session's ``spark.sql.shuffle.partitions``."""
    return int(spark.conf.get("spark.sql.shuffle.partitions"))
