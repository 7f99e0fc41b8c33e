"""The event lake: every event the stream accepted, archived as partitioned Parquet, exactly once.

History outlives topic retention here, and the recompute (``batch/recompute.py``) reads it. Layout,
Hive-style so Spark, pyarrow or DuckDB read it as one table partitioned by store and date::

    <root>/store_id=<store>/event_date=<YYYY-MM-DD>/<topic>+<partition>+<first offset>-0.parquet

Partition values are URI-escaped. Each file holds the events of one store and day that one write
(the stream: one state bucket of one micro-batch) archived, with the
columns of :data:`LAKE_SCHEMA`: where the event came from (``topic``, ``partition``, ``offset``),
the message exactly as received (``key``, ``value``: Avro single-object bytes, so any later schema
version still decodes it), and ``event_time`` (epoch ms, for ``--as-of`` pruning).

**Exactly once.** A file's name is fixed by the smallest source coordinates of the write it came
from, so when a crashed micro-batch is replayed (same offset ranges, same buckets) its files are
rewritten under the same names instead of added. A file is written under ``<root>/_staging`` and renamed into place, so a
reader never sees half a file; readers skip ``_``-prefixed folders. :func:`read_lake` also drops
repeated ``(topic, partition, offset)`` rows, so even a replay cut differently (a changed chunk
cap between crash and restart) cannot count an event twice.

The root is a local or mounted shared folder (every Spark executor must reach it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from storeml.connectors.base import Sink
from storeml.errors import ConnectorError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["LAKE_SCHEMA", "PARTITIONS", "EventLakeSink", "read_lake", "lake_dates"]

#: Columns of a lake file (the partition columns ``store_id`` and ``event_date`` are in the path).
LAKE_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("event_time", pa.int64()),
    ]
)
#: Hive partition columns, outermost first.
PARTITIONS = pa.schema([("store_id", pa.string()), ("event_date", pa.string())])
STAGING = "_staging"


def _dates(event_time: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` (UTC) of epoch-millisecond times."""
    return np.datetime_as_string(event_time.astype("datetime64[ms]"), unit="D")


class EventLakeSink(Sink):
    """Archives accepted events, one write per micro-batch bucket (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def setup(self) -> None:
        try:
            Path(self.root, STAGING).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectorError(
                f"event lake {self.root} is not writable: {exc}; set STOREML_LAKE_DIR to a folder"
                " every executor can write (or STOREML_LAKE_ENABLED=false)"
            ) from exc

    def write(self, events: pd.DataFrame) -> int:
        """Archive ``events`` (columns of :data:`LAKE_SCHEMA` plus ``store_id``); returns files.

        The files are named after the smallest ``(topic, partition, offset)`` of ``events``, and
        rows are sorted by it, so the same events always give the same files.
        """
        if events.empty:
            return 0
        self.ensure_setup()
        import pyarrow.dataset as ds

        events = events.sort_values(["topic", "partition", "offset"], kind="stable")
        first = events.iloc[0]
        name = f"{first['topic']}+{int(first['partition'])}+{int(first['offset'])}"
        table = pa.Table.from_pandas(
            events.assign(event_date=_dates(events["event_time"].to_numpy(dtype="int64"))),
            schema=pa.schema([*LAKE_SCHEMA, *PARTITIONS]),
            preserve_index=False,
        )
        staging = Path(self.root, STAGING, uuid.uuid4().hex)
        try:
            ds.write_dataset(
                table,
                staging,
                format="parquet",
                partitioning=ds.partitioning(PARTITIONS, flavor="hive"),
                basename_template=f"{name}-{{i}}.parquet",
                max_partitions=1 << 20,
                use_threads=False,
            )
            files = 0
            for folder, _, names in os.walk(staging):
                target = Path(self.root, os.path.relpath(folder, staging))
                for file_name in names:
                    target.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(folder, file_name), target / file_name)
                    files += 1
        except (OSError, pa.ArrowException) as exc:
            raise ConnectorError(f"cannot archive events to the lake {self.root}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return files


def lake_dates(until_ms: int) -> str:
    """The last ``event_date`` partition that can hold events at or before ``until_ms``."""
    return datetime.fromtimestamp(until_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def read_lake(
    spark: SparkSession,
    root: str,
    *,
    stores: Iterable[str] | None = None,
    until_ms: int | None = None,
) -> DataFrame:
    """The lake as a Spark DataFrame of source rows (``topic, partition, offset, key, value``).

    ``stores`` and ``until_ms`` (events at or before, epoch ms) prune partitions before any file
    is read. Each ``(topic, partition, offset)`` appears once. Raises :class:`ConnectorError` when
    the lake holds no events at all.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        BinaryType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    if not any(p.name.startswith("store_id=") for p in Path(root).glob("store_id=*")):
        raise ConnectorError(
            f"the event lake {root} holds no events; run the stream with STOREML_LAKE_DIR set, or"
            " recompute --from-topic"
        )
    schema = StructType(
        [
            StructField("topic", StringType()),
            StructField("partition", IntegerType()),
            StructField("offset", LongType()),
            StructField("key", BinaryType()),
            StructField("value", BinaryType()),
            StructField("event_time", LongType()),
            StructField("store_id", StringType()),
            StructField("event_date", StringType()),
        ]
    )
    frame = spark.read.schema(schema).parquet(root)
    if stores is not None:
        frame = frame.where(F.col("store_id").isin(list(stores)))
    if until_ms is not None:
        frame = frame.where(
            (F.col("event_date") <= lake_dates(until_ms)) & (F.col("event_time") <= until_ms)
        )
    return frame.select("topic", "partition", "offset", "key", "value").dropDuplicates(
        ["topic", "partition", "offset"]
    )
