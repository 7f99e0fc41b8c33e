"""The event lake (real Parquet files, real child processes, real Spark) and the profile files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storeml.connectors import event_lake
from storeml.connectors.event_lake import (
    COMMITS,
    INCOMING,
    PAUSE_ENV,
    STAGING,
    STEPS,
    EventLakeSink,
    compact_all,
    compact_lake,
    compaction_outcome,
    read_lake,
    release_lake,
    start_compaction,
)
from storeml.connectors.profile_files import read_profiles, write_profiles
from storeml.errors import ConnectorError

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _chunk(topic: str, partition: int, first: int, stores: list[str], day: int = 0) -> pd.DataFrame:
    n = len(stores)
    return pd.DataFrame(
        {
            "topic": [topic] * n,
            "partition": [partition] * n,
            "offset": list(range(first, first + n)),
            "key": [f"k{i}".encode() for i in range(n)],
            "value": [f"v{first + i}".encode() for i in range(n)],
            "store_id": stores,
            "event_time": [T0 + day * DAY + i for i in range(n)],
        }
    )


def test_writes_land_as_incoming_files_and_compaction_moves_them_by_store_and_date(
    tmp_path: Path,
) -> None:
    lake = EventLakeSink(str(tmp_path))
    chunk = _chunk("orders", 0, 100, ["s1", "s2", "s1", "weird/store id"])
    assert lake.write(chunk.iloc[::-1]) == 1  # rows in any order: the same file
    assert lake.write(chunk) == 1  # the replay of the same offsets: same name
    (name,) = [p.name for p in (tmp_path / INCOMING).iterdir()]
    assert re.fullmatch(r"orders\+0\+100\.[0-9a-f]{16}\.parquet", name)
    lake.write(chunk.iloc[:2])  # the same first offset, other events: another name
    assert len(list((tmp_path / INCOMING).iterdir())) == 2
    lake.write(_chunk("orders", 1, 0, ["s2"], day=1))

    done = compact_lake(tmp_path)
    assert (done.incoming_files, done.events, done.files_written) == (3, 5, 4)
    assert done.duplicates == 2
    assert not list((tmp_path / INCOMING).iterdir())
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("store_id=*/*/*"))
    run = files[0].rsplit("/", 1)[1]  # every output is named after the compaction's run
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{12}-0\.parquet", run)
    assert files == [
        f"store_id=s1/event_date=2024-01-01/{run}",
        f"store_id=s2/event_date=2024-01-01/{run}",
        f"store_id=s2/event_date=2024-01-02/{run}",
        f"store_id=weird%2Fstore%20id/event_date=2024-01-01/{run}",
    ]
    assert not list((tmp_path / COMMITS).iterdir()) and not list((tmp_path / STAGING).iterdir())
    table = pq.read_table(tmp_path / files[0])
    assert table.column_names == ["topic", "partition", "offset", "key", "value", "event_time"]
    assert table.column("offset").to_pylist() == [100, 102]
    assert compact_lake(tmp_path).incoming_files == 0


def test_the_streams_background_compaction_runs_in_a_low_priority_child(tmp_path: Path) -> None:
    lake = EventLakeSink(str(tmp_path))
    for part in range(25):  # more than one compact_lake round (20 files each)
        lake.write(_chunk("orders", part, 0, ["s1", "s2"]))
    process = start_compaction(tmp_path)
    assert os.getpriority(os.PRIO_PROCESS, process.pid) == 19 or process.poll() is not None
    process.wait(60)
    done = compaction_outcome(process)
    assert (done.incoming_files, done.events) == (25, 50)
    assert not list((tmp_path / INCOMING).iterdir())
    assert len(list(tmp_path.glob("store_id=s1/event_date=2024-01-01/*.parquet"))) == 2
    assert Counter(_compacted(tmp_path)) == Counter(
        ("orders", part, offset) for part in range(25) for offset in (0, 1)
    )

    (tmp_path / INCOMING / "orders+99+0.parquet").write_bytes(b"not parquet")
    broken = start_compaction(tmp_path)
    broken.wait(60)
    with pytest.raises(ConnectorError, match="compaction exited with 1: .*orders\\+99"):
        compaction_outcome(broken)


def test_read_lake_prunes_by_store_and_time_and_counts_each_event_once(
    spark: Any, tmp_path: Path
) -> None:
    lake = EventLakeSink(str(tmp_path))
    lake.write(_chunk("orders", 0, 0, ["s1", "s2", "s1"], day=0))
    compact_lake(tmp_path)
    lake.write(_chunk("orders", 0, 3, ["s1", "s3"], day=2))  # not compacted yet
    # a replay cut differently (offsets 1-3 again, from another first offset) adds no event
    lake.write(_chunk("orders", 0, 1, ["s2", "s1", "s1"], day=0).assign(offset=[1, 2, 3]))
    # a compaction that died before deleting its inputs: its events are in both places
    shutil.copytree(tmp_path / INCOMING, tmp_path / "copy")
    compact_lake(tmp_path)
    for path in (tmp_path / "copy").iterdir():
        path.rename(tmp_path / INCOMING / path.name)

    def offsets(frame: Any) -> list[int]:
        try:
            return sorted(row.offset for row in frame.collect())
        finally:
            release_lake(tmp_path)

    assert offsets(read_lake(spark, str(tmp_path))) == [0, 1, 2, 3, 4]
    assert offsets(read_lake(spark, str(tmp_path), stores=["s2", "s3"])) == [1, 4]
    assert offsets(read_lake(spark, str(tmp_path), until_ms=T0 + DAY)) == [0, 1, 2, 3]
    row = read_lake(spark, str(tmp_path), stores=["s3"]).collect()[0]
    release_lake(tmp_path)
    assert (row.topic, row.partition, bytes(row.key), bytes(row.value)) == (
        "orders",
        0,
        b"k1",
        b"v4",
    )
    with pytest.raises(ConnectorError, match="holds no events"):
        read_lake(spark, str(tmp_path / "empty"))


def test_profile_files_round_trip_nested_fields(tmp_path: Path) -> None:
    customer = {
        "store_id": "s1",
        "customer_id": "c1",
        "profile_version": 2,
        "order_count": 1,
        "total_spend_minor": 500,
        "avg_order_value_minor": 500.0,
        "first_order_time": T0,
        "last_order_time": T0,
        "last_event_time": T0 + 5,
        "days_since_last_order": 0.0,
        "top_categories": [{"category": "toys", "spend_minor": 500, "share": 1.0}],
        "product_views": 1,
        "propensity": None,
        "model": {"name": "m", "version": None, "scope": "none"},
        "source": [{"topic": "orders", "partition": 0, "first_offset": 1, "last_offset": 1}],
        "shadow": None,
    }
    write_profiles(str(tmp_path), 3, [customer], [])
    write_profiles(str(tmp_path), 3, [customer], [])  # a retried task replaces its file
    assert read_profiles(tmp_path, "customer") == [customer]
    assert read_profiles(tmp_path, "product") == []
    with pytest.raises(ConnectorError, match="no customer profiles"):
        read_profiles(tmp_path / "nothing", "customer")


# --- exactly once under replays, kills and readers ----------------------------------------------

PER_BATCH = 12  # offsets per partition per micro-batch
SOURCES = [("orders", 0), ("orders", 1), ("products", 0)]


def _batch(number: int) -> pd.DataFrame:
    """Micro-batch ``number``: the same offset ranges (and events) every time it is replayed."""
    rows = []
    for topic, partition in SOURCES:
        for offset in range(number * PER_BATCH, (number + 1) * PER_BATCH):
            rows.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "key": f"{topic}{partition}-{offset}".encode(),
                    "value": f"value {topic} {partition} {offset}".encode(),
                    "store_id": f"s{(offset * 7 + partition) % 4}",
                    "event_time": T0 + (offset % 3) * DAY + offset,
                }
            )
    return pd.DataFrame(rows)


def _write(lake: EventLakeSink, number: int, tasks: int) -> None:
    """Write micro-batch ``number`` as ``tasks`` enrich tasks would: one incoming file each."""
    frame = _batch(number)
    task = (frame["offset"] * 2_654_435_761 + frame["partition"] * 97) % tasks
    for _, part in frame.groupby(task):
        lake.write(part)


def _expected(numbers: set[int]) -> Counter[tuple[str, int, int]]:
    return Counter(
        (topic, partition, offset)
        for topic, partition in SOURCES
        for number in numbers
        for offset in range(number * PER_BATCH, (number + 1) * PER_BATCH)
    )


def _rows(files: list[Path]) -> list[tuple[str, int, int]]:
    rows = []
    for path in files:
        table = pq.read_table(path, columns=["topic", "partition", "offset"])
        rows += zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    return rows


def _compacted(root: Path) -> list[tuple[str, int, int]]:
    """The coordinates of every row of every compacted file."""
    return _rows(sorted(root.glob("store_id=*/event_date=*/*.parquet")))


def _incoming(root: Path) -> list[Path]:
    return sorted(p for p in (root / INCOMING).glob("*.parquet") if not p.name.startswith("."))


def _check_invariants(root: Path, numbers: set[int]) -> None:
    """At any moment: compacted files never repeat an event, and no event is lost."""
    compacted = Counter(_compacted(root))
    assert max(compacted.values(), default=1) == 1, "a compacted event is repeated"
    assert set(compacted) | set(_rows(_incoming(root))) == set(_expected(numbers))


def _assert_exactly_once(root: Path, numbers: set[int]) -> None:
    """After a last compaction with no reader: every event in one compacted file, nothing else."""
    assert Counter(_compacted(root)) == _expected(numbers)
    assert not _incoming(root)
    assert not list((root / COMMITS).glob("*.json"))
    assert not (root / STAGING).exists() or not list((root / STAGING).iterdir())


def test_compacting_a_replayed_file_with_others_never_replaces_an_earlier_output(
    tmp_path: Path,
) -> None:
    lake = EventLakeSink(str(tmp_path))
    _write(lake, 0, tasks=1)  # X
    _write(lake, 1, tasks=1)  # Y
    assert compact_lake(tmp_path).incoming_files == 2
    first = {p: p.read_bytes() for p in tmp_path.glob("store_id=*/*/*.parquet")}
    _write(lake, 0, tasks=1)  # X replayed after its compaction
    _write(lake, 2, tasks=1)  # Z
    done = compact_lake(tmp_path)
    assert (done.incoming_files, done.events, done.duplicates) == (2, 3 * PER_BATCH, 3 * PER_BATCH)
    assert {p: p.read_bytes() for p in first} == first  # the first outputs are untouched
    _assert_exactly_once(tmp_path, {0, 1, 2})


def test_replays_cut_into_other_task_counts_leave_every_event_once(tmp_path: Path) -> None:
    lake = EventLakeSink(str(tmp_path))
    _write(lake, 0, tasks=2)
    _write(lake, 0, tasks=3)  # replayed before any compaction, cut differently
    compact_lake(tmp_path, max_files=2)  # part of one cut and part of the other
    _check_invariants(tmp_path, {0})
    _write(lake, 1, tasks=4)
    compact_lake(tmp_path, max_files=3)
    _write(lake, 1, tasks=1)  # replayed after part of it was compacted
    _write(lake, 0, tasks=5)  # an old batch, long compacted, once more
    _write(lake, 2, tasks=2)
    _check_invariants(tmp_path, {0, 1, 2})
    done = compact_all(tmp_path)
    assert done.duplicates > 0
    _assert_exactly_once(tmp_path, {0, 1, 2})


def _stopped(process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until ``process`` stopped itself (SIGSTOP) at its pause step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(process.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            return
        assert not pid, f"the compaction exited before it paused: status {status}"
        time.sleep(0.02)
    raise AssertionError("the compaction never reached its pause step")


def _kill_compaction_at(monkeypatch: pytest.MonkeyPatch, root: Path, step: str) -> None:
    """Start a compaction child that stops at ``step``, then kill -9 it there."""
    monkeypatch.setenv(PAUSE_ENV, step)
    process = start_compaction(root)
    monkeypatch.delenv(PAUSE_ENV)
    _stopped(process)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("step", STEPS)
def test_a_compaction_killed_at_any_step_is_finished_by_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str
) -> None:
    lake = EventLakeSink(str(tmp_path))
    _write(lake, 0, tasks=2)
    compact_lake(tmp_path)
    _write(lake, 1, tasks=3)
    _write(lake, 2, tasks=2)
    _kill_compaction_at(monkeypatch, tmp_path, step)
    _check_invariants(tmp_path, {0, 1, 2})
    _write(lake, 1, tasks=2)  # the stream replays a batch the dead compaction held
    later = STEPS[(STEPS.index(step) + 2) % len(STEPS)]
    _kill_compaction_at(monkeypatch, tmp_path, later)  # and the next compaction dies too
    _check_invariants(tmp_path, {0, 1, 2})
    _write(lake, 3, tasks=1)
    process = start_compaction(tmp_path)
    process.wait(60)
    compaction_outcome(process)
    _assert_exactly_once(tmp_path, {0, 1, 2, 3})


def test_an_unknown_pause_step_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    EventLakeSink(str(tmp_path)).write(_batch(0))
    monkeypatch.setenv(PAUSE_ENV, "halfway")
    process = start_compaction(tmp_path)
    process.wait(60)
    with pytest.raises(ConnectorError, match="'halfway' is not a compaction step"):
        compaction_outcome(process)


def _read(spark: Any, root: Path, **kwargs: Any) -> Counter[tuple[str, int, int]]:
    try:
        rows = read_lake(spark, root, **kwargs).collect()
    finally:
        release_lake(root)
    return Counter((row.topic, row.partition, row.offset) for row in rows)


def test_read_lake_counts_each_event_once_after_a_compaction_killed_between_steps(
    spark: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lake = EventLakeSink(str(tmp_path))
    for number in range(3):
        _write(lake, number, tasks=2)
    compact_lake(tmp_path, max_files=2)
    _write(lake, 0, tasks=3)  # a replay of compacted events, not compacted yet
    _kill_compaction_at(monkeypatch, tmp_path, "ledgered")  # outputs placed, inputs still there
    assert _compacted(tmp_path) and _incoming(tmp_path)
    assert _read(spark, tmp_path) == _expected({0, 1, 2})
    by_store = _read(spark, tmp_path, stores=["s1"], until_ms=T0 + DAY)
    frame = pd.concat([_batch(number) for number in range(3)])
    wanted = frame[(frame["store_id"] == "s1") & (frame["event_time"] <= T0 + DAY)]
    expected = zip(wanted["topic"], wanted["partition"], wanted["offset"], strict=True)
    assert by_store == Counter(expected) and len(by_store) > 0


def test_a_read_holds_the_files_it_listed_until_released(spark: Any, tmp_path: Path) -> None:
    lake = EventLakeSink(str(tmp_path))
    for number in range(3):
        _write(lake, number, tasks=3)
    compact_lake(tmp_path, max_files=4)
    frame = read_lake(spark, tmp_path)  # lists the incoming files; reads them later
    listed = _incoming(tmp_path)
    process = start_compaction(tmp_path)  # the stream's compaction, while the read is pending
    process.wait(60)
    done = compaction_outcome(process)
    assert done.incoming_files == len(listed) and done.waiting_files == len(listed)
    assert _incoming(tmp_path) == listed  # compacted, but left in place for the reader
    rows = frame.collect()
    assert Counter((r.topic, r.partition, r.offset) for r in rows) == _expected({0, 1, 2})
    _check_invariants(tmp_path, {0, 1, 2})
    assert compact_lake(tmp_path).waiting_files == len(listed)  # still held
    release_lake(tmp_path)
    assert compact_lake(tmp_path).incoming_files == 0  # only finishes the held runs
    _assert_exactly_once(tmp_path, {0, 1, 2})
    assert _read(spark, tmp_path) == _expected({0, 1, 2})


def test_reads_racing_the_streams_compactions_see_every_event_once(
    spark: Any, tmp_path: Path
) -> None:
    lake = EventLakeSink(str(tmp_path))
    _write(lake, 0, tasks=2)
    written = [0]  # batches whose files are all written
    started = [0]  # batches whose files are being written
    compactions: list[Any] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def stream() -> None:  # micro-batches, replays and a compaction child after each
        number, rng = 1, random.Random(7)
        try:
            while not stop.is_set():
                started.append(number)
                _write(lake, number, tasks=rng.randint(1, 4))
                written.append(number)
                _write(lake, rng.randrange(number + 1), tasks=rng.randint(1, 4))
                number += 1
                process = start_compaction(tmp_path)
                process.wait(60)
                compactions.append(compaction_outcome(process))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        reads, deadline = 0, time.monotonic() + 120
        while (reads < 4 or len(compactions) < 4) and time.monotonic() < deadline and not failures:
            reads += 1
            before = set(written[:])
            seen = _read(spark, tmp_path)
            assert max(seen.values()) == 1
            assert set(_expected(before)) <= set(seen) <= set(_expected(set(started[:])))
    finally:
        stop.set()
        writer.join(120)
    assert not failures, failures
    assert len(compactions) >= 4, "too few compactions ran beside the reads"
    assert any(c.waiting_files for c in compactions), "no compaction met a reader"
    compact_all(tmp_path)
    _assert_exactly_once(tmp_path, set(written))


class _Killed(BaseException):
    """Stands for a kill -9 of an in-process compaction (nothing below catches it)."""


_OPERATION = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 4)),
    st.tuples(st.just("replay"), st.integers(0, 20), st.integers(1, 4)),
    st.tuples(st.just("compact"), st.integers(1, 5)),
    st.tuples(st.just("kill"), st.integers(1, 5), st.sampled_from(STEPS)),
    st.tuples(st.just("reader")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OPERATION, min_size=1, max_size=25))
def test_any_sequence_of_writes_replays_compactions_kills_and_reads(
    operations: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as readers:
        root = Path(folder)
        lake = EventLakeSink(folder)
        numbers: set[int] = set()
        held: list[Path] = []  # incoming files a reader listed
        for operation in operations:
            kind = operation[0]
            if kind == "write" or (kind == "replay" and not numbers):
                _write(lake, len(numbers), operation[-1])
                numbers.add(len(numbers))
            elif kind == "replay":
                _write(lake, operation[1] % len(numbers), operation[2])
            elif kind == "compact":
                compact_lake(root, max_files=operation[1])
            elif kind == "kill":
                with _fault_at(operation[2]), contextlib.suppress(_Killed):
                    compact_lake(root, max_files=operation[1])
            elif (root / INCOMING).is_dir():  # a reader pins the lake and lists it
                readers.enter_context(_shared_lock(root / ".readers.lock"))
                held += _incoming(root)
            _check_invariants(root, numbers)
            assert all(path.exists() for path in held), "a listed file vanished under a reader"
        readers.close()
        compact_all(root)
        _assert_exactly_once(root, numbers)


@contextlib.contextmanager
def _fault_at(step: str) -> Iterator[None]:
    def fault(name: str) -> None:
        if name == step:
            raise _Killed(step)

    event_lake._fault = fault
    try:
        yield
    finally:
        event_lake._fault = None


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def test_the_stream_handler_never_leaves_a_compaction_running_behind_it(tmp_path: Path) -> None:
    """``EnrichBatch.close`` (the CLI calls it when the query stops) waits for the compaction
    child, and stops one that outlasts its timeout: an orphan would hold the lake's lock."""
    import subprocess
    import sys

    from storeml.streams.context import JobContext
    from storeml.streams.enrich import EnrichBatch

    ctx = JobContext(
        kafka={}, orders_topic="o", products_topic="p", customer_topic="c", product_topic="q",
        dead_letter_topic=None, redis="redis://127.0.0.1:1/0", redis_prefix="x",  # type: ignore[arg-type]
        state_root=str(tmp_path), state_buckets=1, snapshot_every=1, retain=2, tracking_uri="",
        registry_uri="", customer_model="c", product_model="p", serving_alias="",
        shadow_alias="", model_cache_size=1, transactional_prefix=None,
    )  # fmt: skip
    handler = EnrichBatch(ctx)
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    handler._compactor = quick  # noqa: SLF001 - what _maybe_compact starts
    handler.close(timeout=30)
    assert quick.returncode == 0  # waited for, not killed
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    handler._compactor = stuck  # noqa: SLF001
    handler.close(timeout=0.5)
    assert stuck.returncode is not None and stuck.returncode != 0
    handler.close()  # nothing running: a no-op
