"""The event lake: every event the stream accepted, archived as partitioned Parquet, exactly once.

History outlives topic retention here, and the recompute (``batch/recompute.py``) reads it. Layout,
Hive-style so Spark, pyarrow or DuckDB read it as one table partitioned by store and date::

    <root>/store_id=<store>/event_date=<YYYY-MM-DD>/<run>-0.parquet   compacted by run <run>
    <root>/_incoming/<topic>+<partition>+<first offset>.<digest>.parquet   not yet compacted
    <root>/_compactions/<run>.json     a compaction committed but not finished (inputs, outputs)
    <root>/_staging/<run>/...          a compaction's outputs before they are placed
    <root>/_ledger/                    the compacted coordinates (``connectors/lake_ledger.py``)

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

**Exactly once.** An incoming file is named after its first source coordinates and a digest of
all of them: a replayed micro-batch cut into the same tasks rewrites its files byte for byte, and
one cut into another number of tasks adds files that repeat events. The compacted files never
repeat an event: a compaction drops the rows the :class:`~storeml.connectors.lake_ledger.Ledger`
marks compacted, names its outputs after its own run (never after the events, so no compaction
replaces another's file), and commits in steps that a kill -9 at any point leaves recoverable:

1. write the outputs and their coordinates under ``_staging/<run>``;
2. commit: rename ``_compactions/<run>.json`` into place (before it, the run never happened and
   the next compaction deletes its staging);
3. hard-link each output into place (never over an existing file), mark the ledger;
4. delete the inputs, unless a reader holds them (below); then delete the commit record.

The next compaction first finishes every committed run (steps 3-4, each idempotent). Until then an
event can sit in an incoming file and a compacted one; readers drop such incoming rows.

**Readers.** :func:`read_lake` holds a shared lock on ``<root>/.readers.lock`` from before it lists
the incoming files until :func:`release_lake` (or the end of the process): a compaction meanwhile
places its outputs but leaves its inputs in ``_incoming`` (step 4 waits for a compaction that finds
the lock free), so a listed file never disappears under a Spark job, and no event is lost or read
twice. Compactions of one lake are serialised by ``<root>/.compaction.lock``; both locks are
``flock`` locks, so the root must be a file system that honours them (local disk, NFSv4).

The root is a local or mounted shared folder (every Spark executor must reach it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from storeml.connectors.base import Sink
from storeml.connectors.lake_ledger import Ledger
from storeml.errors import ConnectorError

if TYPE_CHECKING:
    from storeml.connectors.lake_reader import read_lake, release_lake

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
    "read_lake",  # from lake_reader
    "release_lake",  # from lake_reader
    "lake_dates",
    "PAUSE_ENV",
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
COMMITS = "_compactions"
_COMPACTION_LOCK = ".compaction.lock"
READERS_LOCK = ".readers.lock"
COORDINATES = ["topic", "partition", "offset"]
#: Fault injection for tests and chaos runs: a compaction child started with this variable set to
#: a step name (:data:`STEPS`) stops itself (SIGSTOP) there, to be killed or continued.
PAUSE_ENV = "STOREML_LAKE_COMPACTION_PAUSE"
#: The points between a compaction's steps, in order (see the module docstring).
STEPS = ("staged", "committed", "placed-1", "placed", "ledgered", "deleted-1")
#: Called with each step name as a compaction passes it; the child sets it from PAUSE_ENV.
_fault: Callable[[str], None] | None = None


def _dates(event_time: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` (UTC) of epoch-millisecond times."""
    return np.datetime_as_string(event_time.astype("datetime64[ms]"), unit="D")


def _name(first: pd.Series | dict) -> str:
    return f"{first['topic']}+{int(first['partition'])}+{int(first['offset'])}"


def _digest(events: pd.DataFrame) -> str:
    """A digest of the (sorted) source coordinates of ``events``: equal coordinates, equal name."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update("\0".join(events["topic"].astype(str)).encode())
    digest.update(events["partition"].to_numpy(dtype="<i8").tobytes())
    digest.update(events["offset"].to_numpy(dtype="<i8").tobytes())
    return digest.hexdigest()


def _step(name: str) -> None:
    if _fault is not None:
        _fault(name)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    """Hold ``flock(mode | LOCK_NB)`` on ``path`` for the block; yields False if it is taken."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


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

        The file is named after the smallest ``(topic, partition, offset)`` of ``events`` and a
        digest of all of them, and rows are sorted by them, so the same events always give the
        same file, and a file name never stands for other events.
        """
        if events.empty:
            return 0
        self.ensure_setup()
        import pyarrow.parquet as pq

        events = events.sort_values(COORDINATES, kind="stable")
        table = pa.Table.from_pandas(
            events.assign(event_date=_dates(events["event_time"].to_numpy(dtype="int64"))),
            schema=INCOMING_SCHEMA,
            preserve_index=False,
        )
        name = f"{_name(events.iloc[0])}.{_digest(events)}.parquet"
        target = Path(self.root, INCOMING, name)
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
    events: int  # events new to the compacted files
    files_written: int
    seconds: float
    duplicates: int = 0  # incoming rows dropped: compacted already, or repeated in the inputs
    waiting_files: int = 0  # compacted incoming files left in place while a reader holds them


def compact_lake(root: str | Path, *, max_files: int = 20) -> Compaction:
    """Move up to ``max_files`` incoming files into the store/date layout (module docstring).

    Finishes the committed runs of earlier, killed compactions first. Returns what it did; does
    nothing (zeros) when another compaction of this lake holds the lock.
    """
    import pyarrow.parquet as pq

    started = time.perf_counter()
    root = Path(root)
    folder = root / INCOMING
    if not folder.is_dir():
        return Compaction(0, 0, 0, 0.0)
    with _flock(root / _COMPACTION_LOCK, fcntl.LOCK_EX) as locked:
        if not locked:
            return Compaction(0, 0, 0, time.perf_counter() - started)
        try:
            ledger = Ledger(root)
            waiting = _recover(root, ledger)
            files = sorted(
                p
                for p in folder.glob("*.parquet")
                if not p.name.startswith(".") and p.name not in waiting
            )[:max_files]
            if not files:
                elapsed = time.perf_counter() - started
                return Compaction(0, 0, 0, elapsed, waiting_files=len(waiting))
            table = pa.concat_tables([pq.read_table(p, schema=INCOMING_SCHEMA) for p in files])
            frame = table.to_pandas().drop_duplicates(COORDINATES)
            frame = frame.loc[~ledger.seen(frame)].sort_values(COORDINATES, kind="stable")
            run = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
            outputs = _stage(root, run, frame)
            _step("staged")
            record = {"inputs": [p.name for p in files], "outputs": outputs}
            _write_record(root, run, record)
            _step("committed")
            left = _finish(root, run, record, ledger)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ConnectorError(f"cannot compact the event lake {root}: {exc}") from exc
    return Compaction(
        len(files),
        len(frame),
        len(outputs),
        time.perf_counter() - started,
        duplicates=table.num_rows - len(frame),
        waiting_files=len(waiting) + left,
    )


def _stage(root: Path, run: str, frame: pd.DataFrame) -> list[str]:
    """Step 1: ``frame`` under ``_staging/<run>`` by store and date, its coordinates beside.

    Returns the outputs' paths relative to the staging folder (and to the root, once placed).
    """
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if frame.empty:
        return []
    staging = root / STAGING / run
    table = pa.Table.from_pandas(frame, schema=INCOMING_SCHEMA, preserve_index=False)
    ds.write_dataset(
        table,
        staging,
        format="parquet",
        partitioning=ds.partitioning(PARTITIONS, flavor="hive"),
        basename_template=f"{run}-{{i}}.parquet",
        max_partitions=1 << 20,
        use_threads=False,
    )
    pq.write_table(table.select(COORDINATES), root / STAGING / f"{run}.coordinates.parquet")
    return sorted(
        os.path.relpath(Path(parent, name), staging)
        for parent, _, names in os.walk(staging)
        for name in names
    )


def _write_record(root: Path, run: str, record: dict[str, list[str]]) -> None:
    """Step 2 (and its updates): ``_compactions/<run>.json``, written whole or not at all."""
    folder = root / COMMITS
    folder.mkdir(exist_ok=True)
    temporary = folder / f".{run}.json.{uuid.uuid4().hex}"
    temporary.write_text(json.dumps(record))
    os.replace(temporary, folder / f"{run}.json")


def _finish(root: Path, run: str, record: dict[str, list[str]], ledger: Ledger) -> int:
    """Steps 3 and 4 of the committed ``run``; the number of inputs left for a reader (or 0).

    Every part is idempotent, so a run killed anywhere here is finished by the next compaction.
    """
    import pyarrow.parquet as pq

    staging = root / STAGING / run
    for i, relative in enumerate(record["outputs"]):
        _place(staging / relative, root / relative, root / COMMITS / f"{run}.json")
        if i == 0:
            _step("placed-1")
    _step("placed")
    coordinates = root / STAGING / f"{run}.coordinates.parquet"
    if coordinates.exists():  # deleted only once the ledger holds them
        ledger.add(pq.read_table(coordinates).to_pandas())
        ledger.flush()
    _step("ledgered")
    if record["outputs"]:  # placed and marked: a later attempt need not look at them again
        record = {"inputs": record["inputs"], "outputs": []}
        _write_record(root, run, record)
    coordinates.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    with _flock(root / READERS_LOCK, fcntl.LOCK_EX) as free:
        if not free:  # a reader may have listed them: the next compaction deletes them
            return len(record["inputs"])
        for i, name in enumerate(record["inputs"]):
            (root / INCOMING / name).unlink(missing_ok=True)
            if i == 0:
                _step("deleted-1")
    (root / COMMITS / f"{run}.json").unlink()
    return 0


def _place(staged: Path, target: Path, record: Path) -> None:
    """Move a staged output to ``target`` without ever replacing a file: link, then unlink."""
    if not staged.exists():
        if target.exists():
            return  # placed by an earlier attempt of this run
        raise ConnectorError(
            f"event lake compaction output {staged} is missing and {target} was never placed"
            f" (the lake was changed by hand?); restore it, or delete {record} and the files"
            " of its run already placed: its events are still in the incoming files it names"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(staged, target)
    except FileExistsError:
        pass  # linked by an earlier attempt that died before the unlink below
    except OSError:  # no hard links on this file system; the name is this run's own
        if not target.exists():
            os.rename(staged, target)
            return
    staged.unlink()


def _recover(root: Path, ledger: Ledger) -> set[str]:
    """Before a compaction: drop uncommitted runs, build a missing ledger, finish committed runs.

    Returns the incoming files that committed runs compacted and a reader still holds.
    """
    records: dict[str, dict[str, list[str]]] = {}
    commits = root / COMMITS
    for path in sorted(commits.iterdir()) if commits.is_dir() else []:
        if path.name.startswith("."):
            path.unlink(missing_ok=True)  # a record never renamed into place: never committed
        elif path.suffix == ".json":
            records[path.stem] = json.loads(path.read_text())
    staging = root / STAGING
    for entry in list(staging.iterdir()) if staging.is_dir() else []:
        if entry.name.split(".")[0] not in records:  # killed before it committed
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if not ledger.complete:
        _build_ledger(root, ledger)
    waiting: set[str] = set()
    for run, record in records.items():
        if _finish(root, run, record, ledger):
            waiting.update(record["inputs"])
    return waiting


def _build_ledger(root: Path, ledger: Ledger) -> None:
    """The first compaction of a lake: mark the compacted files already there (older versions)."""
    import pyarrow.parquet as pq

    repeats = False
    for path in sorted(root.glob("store_id=*/event_date=*/*.parquet")):
        if path.name.startswith("."):
            continue
        coordinates = pq.read_table(path, columns=COORDINATES).to_pandas()
        repeats = repeats or bool(coordinates.duplicated().any() or ledger.seen(coordinates).any())
        ledger.add(coordinates)
    ledger.mark_complete(duplicates=repeats)


def compact_all(root: str | Path) -> Compaction:
    """:func:`compact_lake` until no incoming file is left; the totals."""
    started = time.perf_counter()
    files = events = written = duplicates = 0
    while (done := compact_lake(root)).incoming_files:
        files, events, written, duplicates = (
            files + done.incoming_files,
            events + done.events,
            written + done.files_written,
            duplicates + done.duplicates,
        )
    return Compaction(
        files,
        events,
        written,
        time.perf_counter() - started,
        duplicates=duplicates,
        waiting_files=done.waiting_files,
    )


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


def __getattr__(name: str) -> Any:
    """``read_lake`` and ``release_lake`` live in ``lake_reader`` (Spark); imported on first use."""
    if name in ("read_lake", "release_lake"):
        from storeml.connectors import lake_reader

        return getattr(lake_reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pause_at(step: str) -> Callable[[str], None]:
    def pause(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGSTOP)

    return pause


if __name__ == "__main__":  # start_compaction's child: python -m <this module> <root>
    if pause := os.environ.get(PAUSE_ENV):
        if pause not in STEPS:
            sys.exit(f"{PAUSE_ENV}={pause!r} is not a compaction step; use one of {STEPS}")
        _fault = _pause_at(pause)
    try:
        print(json.dumps(asdict(compact_all(sys.argv[1]))))
    except ConnectorError as error:
        sys.exit(str(error))  # the message on stderr, exit status 1
