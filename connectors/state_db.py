"""The host-local working copy of profile state: one SQLite file, keyed by entity.

A micro-batch reads the rows of the entities it touches and writes their new rows; nothing else of
the state is read, written or held in memory, so a batch costs the same with ten thousand or ten
million entities in state (B-tree lookups aside). Memory is SQLite's page cache, bounded by
``cache_mb`` per connection whatever the entity count.

This copy is a *cache*: the durable state is the changelog and the snapshots in the checkpoint
(:mod:`storeml.connectors.state_store`). The file lives on the executor's local disk and is shared
by every Python worker of the host (SQLite's WAL mode: readers never block, writers take turns),
so Spark may hand a bucket's task to any worker without a reload. A ``buckets`` table records, per
state bucket, the version this copy holds; a copy that is behind catches up from the changelog, one
that is ahead (a micro-batch that did not commit and is being replayed) is rebuilt from the
checkpoint. A lost or deleted file is rebuilt the same way, so writes skip the fsync
(``synchronous=OFF``).

Rows carry their state bucket as the first key column, so one bucket's rows are a key range
(dumped for a snapshot, or dropped for a rebuild, without a scan).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storeml.models.profiles import (
    CATEGORY_KEY,
    CUSTOMER_KEY,
    PRODUCT_KEY,
    STATE_COLUMNS,
    ProfileState,
    StateDelta,
    add_empty_rows,
    state_table,
)

__all__ = ["StateDB", "DBCounters", "open_db", "close_db", "close_all"]

_KEYS = {"customers": CUSTOMER_KEY, "categories": CATEGORY_KEY, "products": PRODUCT_KEY}
#: Tables whose expired entities leave a row behind: their last ``profile_version``, so that the
#: entity's next life goes on counting from it (the Redis guard and consumers rely on it rising).
_RETIRED = ("customers", "products")
#: SQLite column types; "object" columns are TEXT, the rest INTEGER.
_TYPES = {"object": "TEXT"}


def _columns(table: str) -> list[str]:
    return ["bucket", *_KEYS[table], *STATE_COLUMNS[table]]


@dataclass
class DBCounters:
    """Rows this process read from and wrote to the state copy (per table), for tests and reports."""

    rows_read: int = 0
    rows_written: int = 0
    rows_deleted: int = 0
    keys_asked: int = 0


class StateDB:
    """One SQLite connection per (process, thread) to the host's state copy at ``path``."""

    def __init__(self, path: Path, cache_mb: int = 256, expiry_index: bool = False) -> None:
        self.path = path
        self.counters = DBCounters()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_stale_exports(path.parent)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=120.0, uri=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        # Reads go through a memory map of the file (the OS page cache, shared by the host's
        # workers); SQLite's own page cache is dropped whenever another process wrote, which with
        # two workers alternating is every batch. Writes still use the page cache.
        self.db.execute(f"PRAGMA mmap_size={int(cache_mb) * 2**20}")
        self.db.execute(f"PRAGMA cache_size=-{min(int(cache_mb), 32) * 1024}")
        self.db.execute("PRAGMA temp_store=MEMORY")
        self._create(expiry_index)

    def _create(self, expiry_index: bool) -> None:
        with self.transaction():
            for table, key in _KEYS.items():
                types = STATE_COLUMNS[table]
                cols = ", ".join(
                    [
                        "bucket INTEGER NOT NULL",
                        *(f"{c} TEXT NOT NULL" for c in key),
                        *(f"{c} {_TYPES.get(t, 'INTEGER')}" for c, t in types.items()),
                    ]
                )
                pk = ", ".join(["bucket", *key])
                self.db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({pk})) WITHOUT ROWID"
                )
                wanted = ", ".join(["bucket INTEGER", *(f"{c} TEXT" for c in key[:2])])
                self.db.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS want_{table} ({wanted},"
                    f" PRIMARY KEY (bucket, {key[0]}, {key[1]})) WITHOUT ROWID"
                )
            for table in _RETIRED:
                key = _KEYS[table]
                self.db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table}_retired (bucket INTEGER NOT NULL,"
                    f" {key[0]} TEXT NOT NULL, {key[1]} TEXT NOT NULL, profile_version INTEGER,"
                    f" PRIMARY KEY (bucket, {key[0]}, {key[1]})) WITHOUT ROWID"
                )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS buckets (bucket INTEGER PRIMARY KEY,"
                " version INTEGER NOT NULL, changed INTEGER NOT NULL DEFAULT -1,"
                " snapshot INTEGER NOT NULL DEFAULT -1)"
            )
            if expiry_index:
                for table in ("customers", "products"):
                    self.db.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_touched ON {table} (touched_ms)"
                    )

    # --- transactions ------------------------------------------------------------------------
    class _Txn:
        def __init__(self, db: sqlite3.Connection, immediate: bool) -> None:
            self.db, self.immediate = db, immediate

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
            return self.db

        def __exit__(self, kind: object, *_: object) -> None:
            self.db.execute("ROLLBACK" if kind is not None else "COMMIT")

    def transaction(self, write: bool = True) -> StateDB._Txn:
        """``with db.transaction():`` one atomic unit (writers take the lock up front)."""
        return StateDB._Txn(self.db, write)

    # --- bucket versions -----------------------------------------------------------------------
    def versions(self, buckets: Iterable[int]) -> dict[int, int]:
        """The version this copy holds of each of ``buckets`` (absent: never loaded here)."""
        wanted = list(buckets)
        out: dict[int, int] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            out.update(
                self.db.execute(
                    f"SELECT bucket, version FROM buckets WHERE bucket IN ({marks})", part
                ).fetchall()
            )
        return out

    def set_versions(self, buckets: Iterable[int], version: int) -> None:
        self.db.executemany(
            "INSERT INTO buckets (bucket, version) VALUES (?, ?)"
            " ON CONFLICT (bucket) DO UPDATE SET version = excluded.version",
            [(int(b), version) for b in buckets],
        )

    def drop_buckets(self, buckets: Iterable[int]) -> None:
        """Forget every row of ``buckets`` (before a rebuild)."""
        for bucket in buckets:
            for table in [*_KEYS, *(f"{t}_retired" for t in _RETIRED)]:
                self.db.execute(f"DELETE FROM {table} WHERE bucket = ?", (int(bucket),))
            self.db.execute("DELETE FROM buckets WHERE bucket = ?", (int(bucket),))

    # --- rows ----------------------------------------------------------------------------------
    def read(self, customers: pd.DataFrame, products: pd.DataFrame | None = None) -> ProfileState:
        """State rows of the given entities (frames with ``bucket`` and the key columns).

        Returns a :class:`ProfileState` holding only those entities, with every category row of the
        customers among them; entities not in state are absent, except those that expired: they
        come back as an empty row holding their last ``profile_version``, so that their new life
        folds from zero but keeps counting versions upwards.
        """
        out = ProfileState()
        asks = (("customers", customers), ("products", products))
        for table, keys in asks:
            key = _KEYS[table]
            self.db.execute(f"DELETE FROM want_{table}")
            if keys is None or keys.empty:
                continue
            self.db.executemany(
                f"INSERT OR IGNORE INTO want_{table} VALUES (?, ?, ?)",
                zip(
                    keys["bucket"].tolist(),
                    keys[key[0]].tolist(),
                    keys[key[1]].tolist(),
                    strict=True,
                ),
            )
            self.counters.keys_asked += len(keys)
            targets = [table, "categories"] if table == "customers" else [table]
            for target in targets:
                columns = _columns(target)
                select = ", ".join(f"s.{c}" for c in columns)
                join = " AND ".join(f"s.{c} = w.{c}" for c in ["bucket", *key[:2]])
                rows = self.db.execute(
                    f"SELECT {select} FROM want_{table} w JOIN {target} s ON {join}"
                ).fetchall()
                self.counters.rows_read += len(rows)
                setattr(out, target, state_table(target, _column_lists(rows, columns)))
            retired = self.db.execute(
                f"SELECT r.{key[0]}, r.{key[1]}, r.profile_version FROM want_{table} w"
                f" JOIN {table}_retired r ON {join.replace('s.', 'r.')}"
            ).fetchall()
            if retired:
                versions = pd.DataFrame.from_records(retired, columns=[*key, "profile_version"])
                setattr(out, table, add_empty_rows(getattr(out, table), table, versions))
        return out

    def write(self, delta: StateDelta, expired: dict[str, pd.DataFrame] | None = None) -> None:
        """Delete ``expired`` entities, then upsert ``delta``'s rows (with their ``bucket`` column).

        ``expired`` maps "customers"/"products" to frames of ``bucket``, the key columns and
        ``profile_version``; an expired customer's category rows go with it, and each expired
        entity's version is kept (see :meth:`read`). Runs inside the caller's transaction.
        """
        for table, keys in (expired or {}).items():
            if keys.empty:
                continue
            key = _KEYS[table]
            rows = list(
                zip(
                    keys["bucket"].tolist(),
                    keys[key[0]].tolist(),
                    keys[key[1]].tolist(),
                    strict=True,
                )
            )
            where = " AND ".join(f"{c} = ?" for c in ["bucket", *key[:2]])
            targets = [table, "categories"] if table == "customers" else [table]
            for target in targets:
                self.db.executemany(f"DELETE FROM {target} WHERE {where}", rows)
            versions = keys["profile_version"].astype("int64").tolist()
            self.db.executemany(
                f"INSERT OR REPLACE INTO {table}_retired VALUES (?, ?, ?, ?)",
                [(*row, version) for row, version in zip(rows, versions, strict=True)],
            )
            self.counters.rows_deleted += len(rows)
        for table in ProfileState.TABLES:
            frame = getattr(delta, table)
            if frame.empty:
                continue
            flat = frame.reset_index()
            columns = _columns(table)
            marks = ", ".join("?" * len(columns))
            self.db.executemany(
                f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                _py_rows(flat, columns),
            )
            self.counters.rows_written += len(flat)

    def idle(self, buckets: list[int], before_ms: int) -> dict[str, pd.DataFrame]:
        """Entities of ``buckets`` last touched before ``before_ms``: bucket, key, profile_version."""
        out: dict[str, pd.DataFrame] = {}
        marks = ",".join("?" * len(buckets))
        for table in _RETIRED:
            cols = ["bucket", *_KEYS[table], "profile_version"]
            rows = self.db.execute(
                f"SELECT {', '.join(cols)} FROM {table}"
                f" WHERE touched_ms < ? AND bucket IN ({marks})",
                [before_ms, *buckets],
            ).fetchall()
            out[table] = pd.DataFrame.from_records(rows, columns=cols)
        return out

    def dump(self, bucket: int) -> dict[str, pd.DataFrame]:
        """Every row of one bucket, per table, in the changelog's layout (``bucket`` column;
        expired entities as rows flagged ``expired``): a snapshot."""
        out = {}
        for table in ProfileState.TABLES:
            columns = _columns(table)
            rows = self.db.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE bucket = ?", (int(bucket),)
            ).fetchall()
            frame = _flat_frame(table, rows, columns)
            frame["expired"] = False
            if table in _RETIRED:
                key = _KEYS[table]
                gone = self.db.execute(
                    f"SELECT bucket, {key[0]}, {key[1]}, profile_version FROM {table}_retired"
                    " WHERE bucket = ?",
                    (int(bucket),),
                ).fetchall()
                if gone:
                    retired = pd.DataFrame.from_records(
                        gone, columns=["bucket", *key, "profile_version"]
                    ).assign(expired=True)
                    frame = pd.concat([retired, frame], ignore_index=True)
            out[table] = frame
        return out

    # --- snapshots as SQLite files (copied in C, no Python per row) ----------------------------
    def _all_tables(self) -> list[str]:
        return [*_KEYS, *(f"{t}_retired" for t in _RETIRED)]

    def export_bucket(self, bucket: int, path: Path) -> int:
        """Write every row of ``bucket`` to a new SQLite file at ``path``; returns its rows.

        One read transaction: the file holds the bucket exactly as of this moment. The file has
        the working copy's tables (bucket column included), without keys or indexes.
        """
        path.unlink(missing_ok=True)
        self.db.execute("ATTACH DATABASE ? AS snap", (str(path),))
        try:
            self.db.execute("BEGIN")
            rows = 0
            for table in self._all_tables():
                self.db.execute(
                    f"CREATE TABLE snap.{table} AS SELECT * FROM main.{table} WHERE bucket = ?",
                    (int(bucket),),
                )
                rows += self.db.execute(f"SELECT count(*) FROM snap.{table}").fetchone()[0]
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self.db.execute("DETACH DATABASE snap")
        return rows

    def import_bucket(self, bucket: int, path: Path) -> None:
        """Replace ``bucket``'s rows with those of a file :meth:`export_bucket` wrote.

        Attaches the file read-only and immutable (safe on a shared filesystem); one write
        transaction. Raises FileNotFoundError when the file is gone (a cleaning took it).
        """
        if not path.exists():
            raise FileNotFoundError(path)
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        self.db.execute("ATTACH DATABASE ? AS snap", (uri,))
        try:
            with self.transaction():
                self.drop_buckets([bucket])
                for table in self._all_tables():
                    self.db.execute(f"INSERT INTO main.{table} SELECT * FROM snap.{table}")
        except sqlite3.OperationalError as exc:
            if not path.exists():
                raise FileNotFoundError(path) from exc
            raise
        finally:
            self.db.execute("DETACH DATABASE snap")

    def scan(self, table: str, buckets: list[int], chunk_rows: int) -> Iterator[pd.DataFrame]:
        """Every row of ``table`` in ``buckets``, in key order, ``chunk_rows`` at a time (flat,
        typed as in state, with the ``bucket`` column)."""
        columns = _columns(table)
        key = ["bucket", *_KEYS[table]]
        marks = ",".join("?" * len(buckets))
        last: tuple[object, ...] | None = None
        while True:
            after = ""
            params: list[object] = list(buckets)
            if last is not None:
                after = f" AND ({', '.join(key)}) > ({', '.join('?' * len(key))})"
                params += list(last)
            rows = self.db.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE bucket IN ({marks}){after}"
                f" ORDER BY {', '.join(key)} LIMIT ?",
                [*params, chunk_rows],
            ).fetchall()
            if not rows:
                return
            last = tuple(rows[-1][: len(key)])
            yield _flat_frame(table, rows, columns)
            if len(rows) < chunk_rows:
                return

    # --- offset ranges (a recompute's ``source`` field) ----------------------------------------
    def add_sources(self, kind: str, ranges: pd.DataFrame) -> None:
        """Widen each entity's (topic, partition) offset range by ``ranges`` (columns ``bucket``,
        store_id, entity_id, topic, partition, min, max: :func:`~storeml.models.profiles.source_ranges`
        with a bucket column). Runs inside the caller's transaction."""
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sources (kind TEXT, bucket INTEGER, store_id TEXT,"
            " entity_id TEXT, topic TEXT, partition INTEGER, lo INTEGER, hi INTEGER,"
            " PRIMARY KEY (kind, bucket, store_id, entity_id, topic, partition)) WITHOUT ROWID"
        )
        if ranges.empty:
            return
        columns = [ranges[c].tolist() for c in ranges.columns]
        self.db.executemany(
            "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " lo = MIN(lo, excluded.lo), hi = MAX(hi, excluded.hi)",
            ((kind, *row) for row in zip(*columns, strict=True)),
        )

    def sources_of(self, kind: str, keys: pd.DataFrame) -> pd.DataFrame:
        """The ranges of the entities in ``keys`` (bucket, store_id, entity id columns)."""
        table = "customers" if kind == "customer" else "products"
        key = _KEYS[table]
        self.db.execute(f"DELETE FROM want_{table}")
        self.db.executemany(
            f"INSERT OR IGNORE INTO want_{table} VALUES (?, ?, ?)",
            zip(keys["bucket"].tolist(), keys[key[0]].tolist(), keys[key[1]].tolist(), strict=True),
        )
        rows = self.db.execute(
            f"SELECT s.store_id, s.entity_id, s.topic, s.partition, s.lo, s.hi FROM want_{table} w"
            f" JOIN sources s ON s.kind = ? AND s.bucket = w.bucket AND s.store_id = w.{key[0]}"
            f" AND s.entity_id = w.{key[1]} ORDER BY 1, 2, 3, 4",
            (kind,),
        ).fetchall()
        return pd.DataFrame.from_records(
            rows, columns=[key[0], key[1], "topic", "partition", "min", "max"]
        )

    def close(self) -> None:
        self.db.close()


def _remove_stale_exports(folder: Path, older_than_s: float = 3600.0) -> None:
    """Snapshot exports a crashed process left behind (``.snapshot-*.tmp``, over an hour old)."""
    import time

    cutoff = time.time() - older_than_s
    for leftover in folder.glob(".snapshot-*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass  # another process took it


def _column_lists(rows: list[tuple[object, ...]], columns: list[str]) -> dict[str, list[object]]:
    if not rows:
        return {}
    return dict(zip(columns, (list(c) for c in zip(*rows, strict=True)), strict=True))


def _flat_frame(table: str, rows: list[tuple[object, ...]], columns: list[str]) -> pd.DataFrame:
    """Rows of ``table`` with their state dtypes, flat (``bucket`` and key columns as columns)."""
    lists = _column_lists(rows, columns)
    state = state_table(table, lists).reset_index()
    state.insert(0, "bucket", pd.array(lists.get("bucket", []), dtype="int32"))
    return state


def _py_rows(flat: pd.DataFrame, columns: list[str]) -> Iterator[tuple[object, ...]]:
    """Rows of plain Python values (None for nulls), the only kind sqlite3 binds."""
    lists = []
    for column in columns:
        series = flat[column]
        if series.dtype == object:
            lists.append(series.tolist())
        elif series.hasnans:
            lists.append(series.astype(object).where(series.notna(), None).tolist())
        else:
            lists.append(series.tolist())
    return zip(*lists, strict=True)


_dbs: dict[tuple[str, int, int], StateDB] = {}
_dbs_lock = threading.Lock()


def open_db(path: Path, cache_mb: int = 256, expiry_index: bool = False) -> StateDB:
    """This process's (and thread's) connection to the state copy at ``path``, opened once."""
    key = (str(path), os.getpid(), threading.get_ident())
    with _dbs_lock:
        db = _dbs.get(key)
        if db is None:
            db = _dbs[key] = StateDB(path, cache_mb, expiry_index)
        return db


def close_db(path: Path) -> None:
    """Close this process's connections to the copy at ``path`` (before deleting it)."""
    with _dbs_lock:
        for key in [k for k in _dbs if k[0] == str(path)]:
            _dbs.pop(key).close()


def close_all() -> None:
    """Close every connection of this process (tests; a new checkpoint at the same path)."""
    with _dbs_lock:
        for db in _dbs.values():
            db.close()
        _dbs.clear()
