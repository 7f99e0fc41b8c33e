"""The dashboard's overview page: stream health, alerts, champion vs challenger, the store table.

A pure function of the reader's rows, like the other pages (:mod:`storeml.serving.dashboard.pages`).
The store table is ordered most worrying first and cut to ``limit`` rows on the server (10,000
stores would make a page of megabytes); the inline script sorts and filters what is shown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from storeml.serving.dashboard.layout import esc, model_link, num, page, store_link, table, when
from storeml.serving.dashboard.pages import (
    METRICS,
    ROLES,
    alerts_section,
    primary_metric,
    role_plot,
)
from storeml.serving.dashboard.svg import Series, line_plot

__all__ = ["overview_page", "store_rows"]


def _health_section(
    health: dict[str, Any] | None, history: Sequence[dict[str, Any]], limits: dict[str, float]
) -> str:
    if health is None:
        return '<h2>Stream health</h2><p class="muted" id="health">no health report yet</p>'
    cards = []

    def card(label: str, value: str, bad: bool = False, note: str = "") -> None:
        cls = "stat bad" if bad else "stat"
        cards.append(
            f'<div class="{cls}"><small>{esc(label)}</small><b>{value}</b>'
            f"<small>{esc(note)}</small></div>"
        )

    stale = limits.get("stale_seconds", float("inf"))
    for topic, age in sorted(health.get("newest_enriched_age_s", {}).items()):
        card(
            f"newest {topic}",
            "-" if age is None else f"{num(age)} s",
            age is None or age > stale,
            f"alert over {num(stale)} s",
        )
    lag_limit = limits.get("lag_records", float("inf"))
    for topic, lag in sorted(health.get("input_lag_records", {}).items()):
        card(f"lag behind {topic}", num(lag), lag is not None and lag > lag_limit, "records")
    ratio = health.get("dead_letter_ratio")
    card(
        "dead-letter ratio",
        num(ratio),
        ratio is not None and ratio > limits.get("dead_letter_ratio", 1.0),
    )
    silent = health.get("silent_stores", [])
    card("silent stores", num(len(silent)), bool(silent), ", ".join(silent[:5]))
    card("windows evaluated", num(health.get("windows_evaluated")))
    card("events / s", num(health.get("events_per_second")))
    plots = ""
    if len(history) > 1:
        topics = sorted({t for h in history for t in h.get("newest_enriched_age_s", {})})
        ages = [
            Series(t, [(h["at_ms"], h["newest_enriched_age_s"].get(t)) for h in history])
            for t in topics
        ]
        plots = (
            '<div class="plots">'
            + line_plot(
                ages,
                title="age of the newest enriched record",
                y_label="seconds",
                y_min=0,
                threshold=limits.get("stale_seconds"),
                threshold_label="stale after",
            )
            + "</div>"
        )
    return (
        f'<h2>Stream health <small class="muted">as of {when(health.get("at_ms"))} UTC</small>'
        f'</h2><div class="cards" id="health">{"".join(cards)}</div>{plots}'
    )


def store_rows(
    latest_drift: Sequence[dict[str, Any]],
    latest_perf: Sequence[dict[str, Any]],
    open_alerts: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per store: its open alerts, newest drift per monitor and performance per model
    and role, most worrying first (open alerts, then drift alerts, then the largest JS)."""
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"open": 0, "drift": {}, "perf": {}, "window_start": None}
    )
    for alert in open_alerts:
        if alert.get("store_id") not in (None, "*"):
            rows[alert["store_id"]]["open"] += 1
    for d in latest_drift:
        row = rows[d["store_id"]]
        row["drift"][d["monitor"]] = d
        row["window_start"] = max(row["window_start"] or 0, int(d["window_start"]))
    for p in latest_perf:
        if p["store_id"] != "*":
            rows[p["store_id"]]["perf"][(p["model_name"], p["role"])] = p
    out = [{"store_id": store, **row} for store, row in rows.items()]
    for row in out:
        row["alert"] = any(d.get("alert") for d in row["drift"].values())
        row["max_js"] = max(
            (d["max_js"] for d in row["drift"].values() if d.get("max_js") is not None),
            default=None,
        )
    out.sort(key=lambda r: (-r["open"], not r["alert"], -(r["max_js"] or 0.0), r["store_id"]))
    return out


def _stores_section(
    rows: Sequence[dict[str, Any]],
    monitors: Sequence[str],
    model_metrics: dict[str, str],
    limit: int,
) -> str:
    headers = ["store", "open alerts", "drift"] + [f"{m} max JS" for m in monitors]
    for name, metric in model_metrics.items():
        headers += [f"{name} {METRICS[metric]} {role}" for role in ROLES] + [f"{name} labels"]
    headers.append("newest window (UTC)")
    shown = rows[:limit]
    lines = []
    for r in shown:
        cells = [
            f'<td data-v="{esc(r["store_id"])}">{store_link(r["store_id"])}</td>',
            f'<td class="n">{num(r["open"])}</td>',
            f'<td data-v="{int(r["alert"])}">'
            + ('<span class="badge drift">drift</span>' if r["alert"] else "")
            + "</td>",
        ]
        for monitor in monitors:
            js = r["drift"].get(monitor, {}).get("max_js")
            cells.append(f'<td class="n" data-v="{"" if js is None else js}">{num(js)}</td>')
        for name, metric in model_metrics.items():
            for role in ROLES:
                value = r["perf"].get((name, role), {}).get(metric)
                cells.append(
                    f'<td class="n" data-v="{"" if value is None else value}">{num(value)}</td>'
                )
            labels = r["perf"].get((name, "champion"), {}).get("n")
            cells.append(f'<td class="n">{num(labels)}</td>')
        cells.append(f'<td data-v="{r["window_start"] or ""}">{when(r["window_start"])}</td>')
        cls = ' class="alerting"' if r["alert"] or r["open"] else ""
        lines.append(
            f'<tr{cls} data-store="{esc(r["store_id"])}" data-alert="{int(bool(r["alert"] or r["open"]))}">'
            + "".join(cells)
            + "</tr>"
        )
    note = (
        f'<p class="muted">the {limit:,} most worrying of {len(rows):,} stores are listed;'
        " open a store's page for any other</p>"
        if len(rows) > limit
        else ""
    )
    return (
        f"<h2>Stores ({len(rows):,})</h2>{note}"
        '<div class="filters"><input type="search" id="store-filter" placeholder="filter stores"'
        ' aria-label="filter stores"><label><input type="checkbox" id="alerting-only"> alerting'
        f' only</label><span class="muted"><span id="stores-shown">{len(shown)}</span> shown'
        "</span></div>" + table(headers, lines, table_id="stores", sortable=True)
    )


def overview_page(
    *,
    health: dict[str, Any] | None,
    health_history: Sequence[dict[str, Any]],
    open_alerts: Sequence[dict[str, Any]],
    recent_alerts: Sequence[dict[str, Any]],
    models: Sequence[dict[str, Any]],
    model_series: dict[str, list[dict[str, Any]]],
    drift_summary: dict[str, list[dict[str, Any]]],
    latest_drift: Sequence[dict[str, Any]],
    latest_perf: Sequence[dict[str, Any]],
    limits: dict[str, float],
    limit: int = 500,
    logout: bool = False,
) -> str:
    """The overview: health, alerts, models (champion vs challenger), drift, the store table."""
    names = [m["name"] for m in models]
    parts = ["<h1>Monitoring overview</h1>", _health_section(health, health_history, limits)]
    parts.append(alerts_section("Open alerts", open_alerts, "open-alerts"))
    parts.append(alerts_section("Recent alerts", recent_alerts, "recent-alerts"))
    parts.append("<h2>Models: champion and challenger on the same live traffic</h2>")
    plots, cards = [], []
    for model in models:
        rows = model_series.get(model["name"], [])
        metric = primary_metric(rows)
        plots.append(role_plot(rows, metric, f"{model['name']}: live {METRICS[metric]}"))
        versions = " · ".join(
            f"{role} v{esc((model.get(role) or {}).get('version'))}" for role in ROLES
        )
        cards.append(f"<li>{model_link(model['name'])}: {versions}</li>")
    parts.append(f"<ul>{''.join(cards) or '<li class=muted>no model reported yet</li>'}</ul>")
    parts.append(f'<div class="plots">{"".join(plots)}</div>')
    monitors = sorted(drift_summary)
    if monitors:
        series = [
            Series(m, [(int(r["window_start"]), r.get("alerting")) for r in drift_summary[m]])
            for m in monitors
        ]
        parts.append(
            '<h2>Drift</h2><div class="plots">'
            + line_plot(series, title="stores with drift per window", y_label="stores", y_min=0)
            + "</div>"
        )
    model_metrics = {
        name: primary_metric([p for p in latest_perf if p["model_name"] == name]) for name in names
    }
    rows = store_rows(latest_drift, latest_perf, open_alerts)
    parts.append(_stores_section(rows, monitors, model_metrics, limit))
    return page("overview", "".join(parts), models=names, logout=logout)
