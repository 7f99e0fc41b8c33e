"""The monitor's Redis users: MONITOR_ACL writes everything, MONITOR_READ_ACL reads everything.

A ``redis-server`` of our own holds exactly the rules of ``storeml.connectors.redis_client``
(which docs/security.md prints). The writer goes through every write of ``MonitorStore``, with
retention and alert trimming (``ZREMRANGEBYRANK``/``HDEL`` inside the scripts) and a flushed
script cache (``SCRIPT EXISTS``/``SCRIPT LOAD``); the reader runs every read plan, sync and async.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py
from pydantic import SecretStr

from storeml.connectors.monitor_store import MonitorReader, MonitorStore
from storeml.connectors.profile_reader import connect_async
from storeml.connectors.redis_client import MONITOR_ACL, MONITOR_READ_ACL, RedisTarget
from storeml.errors import ConnectorError
from storeml.stack import RedisServer
from tests.monitor_data import T0, WINDOW_MS, alert, drift_window, health, performance_window

PREFIX = "monacl"
ADMIN_PW = "adm1n-Mon-4e1"
WRITER_PW = "wr1ter-Mon-8b7"
READER_PW = "r3ader-Mon-2c9"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"
STORES = ["s1", "s2"]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        workdir=tmp_path_factory.mktemp("monitor-acl-redis"),
        password=ADMIN_PW,
        config=[
            f"user storeml-monitor on >{WRITER_PW} {MONITOR_ACL.format(prefix=PREFIX)}",
            f"user storeml-monitor-read on >{READER_PW} {MONITOR_READ_ACL.format(prefix=PREFIX)}",
        ],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def target(server: RedisServer, user: str, password: str) -> RedisTarget:
    return RedisTarget(server.url, username=user, password=SecretStr(password))


def test_the_docs_give_the_rules_the_test_grants() -> None:
    text = DOCS.read_text()
    assert (
        f"user storeml-monitor on >MONITOR_PASSWORD {MONITOR_ACL.format(prefix='storeml')}\n"
        in text
    )
    line = MONITOR_READ_ACL.format(prefix="storeml")
    assert f"user storeml-monitor-read on >MONITOR_READ_PASSWORD {line}\n" in text


def test_the_monitor_writes_and_the_reader_reads_through_their_users(
    acl_redis: RedisServer,
) -> None:
    writer_target = target(acl_redis, "storeml-monitor", WRITER_PW)
    writer = MonitorStore(writer_target, PREFIX, retention_windows=2, keep_alerts=2)
    admin = acl_redis.target.connect()
    for index in range(4):  # past the retention: the scripts trim the series and the alerts
        if index == 2:
            admin.script_flush()  # a restarted Redis: the pipeline loads the scripts again
        writer.write_drift(drift_window(index, STORES, drifting="s2" if index >= 2 else None))
        writer.write_performance(performance_window(index, STORES, "champion", "3"))
        writer.write_performance(performance_window(index, STORES, "challenger", "4"))
        writer.write_alert(alert("s2", index, "firing" if index % 2 == 0 else "resolved"))
    writer.write_health(health())
    writer.write_alert(alert("s1", 3, "firing"))
    status = {"health": writer.health(), "open": writer.alerts("open")}  # storeml monitor status
    writer.close()
    assert status["health"] is not None and status["open"]

    reader_target = target(acl_redis, "storeml-monitor-read", READER_PW)
    reader = MonitorStore(reader_target, PREFIX)
    newest = T0 + 3 * WINDOW_MS
    assert [r["window_start"] for r in reader.drift_series("s2")] == [newest - WINDOW_MS, newest]
    assert {r["store_id"] for r in reader.latest_drift()} == set(STORES)
    perf = reader.performance_series("customers-model")
    assert [(r["window_start"], r["role"]) for r in perf] == [
        (start, role)
        for start in (newest - WINDOW_MS, newest)
        for role in ("champion", "challenger")
    ]
    assert reader.store_performance_series("s1")
    assert reader.latest_performance()
    assert len(reader.alerts()) == 2  # keep_alerts
    assert [a["store_id"] for a in reader.alerts("open")] == ["s1"]  # s2 resolved last
    assert reader.health() is not None and reader.health_series()
    assert [m["name"] for m in reader.models()] == ["customers-model"]
    with pytest.raises(ConnectorError, match="ACL user lacks"):
        reader.write_health(health())  # the reader cannot write
    reader.close()

    async def read_async() -> list[object]:
        client = connect_async(reader_target)
        dashboard = MonitorReader(client, PREFIX)
        try:
            return list(
                await asyncio.gather(
                    dashboard.models(),
                    dashboard.health(),
                    dashboard.health_series(),
                    dashboard.alerts("open"),
                    dashboard.alerts(),
                    dashboard.latest_drift(),
                    dashboard.latest_performance(),
                    dashboard.drift_series("*"),
                    dashboard.performance_series("customers-model"),
                    dashboard.store_performance_series("s2"),
                )
            )
        finally:
            await client.aclose()

    assert all(asyncio.run(read_async()))

    # the rules are real: neither user reaches a key outside <prefix>:monitor:
    for who in (writer_target, reader_target):
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            who.connect().hgetall(f"{PREFIX}:{{s1}}:customer:c1")
    with pytest.raises(redis_py.exceptions.NoPermissionError):
        writer_target.connect().delete(f"{PREFIX}:monitor:alerts")  # nor a command not granted
