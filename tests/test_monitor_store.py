"""The monitor's results in a real Redis: round trips, idempotent replays, retention, alerts.

Every test writes under its own ``redis_prefix`` (the ``settings`` fixture) and checks that
nothing lands outside ``<prefix>:monitor:``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from storeml.connectors.monitor_store import MonitorReader, MonitorStore
from storeml.connectors.profile_reader import connect_async
from storeml.models.monitor_results import DriftWindow, Health, PerformanceWindow
from storeml.settings import Settings
from tests.monitor_data import T0, WINDOW_MS, alert, drift_window, health, performance_window

STORES = ["s1", "s2", "s3"]


@pytest.fixture
def store(settings: Settings) -> Iterator[MonitorStore]:
    writer = MonitorStore.from_settings(settings)
    yield writer
    writer.close()


def snapshot(settings: Settings) -> dict[str, Any]:
    """Every key under the test's prefix with its whole value (type-aware)."""
    client = settings.redis.connect()
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        kind = client.type(key).decode()
        if kind == "hash":
            out[key.decode()] = client.hgetall(key)
        elif kind == "zset":
            out[key.decode()] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key.decode()] = client.smembers(key)
        else:
            out[key.decode()] = client.dump(key)
    client.close()
    return out


def test_results_round_trip_through_their_dicts() -> None:
    window = drift_window(0, STORES, drifting="s2")
    assert DriftWindow.from_dict(window.to_dict()) == window
    perf = performance_window(1, STORES, "challenger", "4")
    assert PerformanceWindow.from_dict(perf.to_dict()) == perf
    snap = health()
    data = snap.to_dict()
    assert data["events_per_second"] is None  # NaN is not JSON
    again = Health.from_dict(data)
    assert math.isnan(again.events_per_second)
    assert again.newest_enriched_age_s == snap.newest_enriched_age_s
    assert again.silent_stores == ("s-quiet",)


def test_drift_round_trip_and_latest(store: MonitorStore, settings: Settings) -> None:
    for index in range(3):
        store.write_drift(drift_window(index, STORES, drifting="s2" if index == 2 else None))
    series = store.drift_series("s2", "orders")
    assert [row["window_start"] for row in series] == [T0, T0 + WINDOW_MS, T0 + 2 * WINDOW_MS]
    newest = drift_window(2, STORES, drifting="s2").stores[1]
    assert {k: series[-1][k] for k in newest.to_dict()} == newest.to_dict()
    assert series[-1]["alert"] and series[-1]["alert_columns"] == ["order_value"]
    assert series[-1]["max_js"] == pytest.approx(0.45)
    assert series[-1]["model_version"] == "3" and series[-1]["monitor"] == "orders"

    latest = store.latest_drift()
    assert [(row["store_id"], row["window_start"]) for row in latest] == [
        (s, T0 + 2 * WINDOW_MS) for s in STORES
    ]
    summary = store.drift_series("*", "orders")
    assert [row["alerting"] for row in summary] == [0, 0, 1]
    assert summary[-1]["stores"] == 3
    assert store.drift_series("s2") == series  # every monitor: only "orders" here
    assert store.models()[0]["monitors"]["orders"]["version"] == "3"
    keys = snapshot(settings)
    assert keys and all(k.startswith(f"{settings.redis_prefix}:monitor:") for k in keys)


def test_writes_are_idempotent_and_replays_do_not_go_back(
    store: MonitorStore, settings: Settings
) -> None:
    store.write_drift(drift_window(0, STORES))
    store.write_drift(drift_window(1, STORES, drifting="s1"))
    store.write_performance(performance_window(1, STORES))
    store.write_alert(alert("s1", 1, "firing"))
    store.write_health(health())
    before = snapshot(settings)
    # the monitor is at least once: the same writes again, and an older window after a newer one
    store.write_drift(drift_window(1, STORES, drifting="s1"))
    store.write_drift(drift_window(0, STORES))
    store.write_performance(performance_window(1, STORES))
    store.write_alert(alert("s1", 1, "firing"))
    store.write_health(health())
    assert snapshot(settings) == before
    assert {row["window_start"] for row in store.latest_drift("orders")} == {T0 + WINDOW_MS}


def test_retention_keeps_the_newest_windows(settings: Settings) -> None:
    store = MonitorStore(settings.redis, settings.redis_prefix, retention_windows=3)
    try:
        for index in range(6):
            store.write_drift(drift_window(index, STORES))
            store.write_performance(performance_window(index, STORES))
        starts = [T0 + i * WINDOW_MS for i in (3, 4, 5)]
        assert [r["window_start"] for r in store.drift_series("s1", "orders")] == starts
        assert [r["window_start"] for r in store.drift_series("*", "orders")] == starts
        assert [r["window_start"] for r in store.performance_series("customers-model")] == starts
        before = snapshot(settings)
        store.write_drift(drift_window(0, STORES))  # a replay of a window already trimmed
        assert snapshot(settings) == before
        client = settings.redis.connect()
        index_key = store.keys.drift_index("orders", "s1")
        assert client.zcard(index_key) == 3
        assert client.hlen(store.keys.drift("orders", "s1")) == 3
        client.close()
    finally:
        store.close()


def test_performance_series_and_models(store: MonitorStore) -> None:
    for index in range(2):
        store.write_performance(performance_window(index, STORES, "champion", "3"))
        store.write_performance(performance_window(index, STORES, "challenger", "4"))
    series = store.performance_series("customers-model")
    assert [(r["window_start"], r["role"]) for r in series] == [
        (T0, "champion"),
        (T0, "challenger"),
        (T0 + WINDOW_MS, "champion"),
        (T0 + WINDOW_MS, "challenger"),
    ]
    assert series[0]["store_id"] == "*" and series[0]["n"] == 50 + 51 + 52
    assert series[1]["model_version"] == "4"
    own = store.store_performance_series("s2")
    assert {(r["store_id"], r["role"]) for r in own} == {("s2", "champion"), ("s2", "challenger")}
    assert own[0]["auc"] == pytest.approx(performance_window(0, STORES).stores[1].auc)
    assert store.performance_series("customers-model", "s2") == own
    latest = store.latest_performance()
    assert {(r["store_id"], r["role"]) for r in latest} == {
        (s, role) for s in ["*", *STORES] for role in ("champion", "challenger")
    }
    (model,) = store.models()
    assert model["name"] == "customers-model"
    assert model["champion"]["version"] == "3" and model["challenger"]["version"] == "4"
    assert model["champion"]["window_start"] == T0 + WINDOW_MS


def test_open_and_resolved_alerts(store: MonitorStore) -> None:
    store.write_alert(alert("s1", 1, "firing"))
    store.write_alert(alert("s2", 2, "firing"))
    store.write_alert(alert("s1", 3, "resolved"))
    store.write_alert(alert("s1", 1, "firing"))  # a replay after its resolution
    store.write_alert(
        alert("s3", 4, "firing", monitor="health", statistic="staleness_seconds", column=None)
    )
    assert [a["store_id"] for a in store.alerts("open")] == ["s3", "s2"]
    assert [a["alert_id"] for a in store.alerts("resolved")] == [
        alert("s1", 3, "resolved")["alert_id"]
    ]
    assert len(store.alerts()) == 4
    assert [a["status"] for a in store.alerts(store_id="s1")] == ["resolved", "firing"]
    assert store.alerts(limit=1)[0]["store_id"] == "s3"
    # a firing again later (a new episode) opens it again; the same window's resolved wins
    store.write_alert(alert("s2", 5, "resolved"))
    store.write_alert(alert("s2", 5, "firing"))
    assert [a["store_id"] for a in store.alerts("open")] == ["s3"]
    store.write_alert(alert("s1", 6, "firing"))
    assert [a["store_id"] for a in store.alerts("open")] == ["s1", "s3"]


def test_old_alerts_are_trimmed_but_open_ones_stay(settings: Settings) -> None:
    store = MonitorStore(settings.redis, settings.redis_prefix, keep_alerts=5)
    try:
        store.write_alert(alert("s-old", 0, "firing"))
        for index in range(1, 9):
            store.write_alert(alert(f"s{index}", index, "firing"))
            store.write_alert(alert(f"s{index}", index + 1, "resolved"))
        kept = store.alerts(limit=100)
        assert len(kept) == 5
        assert all(a["window_start"] >= T0 + 6 * WINDOW_MS for a in kept)
        assert [a["store_id"] for a in store.alerts("open")] == ["s-old"]
    finally:
        store.close()


def test_async_reader_reads_what_the_store_reads(store: MonitorStore, settings: Settings) -> None:
    from tests.monitor_data import seed

    seed(store, STORES, drifting="s3", windows=4)

    async def read_all() -> list[Any]:
        client = connect_async(settings.redis)
        reader = MonitorReader(client, settings.redis_prefix)
        try:
            return [
                await reader.drift_series("s3"),
                await reader.latest_drift(),
                await reader.performance_series("customers-model"),
                await reader.store_performance_series("s1"),
                await reader.latest_performance(),
                await reader.alerts(),
                await reader.alerts("open"),
                await reader.health(),
                await reader.health_series(),
                await reader.models(),
            ]
        finally:
            await client.aclose()

    assert asyncio.run(read_all()) == [
        store.drift_series("s3"),
        store.latest_drift(),
        store.performance_series("customers-model"),
        store.store_performance_series("s1"),
        store.latest_performance(),
        store.alerts(),
        store.alerts("open"),
        store.health(),
        store.health_series(),
        store.models(),
    ]
    assert store.health()["events_per_second"] is None
    assert [a["store_id"] for a in store.alerts("open")] == ["s3"]


def test_ten_thousand_stores_in_few_round_trips(store: MonitorStore) -> None:
    stores = [f"store-{n:05d}" for n in range(10_000)]
    began = time.perf_counter()
    store.write_drift(drift_window(0, stores, drifting="store-00042"))
    wrote = time.perf_counter() - began
    began = time.perf_counter()
    latest = store.latest_drift()
    read = time.perf_counter() - began
    print(f"10,000 stores: window written in {wrote:.2f} s, overview rows read in {read:.2f} s")
    assert len(latest) == 10_000
    assert [r["store_id"] for r in latest if r["alert"]] == ["store-00042"]
    assert read < 10 and wrote < 60
