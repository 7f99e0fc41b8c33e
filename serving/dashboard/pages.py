"""The dashboard's pages as pure functions: the monitor's result dicts in, an HTML string out.

The dicts are the rows :class:`storeml.connectors.monitor_store.MonitorReader` returns. Every
value that comes from data (store ids, model names, versions, alert messages) goes through
:func:`~storeml.serving.dashboard.layout.esc`; plots are inline SVG
(:mod:`storeml.serving.dashboard.svg`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from storeml.serving.dashboard.layout import (
    badge,
    esc,
    num,
    page,
    store_link,
    table,
    when,
)
from storeml.serving.dashboard.svg import Series, line_plot

__all__ = [
    "ROLES",
    "METRICS",
    "role_plot",
    "alerts_section",
    "store_page",
    "model_page",
    "login_page",
    "message_page",
    "primary_metric",
]

ROLES = ("champion", "challenger")
METRICS = {
    "auc": "AUC",
    "brier": "Brier score",
    "precision": "precision",
    "recall": "recall",
    "hit1": "hit@1",
    "hit5": "hit@5",
}


def primary_metric(rows: Sequence[dict[str, Any]]) -> str:
    """``auc`` for a binary model (some row has one), else ``hit5``."""
    return "auc" if any(r.get("auc") is not None for r in rows) else "hit5"


def role_plot(rows: Sequence[dict[str, Any]], metric: str, title: str) -> str:
    series = [
        Series(
            f"{role} v{_versions(rows, role)}",
            [(int(r["window_start"]), r.get(metric)) for r in rows if r["role"] == role],
        )
        for role in ROLES
        if any(r["role"] == role for r in rows)
    ]
    return line_plot(series, title=title, y_label=METRICS.get(metric, metric))


def _versions(rows: Sequence[dict[str, Any]], role: str) -> str:
    seen = [str(r.get("model_version")) for r in rows if r["role"] == role]
    return ",".join(dict.fromkeys(seen)) or "-"


def _alert_rows(alerts: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f'<tr data-store="{esc(a.get("store_id"))}"><td>{badge(a.get("status"))}</td>'
        f"<td>{store_link(a.get('store_id'))}</td><td>{esc(a.get('monitor'))}</td>"
        f"<td>{esc(a.get('statistic'))}</td><td>{esc(a.get('column'))}</td>"
        f'<td class="n">{num(a.get("value"))}</td><td class="n">{num(a.get("threshold"))}</td>'
        f'<td>{when(a.get("window_start"))}</td><td class="msg">{esc(a.get("message"))}</td></tr>'
        for a in alerts
    ]


_ALERT_HEADERS = (
    "status",
    "store",
    "monitor",
    "statistic",
    "column",
    "value",
    "threshold",
    "window (UTC)",
    "message",
)


def alerts_section(title: str, alerts: Sequence[dict[str, Any]], table_id: str) -> str:
    return f"<h2>{esc(title)} ({len(alerts)})</h2>" + table(
        _ALERT_HEADERS, _alert_rows(alerts), table_id=table_id, sortable=True, empty="none"
    )


def store_page(
    store: str,
    *,
    drift: Sequence[dict[str, Any]],
    performance: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    min_js: float,
    models: Sequence[str] = (),
    logout: bool = False,
) -> str:
    """One store: drift per monitor and column, performance per model, its alerts."""
    parts = [f"<h1>Store {esc(store)}</h1>"]
    parts.append(alerts_section("Alerts of this store", alerts, "store-alerts"))
    by_monitor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in drift:
        by_monitor[row["monitor"]].append(row)
    parts.append("<h2>Drift over time</h2>")
    if not by_monitor:
        parts.append('<p class="muted">no drift windows for this store</p>')
    for monitor, rows in sorted(by_monitor.items()):
        columns = sorted({c["column"] for r in rows for c in r.get("columns", ())})
        series = [
            Series(
                column,
                [
                    (
                        int(r["window_start"]),
                        next((c["js"] for c in r["columns"] if c["column"] == column), None),
                    )
                    for r in rows
                ],
            )
            for column in columns
        ]
        newest = rows[-1]
        cells = [
            f'<tr><td>{esc(c["column"])}</td><td class="n">{num(c.get("js"))}</td>'
            f'<td class="n">{num(c.get("psi"))}</td><td class="n">{num(c.get("p_value"))}</td>'
            f'<td class="n">{num(c.get("alpha"))}</td><td>'
            + ('<span class="badge drift">drift</span>' if c.get("alert") else "")
            + "</td></tr>"
            for c in newest.get("columns", ())
        ]
        parts.append(
            f'<section class="card"><h2>{esc(monitor)} <small class="muted">model '
            f"{esc(newest.get('model_name'))} v{esc(newest.get('model_version'))}</small></h2>"
            '<div class="plots">'
            + line_plot(
                series,
                title=f"{monitor}: Jensen-Shannon distance per column",
                y_label="JS",
                y_min=0,
                threshold=min_js,
                threshold_label="min JS",
            )
            + line_plot(
                [Series("rows", [(int(r["window_start"]), r.get("rows")) for r in rows])],
                title=f"{monitor}: rows per window",
                y_label="rows",
                y_min=0,
            )
            + f'</div><p class="muted">newest window {when(newest["window_start"])} UTC</p>'
            + table(("column", "JS", "PSI", "p-value", "alpha", ""), cells)
            + "</section>"
        )
    parts.append("<h2>Performance over time</h2>")
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in performance:
        by_model[row["model_name"]].append(row)
    if not by_model:
        parts.append('<p class="muted">no labelled predictions for this store yet</p>')
    plots = []
    for name, rows in sorted(by_model.items()):
        metric = primary_metric(rows)
        plots.append(role_plot(rows, metric, f"{name}: {METRICS[metric]} in store {store}"))
    parts.append(f'<div class="plots">{"".join(plots)}</div>')
    return page(f"store {store}", "".join(parts), models=models, logout=logout)


def model_page(
    name: str,
    *,
    model: dict[str, Any],
    series: Sequence[dict[str, Any]],
    latest_perf: Sequence[dict[str, Any]],
    models: Sequence[str] = (),
    limit: int = 500,
    logout: bool = False,
) -> str:
    """One model: its versions per role, every live metric over time, stores side by side."""
    parts = [f"<h1>Model {esc(name)}</h1>"]
    spans: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in series:
        spans[(row["role"], str(row.get("model_version")))].append(int(row["window_start"]))
    version_rows = [
        f"<tr><td>{esc(role)}</td><td>{esc(version)}</td><td>{when(min(ws))}</td>"
        f'<td>{when(max(ws))}</td><td class="n">{len(ws)}</td></tr>'
        for (role, version), ws in sorted(spans.items(), key=lambda item: min(item[1]))
    ]
    current = " · ".join(
        f"{role}: v{esc((model.get(role) or {}).get('version'))}" for role in ROLES
    )
    parts.append(f"<p>{current}</p>")
    parts.append(table(("role", "version", "first window", "last window", "windows"), version_rows))
    plots = [
        role_plot(series, metric, f"{label}, all stores")
        for metric, label in METRICS.items()
        if any(r.get(metric) is not None for r in series)
    ]
    plots.append(role_plot(series, "n", "labelled predictions per window"))
    parts.append(f'<h2>Live metrics over time</h2><div class="plots">{"".join(plots)}</div>')
    metric = primary_metric(latest_perf)
    per_store: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in latest_perf:
        if row["store_id"] != "*":
            per_store[row["store_id"]][row["role"]] = row
    lines = []
    for store, roles in sorted(per_store.items())[:limit]:
        champ = (roles.get("champion") or {}).get(metric)
        chall = (roles.get("challenger") or {}).get(metric)
        diff = None if champ is None or chall is None else chall - champ
        lines.append(
            f'<tr data-store="{esc(store)}"><td data-v="{esc(store)}">{store_link(store)}</td>'
            + "".join(
                f'<td class="n" data-v="{"" if v is None else v}">{num(v)}</td>'
                for v in (champ, chall, diff)
            )
            + f'<td class="n">{num((roles.get("champion") or {}).get("n"))}</td></tr>'
        )
    label = METRICS[metric]
    parts.append(
        f"<h2>Stores ({len(per_store):,}), newest window each</h2>"
        + table(
            (
                "store",
                f"{label} champion",
                f"{label} challenger",
                "challenger - champion",
                "labels",
            ),
            lines,
            table_id="model-stores",
            sortable=True,
        )
    )
    return page(f"model {name}", "".join(parts), models=models, logout=logout)


def login_page(next_path: str = "/dashboard", error: str | None = None) -> str:
    """The form that trades an admin API key for the dashboard's cookie."""
    problem = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    return page(
        "log in",
        "<h1>Log in to the monitoring dashboard</h1>"
        '<form class="login card" method="post" action="/dashboard/login">'
        f'{problem}<label for="key">Admin API key (<code>storeml keys create "*" ...</code>)'
        '</label><input id="key" name="key" type="password" autocomplete="off" required>'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<button type="submit">Log in</button></form>',
    )


def message_page(title: str, text: str, *, logout: bool = False) -> str:
    """A short page for a refusal or a missing store/model."""
    return page(
        title,
        f"<h1>{esc(title)}</h1><p>{esc(text)}</p>"
        '<p><a href="/dashboard">back to the overview</a></p>',
        logout=logout,
    )
