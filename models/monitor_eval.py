"""Closing windows: merge the partitions' histograms and counts, test them, decide alerts (pure).

A window of one topic closes when every partition that is not idle has a watermark at least
``grace`` past its end. Its histograms are merged over the partitions (they add), tested by the
monitor of the version that produced them (:meth:`Monitor.predict`), and turned into
:class:`DriftWindow`; the performance counts become :class:`PerformanceWindow` per role and model
version. :func:`alert_messages` steps each (store, monitor, statistic, column) through
``models/alerting.py`` and returns the alert records to send and the states to keep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from storeml.models.alerting import AlertState, step
from storeml.models.monitor_results import (
    ColumnStat,
    DriftWindow,
    PerformanceWindow,
    StoreDrift,
    StorePerformance,
)
from storeml.models.monitor_state import Clock, Table
from storeml.models.performance import BinaryCounts, TopKCounts, binary_metrics, topk_metrics

__all__ = [
    "closable",
    "gather",
    "drift_window",
    "performance_windows",
    "alert_messages",
    "alert_key",
]


def closable(
    clocks: Mapping[int, Clock],
    idle: Iterable[int],
    window_ms: int,
    grace_ms: int,
    evaluated_before: int | None,
    known_windows: Iterable[int],
) -> list[int]:
    """Windows (starts) of ``known_windows`` that may be evaluated now, oldest first.

    Every partition that is not idle holds windows back, one that has delivered nothing yet
    included (its first records may still belong to them).
    """
    idle_set = set(idle)
    active = [c for p, c in clocks.items() if p not in idle_set]
    if any(c.watermark is None for c in active):
        return []
    marks = [c.watermark for c in active if c.watermark is not None]
    if not marks:
        return []
    wm = min(marks)
    out = sorted(
        w
        for w in set(known_windows)
        if w + window_ms + grace_ms <= wm and (evaluated_before is None or w >= evaluated_before)
    )
    return out


def _merged(kind: str, have: Any, counts: Any) -> Any:
    if kind == "q":
        value = BinaryCounts.from_list(counts)
        return value if have is None else have.merge(value)
    if kind == "k":
        value_k = TopKCounts.from_list(counts)
        return value_k if have is None else have.merge(value_k)
    arr = np.asarray(counts, dtype=np.int64)
    return arr if have is None else have + arr


def gather(table: Table, kind: str, windows: Iterable[int]) -> dict[str, dict[str, Any]]:
    """``{slot: {store: merged counts}}`` of accumulators ``p|kind|store`` for ``windows``.

    ``slot`` is the accumulator's slot without its partition (``"<w>|<version>"`` for drift,
    ``"<w>|<role>|<version>"`` for performance). Drift counts merge into int64 vectors,
    performance counts into :class:`BinaryCounts` (``"q"``) or :class:`TopKCounts` (``"k"``).
    """
    wanted = {str(w) for w in windows}
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, value in list(table.items()):
        parts = key.split("|")
        if len(parts) != 3 or parts[1] != kind or not value:
            continue
        store = parts[2]
        for slot, counts in value[2].items():
            if slot.split("|", 1)[0] not in wanted:
                continue
            out[slot][store] = _merged(kind, out[slot].get(store), counts)
    return out


def known_windows(table: Table, kind: str) -> set[int]:
    """Every window start some accumulator of ``kind`` holds."""
    found: set[int] = set()
    for key, value in list(table.items()):
        parts = key.split("|")
        if len(parts) == 3 and parts[1] == kind and value:
            found.update(int(s.split("|", 1)[0]) for s in value[2])
    return found


def drift_window(
    monitor: Any, monitor_kind: str, ws: int, window_ms: int, counts: Mapping[str, np.ndarray]
) -> DriftWindow:
    """Test every store's merged histogram of one window with ``monitor``."""
    stores = sorted(counts)
    frame = pd.DataFrame({"store_id": stores, "counts": [counts[s] for s in stores]})
    stats = monitor.predict(frame) if stores else pd.DataFrame()
    by_store: dict[str, list[ColumnStat]] = defaultdict(list)
    rows: dict[str, int] = {}
    for rec in stats.to_dict("records"):
        by_store[rec["store_id"]].append(
            ColumnStat(
                column=rec["column"],
                js=float(rec["js"]),
                psi=float(rec["psi"]),
                p_value=float(rec["p_value"]),
                alpha=float(rec["alpha"]),
                alert=bool(rec["alert"]),
            )
        )
        rows[rec["store_id"]] = int(rec["rows"])
    return DriftWindow(
        monitor=monitor_kind,
        model_name=getattr(monitor, "model_name", ""),
        model_version=getattr(monitor, "version", None),
        window_start=ws,
        window_end=ws + window_ms,
        stores=tuple(
            StoreDrift(
                store_id=s,
                rows=rows.get(s, 0),
                alert=any(c.alert for c in by_store[s]),
                columns=tuple(by_store[s]),
            )
            for s in stores
        ),
    )


def _binary_row(store: str, counts: BinaryCounts, threshold: float) -> StorePerformance:
    m = binary_metrics(counts, threshold)
    return StorePerformance(
        store_id=store,
        n=int(m["n"]),
        positives=int(m["positives"]),
        auc=m.get("auc"),
        brier=m.get("brier"),
        precision=m.get("precision"),
        recall=m.get("recall"),
    )


def _topk_row(store: str, counts: TopKCounts) -> StorePerformance:
    m = topk_metrics(counts)
    return StorePerformance(
        store_id=store, n=int(m["n"]), positives=0, hit1=m.get("hit1"), hit5=m.get("hit5")
    )


def performance_windows(
    model_name: str,
    kind: str,
    gathered: Mapping[str, Mapping[str, Any]],
    window_ms: int,
    threshold: float = 0.5,
) -> list[PerformanceWindow]:
    """One :class:`PerformanceWindow` per (window, role, version) of ``gathered`` (from "q"/"k")."""
    out = []
    for slot in sorted(gathered):
        ws_text, role, version = slot.split("|", 2)
        ws = int(ws_text)
        stores = gathered[slot]
        rows = []
        if kind == "q":
            total = BinaryCounts()
            for store in sorted(stores):
                counts = stores[store]
                total = total.merge(counts)
                rows.append(_binary_row(store, counts, threshold))
            overall = _binary_row("*", total, threshold)
        else:
            total_k = TopKCounts()
            for store in sorted(stores):
                counts_k = stores[store]
                total_k = total_k.merge(counts_k)
                rows.append(_topk_row(store, counts_k))
            overall = _topk_row("*", total_k)
        out.append(
            PerformanceWindow(
                model_name=model_name,
                role=role,  # type: ignore[arg-type]
                model_version=version,
                window_start=ws,
                window_end=ws + window_ms,
                overall=overall,
                stores=tuple(rows),
            )
        )
    return out


def alert_key(store: str, monitor: str, statistic: str, column: str | None) -> str:
    return f"0|alert|{store}|{monitor}|{statistic}|{column or ''}"


def alert_messages(
    window: DriftWindow,
    states: Mapping[str, AlertState],
    *,
    cooldown_ms: int,
    link: str,
    detected_at: int,
) -> tuple[list[dict[str, Any]], dict[str, AlertState]]:
    """Alerts to send for one drift window, and the new states of every key it touched.

    Only stores and columns in the window are stepped; a firing alert whose store has no rows in
    a later window stays firing until a window shows it below its threshold.
    """
    messages: list[dict[str, Any]] = []
    changed: dict[str, AlertState] = {}
    for store in window.stores:
        for col in store.columns:
            key = alert_key(store.store_id, window.monitor, "g_test", col.column)
            state = states.get(key, AlertState())
            new, status = step(
                state,
                firing_now=col.alert,
                value=col.js,
                threshold=col.alpha,
                window_start=window.window_start,
                window_end=window.window_end,
                cooldown_ms=cooldown_ms,
            )
            if new != state:
                changed[key] = new
            if status is None:
                continue
            messages.append(
                {
                    "alert_id": "|".join(
                        (
                            store.store_id,
                            window.monitor,
                            "g_test",
                            col.column,
                            str(window.window_start),
                            status,
                        )
                    ),
                    "status": status,
                    "store_id": store.store_id,
                    "model": {"name": window.model_name, "version": window.model_version},
                    "monitor": window.monitor,
                    "statistic": "g_test",
                    "column": col.column,
                    "value": float(col.p_value),
                    "threshold": float(col.alpha),
                    "window_start": window.window_start,
                    "window_end": window.window_end,
                    "rows": store.rows,
                    "detected_at": detected_at,
                    "link": f"{link.rstrip('/')}/stores/{store.store_id}",
                    "message": (
                        f"{window.monitor} drift of {col.column} in store {store.store_id}:"
                        f" p={col.p_value:.3g} < alpha={col.alpha:.3g}, JS distance {col.js:.3f}"
                        if status == "firing"
                        else f"{window.monitor} drift of {col.column} in store {store.store_id}"
                        f" is back below its threshold (p={col.p_value:.3g}, JS {col.js:.3f})"
                    ),
                }
            )
    return messages, changed


def health_alert(
    statistic: str,
    value: float,
    threshold: float,
    *,
    at_ms: int,
    link: str,
    status: str,
    message: str,
    store_id: str = "*",
) -> dict[str, Any]:
    """A pipeline-health alert record (store ``*`` unless it names one)."""
    return {
        "alert_id": f"{store_id}|health|{statistic}||{at_ms}|{status}",
        "status": status,
        "store_id": store_id,
        "model": None,
        "monitor": "health",
        "statistic": statistic,
        "column": None,
        "value": float(value),
        "threshold": float(threshold),
        "window_start": at_ms,
        "window_end": at_ms,
        "rows": 0,
        "detected_at": at_ms,
        "link": link,
        "message": message,
    }


def replace_state(state: AlertState, **changes: Any) -> AlertState:
    return replace(state, **changes)
