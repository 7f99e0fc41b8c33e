"""The event lake: every event the stream accepted, archived as partitioned Parquet, exactly once.

History outlives topic retention here, and the recompute (``batch/recompute.py``) reads it. Layout,
Hive-style so Spark, pyarrow or DuckDB read it as one table partitioned by store and date::

    <root>/store_id=<store>/event_date=<YYYY-MM-DD>/<topic>+<partition>+<first offset>-0.parquet
    <root>/_incoming/<topic>+<partition>+<first offset>.parquet     not yet compacted

Each file has the columns of :data:`LAKE_SCHEMA`: where the event came from (``topic``,
``partition``, ``offset``), the message exactly as received (``key``, ``value``: Avro single-object
bytes, so any later schema version still decodes it), and ``event_time`` (epoch ms, for ``--as-of``
pruning); incoming files also carry ``store_id`` and ``event_date`` as columns.

**Two steps.** A micro-batch writes one *incoming* file per enrich task (a file per store and day
per micro-batch would mean thousands of tiny files per second with many stores, and file creation
was the stream's largest cost). :func:`compact_lake`, run by the stream's driver every
``STOREML_LAKE_COMPACT_SECONDS`` (in a child process at the lowest CPU priority,
:func:`start_compaction`, so that it never slows the micro-batches down) and by
``storeml lake compact``, moves incoming files into the store/date layout: one file per store and
day per compaction.

**Exactly once.** File names are fixed by the smallest source coordinates they hold, so a replayed
micro-batch (same offset ranges, same buckets) rewrites its incoming file instead of adding one,
and a repeated compaction of the same files rewrites the same outputs. Every file is written under
a temporary name and renamed, so a reader never sees half a file. Compaction writes its outputs
before it deletes its inputs; if it dies in between, an event sits in both places for a while, and
:func:`read_lake` drops repeated ``(topic, partition, offset)`` rows, so it is still counted once.
Compactions of one lake are serialised by a lock file.

The root is a local or mounted shared folder (every Spark executor must reach it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
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

__all__ = [
    "LAKE_SCHEMA",
    "PARTITIONS",
    "INCOMING",
    "EventLakeSink",
    "Compaction",
    "compact_lake",
    "compact_all",
    "start_compaction",
    "compaction_outcome",
    "read_lake",
    "lake_dates",
]

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
#: Columns of an incoming file.
INCOMING_SCHEMA = pa.schema([*LAKE_SCHEMA, *PARTITIONS])
INCOMING = "_incoming"
STAGING = "_staging"
_COORDINATES = ["topic", "partition", "offset"]


def _dates(event_time: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` (UTC) of epoch-millisecond times."""
    return np.datetime_as_string(event_time.astype("datetime64[ms]"), unit="D")


def _name(first: pd.Series | dict) -> str:
    return f"{first['topic']}+{int(first['partition'])}+{int(first['offset'])}"


class EventLakeSink(Sink):
    """Archives accepted events as incoming files, one per write (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def setup(self) -> None:
        try:
            Path(self.root, INCOMING).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectorError(
                f"event lake {self.root} is not writable: {exc}; set STOREML_LAKE_DIR to a folder"
                " every executor can write (or STOREML_LAKE_ENABLED=false)"
            ) from exc

    def write(self, events: pd.DataFrame) -> int:
        """Archive ``events`` (columns of :data:`LAKE_SCHEMA` plus ``store_id``); returns files.

        The file is named after the smallest ``(topic, partition, offset)`` of ``events``, and
        rows are sorted by it, so the same events always give the same file.
        """
        if events.empty:
            return 0
        self.ensure_setup()
        import pyarrow.parquet as pq

        events = events.sort_values(_COORDINATES, kind="stable")
        table = pa.Table.from_pandas(
            events.assign(event_date=_dates(events["event_time"].to_numpy(dtype="int64"))),
            schema=INCOMING_SCHEMA,
            preserve_index=False,
        )
        target = Path(self.root, INCOMING, f"{_name(events.iloc[0])}.parquet")
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, target)
        except (OSError, pa.ArrowException) as exc:
            temporary.unlink(missing_ok=True)
            raise ConnectorError(f"cannot archive events to the lake {self.root}: {exc}") from exc
        return 1


@dataclass(frozen=True)
class Compaction:
    """What one :func:`compact_lake` call did."""

    incoming_files: int
    events: int
    files_written: int
    seconds: float


def compact_lake(root: str | Path, *, max_files: int = 20) -> Compaction:
    """Move up to ``max_files`` incoming files into the store/date layout (module docstring).

    Returns what it did; does nothing (zeros) when another compaction of this lake holds the lock.
    """
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    started = time.perf_counter()
    folder = Path(root, INCOMING)
    if not folder.is_dir():
        return Compaction(0, 0, 0, 0.0)
    with open(Path(root, ".compaction.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Compaction(0, 0, 0, time.perf_counter() - started)
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        files = files[:max_files]
        if not files:
            return Compaction(0, 0, 0, time.perf_counter() - started)
        try:
            table = pa.concat_tables([pq.read_table(p, schema=INCOMING_SCHEMA) for p in files])
            frame = table.to_pandas().drop_duplicates(_COORDINATES)
            frame = frame.sort_values(_COORDINATES, kind="stable")
            table = pa.Table.from_pandas(frame, schema=INCOMING_SCHEMA, preserve_index=False)
            staging = Path(root, STAGING, uuid.uuid4().hex)
            ds.write_dataset(
                table,
                staging,
                format="parquet",
                partitioning=ds.partitioning(PARTITIONS, flavor="hive"),
                basename_template=f"{_name(frame.iloc[0])}-{{i}}.parquet",
                max_partitions=1 << 20,
                use_threads=False,
            )
            written = 0
            for parent, _, names in os.walk(staging):
                target = Path(root, os.path.relpath(parent, staging))
                for file_name in names:
                    target.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(parent, file_name), target / file_name)
                    written += 1
            shutil.rmtree(staging, ignore_errors=True)
            for path in files:  # only once every output is in place
                path.unlink(missing_ok=True)
        except (OSError, pa.ArrowException) as exc:
            raise ConnectorError(f"cannot compact the event lake {root}: {exc}") from exc
        return Compaction(len(files), len(frame), written, time.perf_counter() - started)


def compact_all(root: str | Path) -> Compaction:
    """:func:`compact_lake` until no incoming file is left; the totals."""
    started = time.perf_counter()
    files = events = written = 0
    while (done := compact_lake(root)).incoming_files:
        files, events, written = (
            files + done.incoming_files,
            events + done.events,
            written + done.files_written,
        )
    return Compaction(files, events, written, time.perf_counter() - started)


def start_compaction(root: str | Path) -> subprocess.Popen[str]:
    """:func:`compact_all` in a child process at the lowest CPU priority (``nice`` 19).

    Compacting reads and writes thousands of small files; in the driver's own process it took a
    core from the stream for seconds and stalled micro-batches. Collect the outcome with
    :func:`compaction_outcome` once ``poll()`` is not None.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with contextlib.suppress(OSError):  # a platform without priorities still compacts
        os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    return process


def compaction_outcome(process: subprocess.Popen[str]) -> Compaction:
    """What a finished :func:`start_compaction` did; :class:`ConnectorError` if it failed."""
    out, err = process.communicate()
    if process.returncode != 0:
        raise ConnectorError(
            f"event lake compaction exited with {process.returncode}: {err.strip()[-4000:]}"
        )
    return Compaction(**json.loads(out.strip().splitlines()[-1]))


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

    Compacted and incoming files alike. ``stores`` and ``until_ms`` (events at or before, epoch
    ms) prune compacted partitions before any file is read. Each ``(topic, partition, offset)``
    appears once. Raises :class:`ConnectorError` when the lake holds no events at all.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    compacted = any(Path(root).glob("store_id=*"))
    incoming = [str(p) for p in Path(root, INCOMING).glob("*.parquet")]
    if not compacted and not incoming:
        raise ConnectorError(
            f"the event lake {root} holds no events; run the stream with STOREML_LAKE_ENABLED,"
            " or recompute --from-topic"
        )
    schema = from_arrow_schema(INCOMING_SCHEMA)  # compacted files: the last two from the path
    parts = []
    # a compaction may delete incoming files after they were listed: they were compacted first
    reader = spark.read.schema(schema).option("ignoreMissingFiles", "true")
    if compacted:
        parts.append(reader.parquet(root))
    if incoming:
        parts.append(reader.parquet(*incoming))
    frame = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    if stores is not None:
        frame = frame.where(F.col("store_id").isin(list(stores)))
    if until_ms is not None:
        frame = frame.where(
            (F.col("event_date") <= lake_dates(until_ms)) & (F.col("event_time") <= until_ms)
        )
    return frame.select("topic", "partition", "offset", "key", "value").dropDuplicates(_COORDINATES)


if __name__ == "__main__":  # start_compaction's child: python -m <this module> <root>
    try:
        print(json.dumps(asdict(compact_all(sys.argv[1]))))
    except ConnectorError as error:
        sys.exit(str(error))  # the message on stderr, exit status 1
