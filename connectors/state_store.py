"""Durable, entity-keyed profile state inside the stream's checkpoint, and its recovery rules.

The state is split into ``buckets`` *virtual buckets* (a hash of the store id, fixed for the life
of a checkpoint, like Kafka partitions). A micro-batch runs as ``n`` enrich tasks, whatever the
bucket count: task ``p`` holds the buckets ``b`` with ``b % n == p``, so the same checkpoint runs
with 2 tasks or 64, and ``n`` may change between runs.

Version ``v`` is the state after micro-batch ``v``; batch ``v`` reads version ``v - 1``. Layout::

    <root>/changelog/<v>-<p>of<n>-<table>.parquet   rows task p of batch v changed (bucket column;
                                                    customers/products rows with expired=true are
                                                    deletions, applied before the upserts)
    <root>/changelog/<v>.json                       manifest of batch v: {"<p>of<n>": [buckets]},
                                                    written by the driver once every task succeeded
    <root>/snapshots/bucket=<k>/<v>.sqlite          every row of bucket k at version v (SQLite)
    <root>/snapshots/bucket=<k>/<v>.json            marker: that snapshot is complete

A batch reads and writes only the entities it touches: their rows come from the host's working
copy (:mod:`storeml.connectors.state_db`), and the batch appends their new rows to the changelog.
Each bucket is snapshotted once every ``snapshot_every`` batches when it changed, staggered by
bucket number (batch ``v`` snapshots the buckets ``k`` with ``k % snapshot_every == v %
snapshot_every``), from the working copy; quiet buckets too, so the changelog can be cleaned.

Recovery (:meth:`StateStore.prepare`), per bucket, from the version ``c`` the working copy holds:

* ``c == v - 1``: nothing to do (the usual case on one host: every worker shares the copy);
* ``v - 1 - retain <= c < v - 1``: *catch up*, applying the changelog of batches ``c+1 .. v-1``.
  The cleaner deletes a changelog entry only when it is more than ``retain`` batches old, so every
  entry such a catch-up needs is there: no listing can race a cleaning;
* otherwise (no copy, a copy too far behind, or ahead: a batch that did not commit is replayed):
  *rebuild* the bucket from its newest snapshot at or below ``v - 1`` plus the changelog after it.
  A changelog entry found missing during a rebuild was cleaned behind a newer snapshot: the bucket's
  snapshots are listed again, and the rebuild starts over from the newer one.

Cleaning (:func:`clean`, on the driver) deletes a batch's changelog only when it is older than
``retain`` batches and every bucket it names has a snapshot at or above it, and older snapshots
only when a newer one at or below that floor exists (marker first, then the tables). Leftover
``.tmp`` files and the files of batches that never committed are removed when a query starts
(:func:`prepare_checkpoint`).

Works on local disk or any mounted shared filesystem (object stores are not supported yet).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storeml.connectors.state_db import StateDB, open_db
from storeml.errors import StateError
from storeml.models.profiles import (
    CATEGORY_KEY,
    CUSTOMER_KEY,
    PRODUCT_KEY,
    STATE_COLUMNS,
    ProfileState,
    StateDelta,
    customer_facts,
)

__all__ = [
    "StateStore",
    "StateStats",
    "clean",
    "prepare_checkpoint",
    "write_manifest",
    "wait_for_snapshots",
    "task_buckets",
    "touched_keys",
]

log = logging.getLogger("storeml.state")

_TABLES = ProfileState.TABLES
_KEYS = {"customers": CUSTOMER_KEY, "categories": CATEGORY_KEY, "products": PRODUCT_KEY}
_CHANGE = re.compile(r"^(\d{12})-(\d+)of(\d+)-(customers|categories|products)\.parquet$")
_MANIFEST = re.compile(r"^(\d{12})\.json$")
#: Layout of a snapshot file (the working copy's tables); written into each snapshot's marker.
SNAPSHOT_FORMAT = "sqlite-1"


def task_buckets(partition: int, partitions: int, buckets: int) -> list[int]:
    """The virtual buckets enrich task ``partition`` of ``partitions`` holds."""
    return list(range(partition, buckets, partitions))


@dataclass
class StateStats:
    """What one task asked of the state (tests count reads and writes against touched entities)."""

    keys_read: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rows_expired: int = 0
    catch_ups: int = 0
    rebuilds: int = 0
    snapshots: int = 0
    recover_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


_writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="storeml-state-write")
_pending: list[Future[None]] = []
_pending_lock = threading.Lock()
_manifests: OrderedDict[tuple[str, int], dict[str, list[int]] | None] = OrderedDict()


def wait_for_snapshots() -> None:
    """Block until this process's background snapshot writes are done (tests; clean shutdowns)."""
    with _pending_lock:
        pending = list(_pending)
        _pending.clear()
    for future in pending:
        future.result()


def _atomic_parquet(frame: pd.DataFrame, final: Path) -> None:
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temp)
    os.replace(temp, final)


def _atomic_json(value: object, final: Path) -> None:
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    temp.write_text(json.dumps(value, sort_keys=True))
    os.replace(temp, final)


class StateStore:
    """The profile state of one checkpoint, as seen from one enrich task.

    Cheap to construct (a task builds one per batch); the SQLite connection is opened once per
    process and thread (:func:`storeml.connectors.state_db.open_db`).
    """

    def __init__(
        self,
        root: str | Path,
        state_id: str,
        buckets: int,
        cache_dir: str | Path,
        *,
        snapshot_every: int = 20,
        retain: int = 50,
        cache_mb: int = 256,
        expiry: bool = False,
    ) -> None:
        self.root = Path(root)
        self.changelog = self.root / "changelog"
        self.snapshots = self.root / "snapshots"
        self.buckets = buckets
        self.snapshot_every = snapshot_every
        self.retain = retain
        self.db_path = Path(cache_dir) / f"state-{state_id}.sqlite"
        self.cache_mb = cache_mb
        self.expiry = expiry
        self.stats = StateStats()

    @property
    def db(self) -> StateDB:
        return open_db(self.db_path, self.cache_mb, self.expiry)

    # --- recovery ------------------------------------------------------------------------------
    def prepare(self, buckets: list[int], version: int) -> None:
        """Bring ``buckets`` of the working copy to ``version`` (catch up or rebuild)."""
        started = time.perf_counter()
        held = self.db.versions(buckets)
        behind: dict[int, int] = {}
        rebuild: list[int] = []
        for bucket in buckets:
            have = held.get(bucket)
            if have == version:
                continue
            if have is not None and version - self.retain <= have < version:
                behind[bucket] = have
            else:
                rebuild.append(bucket)
        if behind:
            self._catch_up(behind, version, strict=True)
            self.stats.catch_ups += len(behind)
        for bucket in rebuild:
            self._rebuild(bucket, version)
            self.stats.rebuilds += 1
        self.stats.recover_s += time.perf_counter() - started

    def _manifest(self, version: int) -> dict[str, list[int]] | None:
        key = (str(self.changelog), version)
        if key in _manifests:
            return _manifests[key]
        path = self.changelog / f"{version:012d}.json"
        try:
            manifest: dict[str, list[int]] | None = json.loads(path.read_text())["files"]
        except FileNotFoundError:
            return None  # not cached: a later look may find it (a replayed batch writes it)
        _manifests[key] = manifest
        while len(_manifests) > 4096:
            _manifests.popitem(last=False)
        return manifest

    def _catch_up(self, held: dict[int, int], version: int, strict: bool) -> bool:
        """Apply batches ``held[b]+1 .. version`` of the changelog to each bucket ``b``.

        Returns False when a manifest was missing (only allowed when not ``strict``: a rebuild,
        whose caller then looks for a newer snapshot).
        """
        db = self.db
        complete = True
        with db.transaction():
            for v in range(min(held.values()) + 1, version + 1):
                manifest = self._manifest(v)
                if manifest is None:
                    if strict:
                        raise StateError(
                            f"{self.changelog}: the changelog of batch {v} is missing, and state"
                            f" bucket(s) {sorted(held)} need it to reach version {version}; the"
                            " checkpoint was damaged outside storeml; restore it or start a new one"
                        )
                    complete = False
                    continue
                for name, in_file in manifest.items():
                    wanted = [b for b in in_file if b in held and held[b] < v]
                    if wanted:
                        tables = self._read_change(v, name, wanted)
                        db.write(*_as_delta(tables))
                        db.db.executemany(
                            "UPDATE buckets SET changed = ? WHERE bucket = ?",
                            [(v, b) for b in wanted],
                        )
            db.set_versions(held, version)
        return complete

    def _read_change(self, version: int, name: str, buckets: list[int]) -> dict[str, pd.DataFrame]:
        out = {}
        for table in _TABLES:
            path = self.changelog / f"{version:012d}-{name}-{table}.parquet"
            frame = pq.read_table(path, filters=[("bucket", "in", buckets)]).to_pandas()
            out[table] = frame
        self.stats.rows_read += sum(len(f) for f in out.values())
        return out

    def _snapshot_markers(self, bucket: int) -> list[int]:
        folder = self.snapshots / f"bucket={bucket:05d}"
        if not folder.exists():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _MANIFEST.match(p.name)))

    def _rebuild(self, bucket: int, version: int) -> None:
        for _attempt in range(20):
            markers = [v for v in self._snapshot_markers(bucket) if v <= version]
            base = markers[-1] if markers else -1
            db = self.db
            try:
                if base >= 0:
                    folder = self.snapshots / f"bucket={bucket:05d}"
                    db.import_bucket(bucket, folder / f"{base:012d}.sqlite")
                with db.transaction():
                    if base < 0:
                        db.drop_buckets([bucket])
                    db.set_versions([bucket], base)
                    db.db.execute(
                        "UPDATE buckets SET snapshot = ?, changed = ? WHERE bucket = ?",
                        (base, base, bucket),
                    )
                complete = self._catch_up({bucket: base}, version, strict=False)
            except FileNotFoundError:
                continue  # a snapshot or change file cleaned while we read it: start over
            newer = [v for v in self._snapshot_markers(bucket) if base < v <= version]
            if complete or not newer:
                return
        raise StateError(
            f"{self.snapshots}: could not rebuild state bucket {bucket} at version {version}:"
            " its files kept changing under 20 attempts; is another query using this checkpoint?"
        )

    # --- the batch ------------------------------------------------------------------------------
    def read(self, facts: pd.DataFrame) -> ProfileState:
        """State rows of every entity the facts touch (and each touched customer's categories)."""
        customers, products = touched_keys(facts)
        db = self.db
        before = db.counters.rows_read
        with db.transaction(write=False):
            state = db.read(customers, products)
        self.stats.keys_read += len(customers) + len(products)
        self.stats.rows_read += db.counters.rows_read - before
        return state

    def idle(self, buckets: list[int], before_ms: int) -> dict[str, pd.DataFrame]:
        """Entities of ``buckets`` not touched since ``before_ms`` (expiry), as bucket + key."""
        with self.db.transaction(write=False):
            return self.db.idle(buckets, before_ms)

    def commit(
        self,
        version: int,
        partition: int,
        partitions: int,
        buckets: list[int],
        delta: StateDelta,
        expired: dict[str, pd.DataFrame],
    ) -> tuple[Future[None], list[int]]:
        """Persist batch ``version`` of task ``partition`` of ``partitions``.

        ``delta`` frames carry a ``bucket`` column. The changelog files are written in a background
        thread (wait for the future before the task ends); the working copy is updated here, and
        all of ``buckets`` are marked as held at ``version``. Returns the future and the buckets
        this task changed (for the driver's manifest).
        """
        changed = sorted(
            {int(b) for frame in (delta.customers, delta.products) for b in frame["bucket"]}
            | {int(b) for frame in expired.values() for b in frame["bucket"]}
        )
        tables = _change_tables(delta, expired)
        name = f"{partition}of{partitions}"
        self.changelog.mkdir(parents=True, exist_ok=True)
        future = _writer.submit(self._write_change, version, name, tables)
        db = self.db
        with db.transaction():
            db.write(delta, expired)
            db.set_versions(buckets, version)
            db.db.executemany(
                "UPDATE buckets SET changed = ? WHERE bucket = ?", [(version, b) for b in changed]
            )
        self.stats.rows_written += sum(len(f) for f in tables.values())
        self.stats.rows_expired += sum(len(f) for f in expired.values())
        return future, changed

    def _write_change(self, version: int, name: str, tables: dict[str, pd.DataFrame]) -> None:
        for table in _TABLES:
            _atomic_parquet(
                tables[table], self.changelog / f"{version:012d}-{name}-{table}.parquet"
            )

    def snapshot_due(self, buckets: list[int], version: int) -> None:
        """Snapshot the due ones of ``buckets`` (see the module docstring).

        Each is exported from the working copy to a local SQLite file here (SQLite copies the
        rows in C, a few ms per 10,000), then copied into the checkpoint in the background.
        """
        due = [b for b in buckets if b % self.snapshot_every == version % self.snapshot_every]
        if not due:
            return
        db = self.db
        rows = db.db.execute(
            f"SELECT bucket, changed, snapshot FROM buckets WHERE bucket IN"
            f" ({','.join('?' * len(due))})",
            due,
        ).fetchall()
        info = {b: (changed, snap) for b, changed, snap in rows}
        for bucket in due:
            if bucket in info and 0 <= info[bucket][1] >= info[bucket][0]:
                continue  # unchanged since its snapshot
            local = self._export(bucket)
            future = _writer.submit(self._publish_snapshot, bucket, version, local)
            with _pending_lock:
                _pending[:] = [f for f in _pending if not f.done()] + [future]
            self.stats.snapshots += 1

    def write_snapshots(self, buckets: list[int], version: int) -> int:
        """Snapshot ``buckets`` of the working copy as version ``version`` now (operators, tools).

        The copy must hold them at ``version``. Returns the number written.
        """
        held = self.db.versions(buckets)
        stale = [b for b in buckets if held.get(b) != version]
        if stale:
            raise StateError(
                f"{self.db_path}: buckets {stale[:10]} are not at version {version}; prepare"
                " them first"
            )
        for bucket in buckets:
            self._publish_snapshot(bucket, version, self._export(bucket))
        return len(buckets)

    def _export(self, bucket: int) -> Path:
        local = self.db_path.with_name(f".snapshot-{uuid.uuid4().hex}.tmp")
        self.db.export_bucket(bucket, local)
        return local

    def _publish_snapshot(self, bucket: int, version: int, local: Path) -> None:
        """Copy an exported bucket into the checkpoint (temporary name, rename), then its marker."""
        folder = self.snapshots / f"bucket={bucket:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{version:012d}.sqlite"
        temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(local, temp)
            os.replace(temp, final)
        finally:
            local.unlink(missing_ok=True)
            temp.unlink(missing_ok=True)
        _atomic_json(
            {"version": version, "bucket": bucket, "format": SNAPSHOT_FORMAT},
            folder / f"{version:012d}.json",
        )
        db = self.db  # this thread's own connection
        with db.transaction():
            db.db.execute(
                "UPDATE buckets SET snapshot = MAX(snapshot, ?) WHERE bucket = ?", (version, bucket)
            )

    def scan(self, table: str, buckets: list[int], chunk_rows: int) -> Iterable[pd.DataFrame]:
        """Every row of ``table`` in ``buckets`` of the working copy, ``chunk_rows`` at a time."""
        return self.db.scan(table, buckets, chunk_rows)


def touched_keys(facts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``bucket`` + key of every customer and every product the facts touch."""
    customers = customer_facts(facts)[["bucket", *CUSTOMER_KEY]].drop_duplicates()
    products = facts[facts["product_id"].notna()][["bucket", *PRODUCT_KEY]].drop_duplicates()
    return customers, products


def _change_tables(delta: StateDelta, expired: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The changelog tables of one task's batch: upserts, and deletions flagged ``expired``."""
    out = {}
    for table in _TABLES:
        rows = getattr(delta, table).reset_index()
        rows["expired"] = False
        gone = expired.get(table)
        if gone is not None and len(gone):
            gone = gone.assign(expired=True)
            rows = pd.concat([gone, rows], ignore_index=True)
        columns = ["bucket", *_KEYS[table], *STATE_COLUMNS[table], "expired"]
        for column in columns:
            if column not in rows:
                rows[column] = None
        rows["bucket"] = rows["bucket"].astype("int32")
        out[table] = _typed(rows[columns], table)
    return out


def _typed(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    for column, dtype in STATE_COLUMNS[table].items():
        if dtype != "object":
            frame[column] = frame[column].astype("Int64")
    return frame


def _as_delta(tables: dict[str, pd.DataFrame]) -> tuple[StateDelta, dict[str, pd.DataFrame]]:
    """Changelog (or snapshot) tables -> (upserts as a StateDelta with bucket column, deletions)."""
    parts: dict[str, pd.DataFrame] = {}
    expired: dict[str, pd.DataFrame] = {}
    for table in _TABLES:
        frame = tables[table]
        if "expired" in frame:
            flags = frame["expired"].fillna(False).astype(bool)
            if table != "categories" and flags.any():
                expired[table] = frame.loc[flags, ["bucket", *_KEYS[table], "profile_version"]]
            frame = frame.loc[~flags].drop(columns="expired")
        state = ProfileState.from_tables({table: frame.drop(columns="bucket")})
        indexed = getattr(state, table)
        indexed.insert(0, "bucket", frame["bucket"].astype("int64").to_numpy())
        parts[table] = indexed
    return StateDelta(parts["customers"], parts["categories"], parts["products"]), expired


# --- driver side --------------------------------------------------------------------------------
def write_manifest(root: str | Path, version: int, files: dict[str, list[int]]) -> None:
    """Commit batch ``version`` of the state: which task file holds which changed buckets."""
    folder = Path(root) / "changelog"
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_json({"version": version, "files": files}, folder / f"{version:012d}.json")


def prepare_checkpoint(root: str | Path, next_version: int) -> int:
    """At query start: remove ``.tmp`` leftovers and the files of batches that never committed.

    ``next_version`` is the batch about to run: its changelog and any later one come from an
    attempt that did not commit (a crash), perhaps with another task count. Returns the number of
    files removed.
    """
    root = Path(root)
    removed = 0
    if not root.exists():
        return 0
    for path in root.rglob("*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    changelog = root / "changelog"
    if changelog.exists():
        for path in changelog.iterdir():
            match = _CHANGE.match(path.name) or _MANIFEST.match(path.name)
            if match and int(match.group(1)) >= next_version:
                path.unlink(missing_ok=True)
                removed += 1
    snapshots = root / "snapshots"
    if snapshots.exists():
        for folder in snapshots.iterdir():
            for path in sorted(folder.iterdir(), key=lambda p: p.suffix != ".json"):
                if int(path.name[:12]) >= next_version:
                    path.unlink(missing_ok=True)  # marker first, then its tables
                    removed += 1
    if removed:
        log.info("state: removed %d leftover files of uncommitted batches", removed)
    return removed


def clean(root: str | Path, version: int, retain: int) -> int:
    """Delete state files no batch after ``version - retain`` can need (see the module docstring).

    Returns the number of files deleted. Safe beside running tasks and catch-ups.
    """
    root = Path(root)
    floor = version - retain - 1
    latest: dict[int, int] = {}
    removed = 0
    snapshots = root / "snapshots"
    if snapshots.exists():
        for folder in snapshots.iterdir():
            bucket = int(folder.name.split("=")[1])
            markers = sorted(
                int(m.group(1)) for p in folder.iterdir() if (m := _MANIFEST.match(p.name))
            )
            if not markers:
                continue
            latest[bucket] = markers[-1]
            kept = [v for v in markers if v <= floor]
            for old in kept[:-1]:
                (folder / f"{old:012d}.json").unlink(missing_ok=True)  # the marker first
                (folder / f"{old:012d}.sqlite").unlink(missing_ok=True)
                removed += 2
    changelog = root / "changelog"
    if not changelog.exists():
        return removed
    for path in sorted(changelog.iterdir()):
        match = _MANIFEST.match(path.name)
        if not match or int(match.group(1)) > floor:
            continue
        v = int(match.group(1))
        files: dict[str, list[int]] = json.loads(path.read_text())["files"]
        if all(latest.get(b, -1) >= v for names in files.values() for b in names):
            for name in files:
                for table in _TABLES:
                    (changelog / f"{v:012d}-{name}-{table}.parquet").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            removed += 1 + len(files) * len(_TABLES)
    return removed
