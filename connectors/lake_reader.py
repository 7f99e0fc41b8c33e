"""Reading the event lake with Spark: every event once, while compactions run beside the read.

The lake's layout and its guarantees are in ``connectors/event_lake.py``. A read lists the
incoming files and then (through Spark) the compacted ones, under a shared lock that keeps a
compaction from deleting the incoming files until :func:`release_lake`; compacted files are never
deleted or replaced. So every event is in a listed file: in a compacted one, or in an incoming
one that is held (a compaction that placed its outputs after the listing left its inputs in
place). Incoming rows that are compacted already, or repeated among incoming files, are dropped
here: a broadcast probe of the incoming coordinates against the compacted files' coordinate
columns, so the values of the compacted history are never shuffled.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from storeml.connectors.event_lake import (
    COORDINATES,
    INCOMING,
    INCOMING_SCHEMA,
    READERS_LOCK,
    lake_dates,
)
from storeml.connectors.lake_ledger import Ledger
from storeml.errors import ConnectorError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["read_lake", "release_lake"]

#: Incoming files up to this size in all are checked against the compacted files by broadcast.
_BROADCAST_BYTES = 64 << 20
_pins: dict[str, list[IO[str]]] = {}  # read_lake's shared locks, by lake
_pins_guard = threading.Lock()


def read_lake(
    spark: SparkSession,
    root: str | Path,
    *,
    stores: Iterable[str] | None = None,
    until_ms: int | None = None,
) -> DataFrame:
    """The lake as a Spark DataFrame of source rows (``topic, partition, offset, key, value``).

    Compacted and incoming files alike, each ``(topic, partition, offset)`` once. ``stores`` and
    ``until_ms`` (events at or before, epoch ms) prune compacted partitions before any file is
    read. Holds the incoming files it lists until :func:`release_lake` (module docstring), so the
    frame stays whole while compactions run. Raises :class:`ConnectorError` when the lake holds
    no events at all.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    root = str(root)
    if not Path(root).is_dir():
        raise _no_events(root)
    _pin(root)  # before listing: no compaction deletes the files listed here until released
    try:
        incoming = sorted(
            p for p in Path(root, INCOMING).glob("*.parquet") if not p.name.startswith(".")
        )
        compacted = any(Path(root).glob("store_id=*"))  # Spark lists them after the incoming
        if not compacted and not incoming:
            raise _no_events(root)
        reader = spark.read.schema(from_arrow_schema(INCOMING_SCHEMA))

        def pruned(frame: DataFrame) -> DataFrame:
            if stores is not None:
                frame = frame.where(F.col("store_id").isin(list(stores)))
            if until_ms is not None:
                frame = frame.where(
                    (F.col("event_date") <= lake_dates(until_ms))
                    & (F.col("event_time") <= until_ms)
                )
            return frame

        # compacted files (the partition columns from the path) never repeat an event
        frame = pruned(reader.parquet(root)) if compacted else None
        if incoming:
            fresh = pruned(reader.parquet(*map(str, incoming))).dropDuplicates(COORDINATES)
            if frame is not None:  # drop the rows compacted already (replays, unfinished runs)
                small = sum(p.stat().st_size for p in incoming) <= _BROADCAST_BYTES
                probe = fresh.select(*COORDINATES)
                held = frame.select(*COORDINATES).join(
                    F.broadcast(probe) if small else probe, COORDINATES, "left_semi"
                )
                fresh = fresh.join(F.broadcast(held) if small else held, COORDINATES, "left_anti")
            frame = fresh if frame is None else frame.unionByName(fresh)
        assert frame is not None
        if compacted and not Ledger(root).trusted:  # compacted by an older version
            frame = frame.dropDuplicates(COORDINATES)
        return frame.select("topic", "partition", "offset", "key", "value")
    except BaseException:
        release_lake(root)
        raise


def release_lake(root: str | Path) -> None:
    """Let compactions delete the incoming files an earlier :func:`read_lake` of ``root`` listed.

    Call it once the Spark jobs over that read are done; each call releases one read (none: a
    no-op). Without it the files are held until the process ends: compactions go on placing
    their outputs meanwhile, and a later one deletes the held files.
    """
    with _pins_guard:
        handles = _pins.get(os.path.realpath(root))
        if handles:
            handles.pop().close()


def _pin(root: str) -> None:
    """A shared lock on the lake's readers' lock file, kept open in ``_pins``."""
    path = Path(root, READERS_LOCK)
    try:
        handle = open(path, "a+")  # noqa: SIM115 - open until release_lake
    except PermissionError:  # a read-only lake: the writers created the file
        try:
            handle = open(path)  # noqa: SIM115 - open until release_lake
        except OSError as exc:
            raise ConnectorError(
                f"cannot lock the event lake {root} for reading: {exc}; let this user create"
                f" {path} (or create it once, writable or not)"
            ) from exc
    fcntl.flock(handle, fcntl.LOCK_SH)  # waits while a compaction deletes its inputs
    with _pins_guard:
        _pins.setdefault(os.path.realpath(root), []).append(handle)


def _no_events(root: str) -> ConnectorError:
    return ConnectorError(
        f"the event lake {root} holds no events; run the stream with STOREML_LAKE_ENABLED,"
        " or recompute --from-topic"
    )
