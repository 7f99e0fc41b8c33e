"""Monitor results for the store and dashboard tests: drift and performance windows, alerts, health."""

from __future__ import annotations

import math
from typing import Any

from storeml.models.monitor_results import (
    ColumnStat,
    DriftWindow,
    Health,
    PerformanceWindow,
    StoreDrift,
    StorePerformance,
)

__all__ = ["WINDOW_MS", "T0", "drift_window", "performance_window", "alert", "health", "seed"]

WINDOW_MS = 300_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window start
COLUMNS = ("order_value", "line_count", "category", "channel")


def drift_window(
    index: int,
    stores: list[str],
    *,
    drifting: str | None = None,
    monitor: str = "orders",
    version: str | None = "3",
) -> DriftWindow:
    """Window ``index`` after ``T0``: every store calm, ``drifting`` (if any) far off on one column."""
    out = []
    for n, store in enumerate(stores):
        columns = []
        for c, column in enumerate(COLUMNS):
            js = 0.02 + 0.01 * ((n + c + index) % 5)
            alert = store == drifting and column == "order_value"
            if alert:
                js = 0.45
            columns.append(ColumnStat(column, js, js * 2.5, 1e-9 if alert else 0.4, 1e-6, alert))
        out.append(StoreDrift(store, 100 + 10 * n + index, store == drifting, tuple(columns)))
    start = T0 + index * WINDOW_MS
    return DriftWindow(monitor, "customers-model", version, start, start + WINDOW_MS, tuple(out))


def performance_window(
    index: int, stores: list[str], role: str = "champion", version: str = "3"
) -> PerformanceWindow:
    """Live AUC a little above 0.7 for the champion, lower for the challenger, per store."""
    base = 0.74 if role == "champion" else 0.69
    rows = [
        StorePerformance(
            store, 50 + n, 10 + n, base + 0.01 * ((n + index) % 4), 0.18, 0.4, 0.55, None, None
        )
        for n, store in enumerate(stores)
    ]
    overall = StorePerformance(
        "*",
        sum(r.n for r in rows),
        sum(r.positives for r in rows),
        base + 0.005 * (index % 3),
        0.17,
        0.41,
        0.56,
        None,
        None,
    )
    start = T0 + index * WINDOW_MS
    return PerformanceWindow(
        "customers-model",
        role,
        version,
        start,
        start + WINDOW_MS,
        overall,
        tuple(rows),  # type: ignore[arg-type]
    )


def alert(
    store: str,
    index: int,
    status: str,
    *,
    monitor: str = "orders",
    statistic: str = "g_test",
    column: str | None = "order_value",
) -> dict[str, Any]:
    """A ``monitor_alert`` record of window ``index``."""
    start = T0 + index * WINDOW_MS
    return {
        "alert_id": f"{store}|{monitor}|{statistic}|{column or ''}|{start}|{status}",
        "status": status,
        "store_id": store,
        "model": {"name": "customers-model", "version": "3"},
        "monitor": monitor,
        "statistic": statistic,
        "column": column,
        "value": 0.45 if status == "firing" else 0.03,
        "threshold": 0.1,
        "window_start": start,
        "window_end": start + WINDOW_MS,
        "rows": 140,
        "detected_at": start + WINDOW_MS + 31_000,
        "link": f"http://127.0.0.1:8000/dashboard/stores/{store}",
        "message": f"{column} of store {store} drifted (JS 0.45 >= 0.1)"
        if status == "firing"
        else f"{column} of store {store} is back to its reference",
    }


def health(at_ms: int = T0 + 20 * WINDOW_MS) -> Health:
    return Health(
        at_ms=at_ms,
        newest_enriched_age_s={"customer-profiles": 2.5, "product-profiles": None},
        input_lag_records={"orders": 120, "products": None},
        dead_letter_ratio=0.001,
        silent_stores=("s-quiet",),
        windows_evaluated=20,
        events_per_second=math.nan,
    )


def seed(store: Any, stores: list[str], drifting: str, windows: int = 12) -> None:
    """What the dashboard test shows: calm windows, then ``drifting`` alerting in the last three;
    an older alert of another store that resolved; champion and challenger performance; health."""
    for index in range(windows):
        late = index >= windows - 3
        store.write_drift(drift_window(index, stores, drifting=drifting if late else None))
        store.write_performance(performance_window(index, stores, "champion", "3"))
        store.write_performance(performance_window(index, stores, "challenger", "4"))
    other = stores[1]
    store.write_alert(alert(other, 2, "firing"))
    store.write_alert(alert(other, 4, "resolved"))
    store.write_alert(alert(drifting, windows - 3, "firing"))
    store.write_health(health())
