"""The event lake (real Parquet files, real Spark) and the profile Parquet files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from storeml.connectors.event_lake import (
    INCOMING,
    EventLakeSink,
    compact_lake,
    compaction_outcome,
    read_lake,
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
    assert [p.name for p in (tmp_path / INCOMING).iterdir()] == ["orders+0+100.parquet"]
    lake.write(_chunk("orders", 1, 0, ["s2"], day=1))

    done = compact_lake(tmp_path)
    assert (done.incoming_files, done.events, done.files_written) == (2, 5, 4)
    assert not list((tmp_path / INCOMING).iterdir())
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == [
        "store_id=s1/event_date=2024-01-01/orders+0+100-0.parquet",
        "store_id=s2/event_date=2024-01-01/orders+0+100-0.parquet",
        "store_id=s2/event_date=2024-01-02/orders+0+100-0.parquet",
        "store_id=weird%2Fstore%20id/event_date=2024-01-01/orders+0+100-0.parquet",
    ]
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
        return sorted(row.offset for row in frame.collect())

    assert offsets(read_lake(spark, str(tmp_path))) == [0, 1, 2, 3, 4]
    assert offsets(read_lake(spark, str(tmp_path), stores=["s2", "s3"])) == [1, 4]
    assert offsets(read_lake(spark, str(tmp_path), until_ms=T0 + DAY)) == [0, 1, 2, 3]
    row = read_lake(spark, str(tmp_path), stores=["s3"]).collect()[0]
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
