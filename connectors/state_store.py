"""Versioned profile state, one folder per state bucket, inside the stream's checkpoint.

Why our own store: Spark's built-in stateful operators call Python once per key, which costs far more
than the fold itself at tens of thousands of entities per micro-batch. Here a micro-batch folds a
whole bucket in one vectorised pandas call, and the state follows the same recovery contract as
Spark's state store:

* version ``v`` is the state *after* micro-batch ``v``; batch ``v`` reads version ``v - 1`` and writes
  version ``v`` as a *delta* (the new rows of the entities it touched), atomically (write, then rename);
* every ``snapshot_every`` versions the full state is written as a snapshot; loading a version reads
  the newest snapshot at or below it and applies the deltas after it;
* Spark's commit log is the source of truth: a batch that did not commit is re-run on restart with
  the same offsets, reads ``v - 1`` again and rewrites the same delta, so a crash at any point
  leaves no trace (deltas above the last committed batch are simply overwritten);
* each Python worker keeps the latest version of every bucket it served in memory and catches up by
  reading only the deltas it missed (Spark hands a bucket's task to any idle worker);
* a delta is written in a background thread while the task scores and writes its sinks; the task
  waits for it before it ends (:meth:`ProfileStateStore.commit` returns the future), so the state
  is durable before Spark commits the batch. Snapshots are written and old files cleaned in the
  background without waiting: a snapshot only shortens recovery, and one cut off by a crash is
  incomplete and ignored.

Layout: ``<root>/bucket=<k>/<version>-<delta|snapshot>-<table>.parquet``. Works on local disk or any
mounted shared filesystem (object stores are not supported yet).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storeml.errors import StateError
from storeml.models.profiles import ProfileState, StateDelta, apply_delta

__all__ = [
    "ProfileStateStore",
    "StateStoreStats",
    "clear_cache",
    "cache_stats",
    "wait_for_snapshots",
]

_FILE = re.compile(r"^(\d{12})-(delta|snapshot)-(customers|categories|products)\.parquet$")
_TABLES = ProfileState.TABLES


@dataclass
class StateStoreStats:
    """Per-process counters of the state cache."""

    hits: int = 0
    catch_ups: int = 0
    full_loads: int = 0
    load_seconds: float = 0.0
    commit_seconds: float = 0.0


_cache: dict[tuple[str, int], tuple[int, ProfileState]] = {}
_cache_lock = threading.Lock()
_stats = StateStoreStats()
_delta_writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storeml-state-delta")
_snapshot_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storeml-state-snapshot")
_snapshots: list[Future[None]] = []


def wait_for_snapshots() -> None:
    """Block until this process's background snapshots are written (tests; clean shutdowns)."""
    with _cache_lock:
        pending = list(_snapshots)
        _snapshots.clear()
    for future in pending:
        future.result()


def clear_cache() -> None:
    """Forget every cached bucket of this process (tests; a new checkpoint reusing a path)."""
    with _cache_lock:
        _cache.clear()


def cache_stats() -> StateStoreStats:
    return _stats


class ProfileStateStore:
    """The state of one bucket. Cheap to construct; reads and writes files only when asked."""

    def __init__(
        self, root: str | Path, bucket: int, snapshot_every: int = 20, retain: int = 50
    ) -> None:
        self.root = Path(root)
        self.bucket = bucket
        self.folder = self.root / f"bucket={bucket:05d}"
        self.snapshot_every = snapshot_every
        self.retain = retain

    # --- files ---------------------------------------------------------------------------
    def _files(self) -> dict[int, dict[str, dict[str, Path]]]:
        """version -> kind -> table -> path."""
        found: dict[int, dict[str, dict[str, Path]]] = {}
        if not self.folder.exists():
            return found
        for path in self.folder.iterdir():
            match = _FILE.match(path.name)
            if match:
                version, kind, table = int(match.group(1)), match.group(2), match.group(3)
                found.setdefault(version, {}).setdefault(kind, {})[table] = path
        return found

    def _path(self, version: int, kind: str, table: str) -> Path:
        return self.folder / f"{version:012d}-{kind}-{table}.parquet"

    def _write(self, version: int, kind: str, tables: dict[str, pd.DataFrame]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for table in _TABLES:
            frame = tables[table]
            final = self._path(version, kind, table)
            temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temp)
            os.replace(temp, final)

    @staticmethod
    def _read(paths: dict[str, Path]) -> dict[str, pd.DataFrame]:
        return {table: pq.read_table(path).to_pandas() for table, path in paths.items()}

    # --- API -------------------------------------------------------------------------------
    def load(self, version: int) -> ProfileState:
        """The state after micro-batch ``version`` (``-1``: before the first batch, empty)."""
        key = (str(self.folder), self.bucket)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and cached[0] == version:
            _stats.hits += 1
            return cached[1]
        started = time.perf_counter()
        try:
            state = self._load_files(version, cached)
        except FileNotFoundError:  # a cleaning in another process took a delta we listed
            state = self._load_files(version, None)
        with _cache_lock:
            _cache[key] = (version, state)
        _stats.load_seconds += time.perf_counter() - started
        return state

    def _load_files(self, version: int, cached: tuple[int, ProfileState] | None) -> ProfileState:
        files = self._files()
        complete = [
            v for v, kinds in files.items() if len(kinds.get("snapshot", {})) == len(_TABLES)
        ]
        snapshots = [v for v in complete if v <= version]
        # A missing delta means "bucket untouched in that batch", except for versions at or below
        # the oldest snapshot, whose deltas a cleaning may have deleted: catch up from the cached
        # version only when it is not below that snapshot.
        if (
            cached is not None
            and cached[0] < version
            and (not complete or cached[0] >= min(complete))
        ):
            base_version, state = cached
            _stats.catch_ups += 1
        else:
            base_version, state = -1, ProfileState()
            if snapshots:
                base_version = max(snapshots)
                state = ProfileState.from_tables(self._read(files[base_version]["snapshot"]))
            _stats.full_loads += 1
        pending = [v for v in sorted(files) if base_version < v <= version and "delta" in files[v]]
        for v in pending:
            if len(files[v]["delta"]) != len(_TABLES):
                raise StateError(
                    f"{self.folder}: delta {v} is incomplete ({sorted(files[v]['delta'])});"
                    " the checkpoint was damaged outside storeml; restore it or start a new one"
                )
            state = apply_delta(state, StateDelta.from_tables(self._read(files[v]["delta"])))
        return state

    def commit(self, version: int, delta: StateDelta, after: ProfileState) -> Future[None]:
        """Persist ``delta`` as version ``version`` (``after`` = the state it produces).

        The delta is written in a background thread: wait for the returned future before the
        micro-batch ends. A due snapshot follows in the background, nobody waits for it.
        """
        return _delta_writer.submit(self._commit, version, delta, after)

    def _commit(self, version: int, delta: StateDelta, after: ProfileState) -> None:
        started = time.perf_counter()
        self._write(version, "delta", delta.tables())
        with _cache_lock:
            _cache[(str(self.folder), self.bucket)] = (version, after)
        if version > 0 and version % self.snapshot_every == 0:
            snapshot = _snapshot_writer.submit(self._snapshot, version, after)
            with _cache_lock:  # two delta writers may get here at once
                _snapshots[:] = [f for f in _snapshots if not f.done()] + [snapshot]
        _stats.commit_seconds += time.perf_counter() - started

    def _snapshot(self, version: int, after: ProfileState) -> None:
        self._write(version, "snapshot", after.tables())
        self._clean(version)

    def _clean(self, version: int) -> None:
        """Drop files no longer needed to restore any of the last ``retain`` versions."""
        files = self._files()
        floor = version - self.retain
        snapshots = [
            v
            for v, kinds in files.items()
            if v <= floor and len(kinds.get("snapshot", {})) == len(_TABLES)
        ]
        if not snapshots:
            return
        keep_from = max(snapshots)
        for v, kinds in files.items():
            if v < keep_from or (v == keep_from and "delta" in kinds):
                for kind, tables in kinds.items():
                    if v == keep_from and kind == "snapshot":
                        continue
                    for path in tables.values():
                        path.unlink(missing_ok=True)
