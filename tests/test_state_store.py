"""Entity-keyed profile state: the stream's own state step (``fold_step``) over real files and SQLite.

No Spark here: each "task" is a call of the code an enrich task runs, and each "host" is its own
working-copy folder, so task counts, replays, cleaning races and expiry can be driven exactly.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from storeml.connectors.state_store import (
    StateStore,
    clean,
    prepare_checkpoint,
    wait_for_snapshots,
    write_manifest,
)
from storeml.errors import StateError
from storeml.models.events import ORDER, facts_from_events
from storeml.models.profiles import ProfileState, fold
from storeml.streams.state_step import fold_step
from tests.test_profiles import Event, synthetic_events

BUCKETS = 16


def store_for(root: Path, host: Path, **options: Any) -> StateStore:
    return StateStore(root, "test", BUCKETS, host, **options)


def run_batch(
    root: Path,
    host: Path,
    version: int,
    events: list[Event],
    tasks: int,
    *,
    ts: int = 0,
    ttl_ms: int = 0,
    commit: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """One micro-batch as the stream runs it: ``tasks`` enrich tasks, then the driver's manifest."""
    facts = facts_from_events(events, BUCKETS)
    files: dict[str, list[int]] = {}
    totals: dict[str, Any] = {"customers": {}, "expired": []}
    for partition in range(tasks):
        part = facts[facts["bucket"] % tasks == partition].reset_index(drop=True)
        if part.empty:
            continue
        store = store_for(root, host, **options)
        step = fold_step(store, part, version, tasks, BUCKETS, ts, ttl_ms)
        assert step.committed is not None
        step.committed.result()
        files[step.state_info["file"]] = step.state_info["changed"]
        for key in ("keys_read", "rows_read", "rows_written", "rebuilds", "catch_ups"):
            totals[key] = totals.get(key, 0) + step.state_info[key]
        for row in step.customers.itertuples():
            totals["customers"][(row.store_id, row.customer_id)] = row
        totals["expired"] += [
            tuple(r) for r in step.expired.get("customers", pd.DataFrame()).itertuples(index=False)
        ]
    wait_for_snapshots()
    if commit:
        write_manifest(root, version, files)
    return totals


def state_at(root: Path, host: Path, version: int, **options: Any) -> dict[str, pd.DataFrame]:
    """Every state row at ``version`` as seen from ``host`` (recovering it as a task would)."""
    store = store_for(root, host, **options)
    store.prepare(list(range(BUCKETS)), version)
    db = store.db
    tables: dict[str, list[pd.DataFrame]] = {t: [] for t in ProfileState.TABLES}
    for bucket in range(BUCKETS):
        for table, frame in db.dump(bucket).items():
            tables[table].append(frame[~frame["expired"]])
    return {t: _canonical(pd.concat(frames, ignore_index=True)) for t, frames in tables.items()}


def reference_state(events: list[Event]) -> dict[str, pd.DataFrame]:
    delta = fold(ProfileState(), facts_from_events(events, BUCKETS))
    return {t: _canonical(f) for t, f in delta.tables().items()}


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in ("bucket", "touched_ms", "expired") if c in frame]
    frame = frame.drop(columns=drop)
    keys = [c for c in frame.columns if c in ("store_id", "customer_id", "product_id", "category")]
    return frame.sort_values(keys).reset_index(drop=True).astype(str)


def assert_same_state(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for table in ProfileState.TABLES:
        assert len(got[table]) == len(want[table]), table
        pd.testing.assert_frame_equal(got[table], want[table][got[table].columns], obj=table)


def chunked(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def test_a_checkpoint_resumes_with_other_task_counts_and_equals_one_fold(tmp_path: Path) -> None:
    events = synthetic_events(events=3_000)
    chunks = chunked(events, 150)
    tasks = [2, 2, 2, 4, 4, 4, 1, 1, 2, 2, 3, 3, 4, 2, 2, 2, 4, 4, 2, 2]
    root, host = tmp_path / "state", tmp_path / "host-a"
    options = {"snapshot_every": 3, "retain": 4}
    for version, chunk in enumerate(chunks):
        run_batch(root, host, version, chunk, tasks[version], **options)
        if version % 3 == 0:
            clean(root, version, 4)
    last = len(chunks) - 1
    want = reference_state(events)
    # the working copy of the host that ran the batches
    assert_same_state(state_at(root, host, last, **options), want)
    # a new host rebuilds every bucket from snapshots and the changelog
    assert_same_state(state_at(root, tmp_path / "host-b", last, **options), want)
    # a version inside the retention window is still restorable (a replay reads it)
    assert_same_state(
        state_at(root, tmp_path / "host-c", last - 2, **options),
        reference_state([e for c in chunks[: last - 1] for e in c]),
    )
    # cleaning removed the early changelog, kept what the window needs
    manifests = sorted(int(p.name[:12]) for p in (root / "changelog").glob("*.json"))
    assert manifests[0] > 0 and manifests[-1] == last


def test_a_replayed_batch_reads_the_last_committed_state(tmp_path: Path) -> None:
    events = synthetic_events(events=1_500)
    chunks = chunked(events, 300)
    root, host = tmp_path / "state", tmp_path / "host"
    for version, chunk in enumerate(chunks[:-1]):
        run_batch(root, host, version, chunk, 2)
    last = len(chunks) - 1
    # the last batch runs with 4 tasks, writes its changelog and the working copy, then the
    # driver dies before the batch commits
    run_batch(root, host, last, chunks[-1], 4, commit=False)
    assert prepare_checkpoint(root, last) > 0  # the restarted query drops that attempt's files
    assert not list((root / "changelog").glob(f"{last:012d}*"))
    replay = run_batch(root, host, last, chunks[-1], 2)
    assert replay["rebuilds"] > 0  # the copy was ahead of the committed state
    assert_same_state(state_at(root, host, last), reference_state(events))


def test_a_batch_reads_and_writes_only_the_entities_it_touches(tmp_path: Path) -> None:
    small = synthetic_events(events=400, stores=4, seed=5)
    counts = []
    for history in (1_000, 10_000):
        root, host = tmp_path / f"s{history}", tmp_path / f"h{history}"
        old = synthetic_events(events=history, stores=4, seed=9)
        run_batch(root, host, 0, old, 2)
        touched = run_batch(root, host, 1, small, 2)
        facts = facts_from_events(small, BUCKETS)
        keys = len(
            facts.loc[facts["customer_id"].notna(), ["store_id", "customer_id"]].drop_duplicates()
        ) + len(facts[["store_id", "product_id"]].drop_duplicates())
        assert touched["keys_read"] == keys
        delta = fold(ProfileState(), facts)
        written = len(delta.customers) + len(delta.categories) + len(delta.products)
        assert touched["rows_written"] == written
        counts.append((touched["keys_read"], touched["rows_written"]))
        assert touched["rows_read"] <= keys + len(delta.categories) * 4
    assert counts[0] == counts[1]  # ten times the state, the same work


def test_catching_up_while_another_worker_cleans_never_loses_a_change(tmp_path: Path) -> None:
    events = synthetic_events(events=2_400, stores=12, seed=11)
    chunks = chunked(events, 100)
    root, writer_host = tmp_path / "state", tmp_path / "writer"
    options = {"snapshot_every": 2, "retain": 2}
    committed = -1
    done = threading.Event()
    failures: list[str] = []
    checks = {"catch_ups": 0, "rebuilds": 0, "checked": 0}
    # The contract: cleaning at batch v runs beside tasks of batch v, which read version v - 1.
    # So the cleaner never runs ahead of the version the reader is restoring plus one.
    reading: dict[str, int | None] = {"version": None}

    def reader() -> None:
        rnd = random.Random(1)
        host = tmp_path / "reader"
        seen, gap = -1, 1
        while not done.is_set() or checks["checked"] == 0:
            version = committed
            if version < 0 or (version < seen + gap and not done.is_set()):
                time.sleep(0.002)  # a worker that did not serve these buckets for a while
                continue
            seen, gap = version, rnd.randint(1, 6)
            reading["version"] = version
            store = store_for(root, host, **options)
            try:
                store.prepare(list(range(BUCKETS)), version)
            except StateError as exc:
                failures.append(f"version {version}: {exc}")
                return
            checks["catch_ups"] += store.stats.catch_ups
            checks["rebuilds"] += store.stats.rebuilds
            if rnd.random() < 0.25:  # compare the whole state now and then
                got = state_at(root, host, version, **options)
                want = reference_state([e for c in chunks[: version + 1] for e in c])
                try:
                    assert_same_state(got, want)
                except AssertionError as exc:
                    failures.append(f"version {version}: {exc}")
                    return
                checks["checked"] += 1

    def cleaner() -> None:
        while not done.is_set():
            version, target = committed, reading["version"]
            if target is not None:
                clean(root, min(version, target + 1), options["retain"])
            time.sleep(0.001)

    threads = [threading.Thread(target=reader), threading.Thread(target=cleaner)]
    for thread in threads:
        thread.start()
    try:
        for version, chunk in enumerate(chunks):
            run_batch(root, writer_host, version, chunk, 2, **options)
            committed = version
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures
    assert checks["checked"] > 0 and checks["catch_ups"] + checks["rebuilds"] > 0


def _order(store: str, customer: str, time_ms: int, offset: int) -> Event:
    record = {
        "store_id": store,
        "customer_id": customer,
        "order_id": f"o{offset}",
        "event_time": time_ms,
        "lines": [{"product_id": "p1", "quantity": 1, "unit_price_minor": 100, "category": "c"}],
    }
    return (ORDER, record, "orders", 0, offset)


def test_idle_entities_expire_and_come_back_afresh(tmp_path: Path) -> None:
    root, host = tmp_path / "state", tmp_path / "host"
    options = {"expiry": True}
    ttl = 1_000
    run_batch(
        root,
        host,
        0,
        [_order("s", "a", 1, 0), _order("s", "b", 1, 1)],
        2,
        ts=0,
        ttl_ms=ttl,
        **options,
    )
    run_batch(root, host, 1, [_order("s", "a", 2, 2)], 2, ts=600, ttl_ms=ttl, **options)
    # at 1,500 ms "b" (touched at 0) is idle past 1,000 ms, "a" (touched at 600) is not
    third = run_batch(root, host, 2, [_order("s", "c", 3, 3)], 2, ts=1_500, ttl_ms=ttl, **options)
    gone = {(store, customer) for _, store, customer, _ in third["expired"]}
    assert gone == {("s", "b")}
    state = state_at(root, tmp_path / "fresh-host", 2, **options)
    assert set(state["customers"]["customer_id"]) == {"a", "c"}
    # "b" orders again: its profile starts from this event, its version keeps rising
    back = run_batch(root, host, 3, [_order("s", "b", 4, 4)], 2, ts=1_600, ttl_ms=ttl, **options)
    row = back["customers"][("s", "b")]
    assert row.order_count == 1 and row.first_order_time == 4
    assert row.profile_version == 2
    # the expiry is in the changelog: a new host agrees
    assert set(state_at(root, tmp_path / "other", 3, **options)["customers"]["customer_id"]) == {
        "a",
        "b",
        "c",
    }


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    root, host = tmp_path / "state", tmp_path / "host"
    run_batch(root, host, 0, synthetic_events(events=200), 2)
    leftover = root / "changelog" / ".000000000001-0of2-customers.parquet.abc.tmp"
    leftover.write_bytes(b"partial")
    with pytest.raises(FileNotFoundError):
        (root / "changelog" / "000000000001.json").read_text()
    assert prepare_checkpoint(root, 1) == 1
    assert not leftover.exists()
