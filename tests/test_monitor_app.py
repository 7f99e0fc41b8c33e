"""The monitor as users run it: a real ``storeml monitor run`` worker on the broker, real MLflow
(models and their monitors trained from synthetic history), real Redis for its results.

* an injected price drift in one store alerts within one window, no other store alerts, and a
  resolved message follows once the drift is undone;
* a ``kill -9`` of the worker mid-run, then a restart, gives exactly the windows of an
  uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import ensure_topics, read_all, watermark_method_for
from storeml.connectors.monitor_store import MonitorStore
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.schemas.codec import get_codec
from storeml.settings import Settings
from tests.monitor_worker import start_monitor, wait_for
from tests.test_dashboard import browser, screenshot, wait_for_heading  # noqa: F401,F811

DAY_MS = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
HISTORY_DAYS, LIVE_DAYS = 120, 30
LIVE_MS = T0 + HISTORY_DAYS * DAY_MS  # first live event time
WINDOW_DAYS = 2
STORES = 4
EVENTS = 40_000


def world(**changes: Any) -> GeneratorConfig:
    """One synthetic world over history and live days, kept stationary on purpose (the whole
    catalogue from the start, no price updates) unless ``changes`` say otherwise, so that only
    injected drift is drift."""
    options: dict[str, Any] = {
        "stores": STORES,
        "events": EVENTS,
        "seed": 3,
        "start_ms": T0,
        "events_per_second": EVENTS / ((HISTORY_DAYS + LIVE_DAYS) * 86_400),
        "jitter_ms": 60_000,
        "initial_catalogue_share": 1.0,
        "update_share": 0.0,
    }
    return GeneratorConfig(**(options | changes))


def train_and_produce_live(settings: Settings, config: GeneratorConfig) -> list[Any]:
    """Train the models (and their monitors) on the history; returns the live events."""
    from storeml.batch.train import train_and_register
    from storeml.models.events import ORDER, PRODUCT, facts_from_events

    events = [e for e in generate(config) if e.malformed is None]
    history = [(e.topic_kind, e.record) for e in events if e.record["event_time"] < LIVE_MS]
    facts = facts_from_events(
        (ORDER if kind == "orders" else PRODUCT, record, f"history-{kind}", 0, i)
        for i, (kind, record) in enumerate(history)
    )
    times = sorted(int(r["event_time"]) for _, r in history)
    train_and_register(settings, facts, times[int(len(times) * 0.7)])
    ensure_topics(settings.kafka_config(), settings.topics, 3)
    return [e for e in events if e.record["event_time"] >= LIVE_MS]


def produce_live(settings: Settings, events: list[Any]) -> None:
    produce_events(settings.kafka_config(), events, settings.topic_orders, settings.topic_products)


def alerts_on_topic(settings: Settings) -> list[dict[str, Any]]:
    codec = get_codec("monitor_alert")
    records = read_all(
        settings.kafka_config(), settings.topic_alerts, watermark_method_for(settings.kafka_flavor)
    )
    return [codec.decode(r.value) for r in records]


def monitor_settings(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "monitor_window_seconds": WINDOW_DAYS * 86_400.0,
            "monitor_grace_seconds": 3_600.0,
            "monitor_idle_seconds": 3_600.0,
            "monitor_alert_budget_per_day": 0.001,
            "monitor_stale_seconds": 3_600.0,
            "monitor_web_port": 0,
            "monitor_cooldown_seconds": 30 * 86_400.0,
            **extra,
        }
    )


def _windows(store: MonitorStore, stores: list[str], monitor: str) -> dict[tuple[str, int], Any]:
    out = {}
    for s in stores:
        for row in store.drift_series(s, monitor):
            out[(s, int(row["window_start"]))] = row
    return out


@pytest.mark.slow  # a real Faust worker process over the broker, a minute or more
def test_injected_drift_alerts_that_store_only_and_resolves(
    settings: Settings,
    tmp_path: Path,
    api_server: Any,
    browser: Any,  # noqa: F811
) -> None:
    settings = monitor_settings(settings)
    drifted = "store-001"
    drift_from, drift_until = LIVE_MS + 10 * DAY_MS, LIVE_MS + 18 * DAY_MS
    live = train_and_produce_live(
        settings,
        world(
            drift_store=drifted,
            drift_from_ms=drift_from,
            drift_until_ms=drift_until,
            drift_price_factor=4.0,
        ),
    )
    worker = start_monitor(settings, tmp_path / "monitor.log")
    try:
        produce_live(settings, live)
        last_window = LIVE_MS + 26 * DAY_MS

        def done() -> bool:
            result = MonitorStore.from_settings(settings)
            result.setup()
            try:
                rows = result.drift_series(drifted, "orders")
                return bool(rows) and max(int(r["window_start"]) for r in rows) >= last_window
            finally:
                result.close()

        wait_for(done, 180, "the orders windows up to day 26")
    finally:
        worker.stop()
    alerts = [a for a in alerts_on_topic(settings) if a["monitor"] == "orders"]
    summary = sorted(
        (a["store_id"], a["column"], a["window_start"], a["status"], round(a["value"], 9))
        for a in alerts
    )
    firing = [a for a in alerts if a["status"] == "firing"]
    assert firing, f"no drift alert; log:\n{worker.output()[-3000:]}"
    assert {a["store_id"] for a in firing} == {drifted}, summary
    window_ms = WINDOW_DAYS * DAY_MS
    first = min(a["window_start"] for a in firing)
    # the first window holding drifted orders, or the one after it (a window half drifted)
    assert drift_from - window_ms < first <= drift_from + window_ms, (first, drift_from, summary)
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert resolved, summary
    assert {a["store_id"] for a in resolved} == {drifted}, summary
    assert min(a["window_start"] for a in resolved) >= drift_until - window_ms, summary
    assert all(a["link"].startswith(settings.monitor_dashboard_url) for a in alerts)

    # the dashboard, over what this monitor wrote: the store's alert and its drift plot
    from selenium.webdriver.common.by import By

    server = api_server()
    browser.get(f"{server.url}/dashboard")
    browser.find_element(By.ID, "key").send_keys(server.admin_key)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for_heading(browser, "Monitoring overview")
    recent = browser.find_element(By.ID, "recent-alerts").text
    assert drifted in recent and "order_value_minor" in recent, recent
    screenshot(browser, tmp_path, "monitor-drift-overview.png")
    browser.get(f"{server.url}/dashboard/stores/{drifted}")
    plots = [
        p
        for p in browser.find_elements(By.CSS_SELECTOR, "svg.plot")
        if int(p.get_attribute("data-points") or 0) > 0
    ]
    assert plots, browser.page_source[:2000]
    screenshot(browser, tmp_path, "monitor-drift-store.png")


def _all_windows(settings: Settings, stores: list[str]) -> dict[tuple[str, str, int], Any]:
    result = MonitorStore.from_settings(settings)
    result.setup()
    try:
        return {
            (store, monitor, int(row["window_start"])): row
            for store in stores
            for monitor in ("orders",)
            for row in result.drift_series(store, monitor)
        }
    finally:
        result.close()


def _run_until(settings: Settings, store: str, last_window: int) -> Any:
    def done() -> bool:
        rows = _all_windows(settings, [store])
        return bool(rows) and max(ws for _, _, ws in rows) >= last_window

    return done


@pytest.mark.slow  # a real Faust worker process over the broker, a minute or more
def test_kill_9_mid_run_then_restart_gives_the_windows_of_an_uninterrupted_run(
    settings: Settings, tmp_path: Path
) -> None:
    settings = monitor_settings(settings)
    live = train_and_produce_live(
        settings,
        world(
            drift_store="store-002",
            drift_from_ms=LIVE_MS + 8 * DAY_MS,
            drift_until_ms=LIVE_MS + 30 * DAY_MS,
            drift_price_factor=3.0,
        ),
    )
    stores = sorted({e.record["store_id"] for e in live})
    last_window = LIVE_MS + 26 * DAY_MS
    first, rest = live[: len(live) * 6 // 10], live[len(live) * 6 // 10 :]

    # an uninterrupted run
    calm = settings.model_copy(
        update={
            "monitor_app_id": f"{settings.monitor_app_id}-calm",
            "redis_prefix": f"{settings.redis_prefix}:calm",
        }
    )
    worker = start_monitor(calm, tmp_path / "calm.log")
    try:
        produce_live(settings, live)
        wait_for(_run_until(calm, "store-001", last_window), 180, "the uninterrupted run")
    finally:
        worker.stop()
    expected = _all_windows(calm, stores)
    assert len(expected) >= 4 * 10

    # the same input, with a kill -9 while the worker is busy, then a restart
    crash = settings.model_copy(
        update={
            "monitor_app_id": f"{settings.monitor_app_id}-crash",
            "redis_prefix": f"{settings.redis_prefix}:crash",
            "topic_orders": f"{settings.topic_orders}-2",
            "topic_products": f"{settings.topic_products}-2",
        }
    )
    ensure_topics(crash.kafka_config(), crash.topics, 3)
    worker = start_monitor(crash, tmp_path / "crash-1.log")
    try:
        produce_live(crash, first)
        wait_for(lambda: len(_all_windows(crash, stores)) >= 4 * 3, 120, "a few windows")
        produce_live(crash, rest)
        worker.kill()
    finally:
        worker.stop()
    before = _all_windows(crash, stores)
    assert len(before) < len(expected), "the kill came after the last window"
    worker = start_monitor(crash, tmp_path / "crash-2.log")
    try:
        wait_for(_run_until(crash, "store-001", last_window), 180, "the restarted run")
    finally:
        worker.stop()
    got = _all_windows(crash, stores)
    assert got.keys() == expected.keys()
    assert got == expected
    alerts = {a["alert_id"] for a in alerts_on_topic(crash) if a["status"] == "firing"}
    assert any("store-002|orders" in a for a in alerts), alerts
