"""``storeml models compare NAME --live``: champion and challenger on the same live traffic.

The rows are the monitor's performance windows in Redis
(:meth:`~storeml.connectors.monitor_store.MonitorStore.performance_series`): one per window and
role, with the version that was scored, the labels that arrived (``n``) and the live metrics.
:func:`live_comparison` pairs them by window and sums them up; :func:`live_table` prints that.
Both are pure, so the command only reads and prints.

Totals are n-weighted means of the windows' figures (the windows' own AUCs, not an AUC pooled
over their labels, which the stored figures cannot give). The verdict compares the roles over
the windows where both have the metric, so neither is judged on traffic the other did not see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["LIVE_METRICS", "default_metric", "live_comparison", "live_table", "verdict", "iso_utc"]

#: Live metrics in display order, with their column titles.
LIVE_METRICS = {
    "auc": "AUC",
    "brier": "Brier",
    "precision": "precision",
    "recall": "recall",
    "hit1": "hit@1",
    "hit5": "hit@5",
}
_LOWER_IS_BETTER = {"brier"}
ROLES = ("champion", "challenger")


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ``2026-01-01T00:05:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {
        "version": row.get("model_version"),
        "n": int(row.get("n") or 0),
        "positives": int(row.get("positives") or 0),
    }
    return out | {name: row.get(name) for name in LIVE_METRICS}


def _weighted(cells: list[dict[str, Any]], metric: str) -> float | None:
    """The n-weighted mean of ``metric`` over the cells that have it (None: none has)."""
    pairs = [(c[metric], c["n"]) for c in cells if c[metric] is not None and c["n"] > 0]
    weight = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / weight if weight else None


def _total(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not cells:
        return None
    versions = list(dict.fromkeys(str(c["version"]) for c in cells if c["version"] is not None))
    out = {
        "versions": versions,
        "windows": len(cells),
        "n": sum(c["n"] for c in cells),
        "positives": sum(c["positives"] for c in cells),
    }
    return out | {name: _weighted(cells, name) for name in LIVE_METRICS}


def default_metric(rows: list[dict[str, Any]]) -> str:
    """``auc`` for a customer (binary) model, ``hit5`` for a product (ranking) one."""
    has_auc = any(r.get("auc") is not None for r in rows)
    has_hit5 = any(r.get("hit5") is not None for r in rows)
    return "hit5" if has_hit5 and not has_auc else "auc"


def live_comparison(
    rows: list[dict[str, Any]], windows: int = 12, metric: str | None = None
) -> dict[str, Any]:
    """The last ``windows`` windows of ``rows``, paired by role, their totals and the verdict.

    ``metric`` (default :func:`default_metric`) decides which role is better: higher is better
    except for ``brier``. ``better`` is ``"champion"``, ``"challenger"``, ``"equal"`` or None
    (no window where both roles have the metric).
    """
    if metric is not None and metric not in LIVE_METRICS:
        raise ValueError(f"live metric {metric!r}; choose one of {', '.join(LIVE_METRICS)}")
    chosen = metric or default_metric(rows)
    by_window: dict[int, dict[str, Any]] = {}
    for row in rows:
        start = int(row["window_start"])
        entry = by_window.setdefault(
            start,
            {"window_start_ms": start, "window_end_ms": int(row["window_end"])},
        )
        entry[row["role"]] = _cell(row)
    shown = [by_window[start] for start in sorted(by_window)][-windows:] if windows > 0 else []
    for entry in shown:
        entry["window_start"] = iso_utc(entry["window_start_ms"])
        for role in ROLES:
            entry.setdefault(role, None)
    totals = {role: _total([e[role] for e in shown if e[role] is not None]) for role in ROLES}
    paired = [
        e
        for e in shown
        if all(e[role] is not None and e[role][chosen] is not None for role in ROLES)
    ]
    scores = {role: _weighted([e[role] for e in paired], chosen) for role in ROLES}
    better: str | None = None
    if paired and None not in scores.values():
        champion, challenger = scores["champion"], scores["challenger"]
        if champion == challenger:
            better = "equal"
        elif (challenger > champion) != (chosen in _LOWER_IS_BETTER):  # type: ignore[operator]
            better = "challenger"
        else:
            better = "champion"
    return {
        "metric": chosen,
        "higher_is_better": chosen not in _LOWER_IS_BETTER,
        "windows": [
            {k: e[k] for k in ("window_start", "window_start_ms", "window_end_ms", *ROLES)}
            for e in shown
        ],
        "totals": totals,
        "paired_windows": len(paired),
        "paired": scores if paired else None,
        "better": better,
    }


def _shown_metrics(comparison: dict[str, Any]) -> list[str]:
    """The metrics some shown cell has (a customer model's four, a product model's two)."""
    cells = [e[r] for e in comparison["windows"] for r in ROLES if e[r] is not None]
    return [m for m in LIVE_METRICS if any(c[m] is not None for c in cells)]


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def live_table(comparison: dict[str, Any]) -> str:
    """The windows side by side, a total row (n-weighted) and the verdict line."""
    metrics = _shown_metrics(comparison)
    side = ["version", "n", *(LIVE_METRICS[m] for m in metrics)]
    header = [
        "window start (UTC)",
        *(f"{r} {c}" if c == "version" else c for r in ROLES for c in side),
    ]

    def cells(cell: dict[str, Any] | None, total: bool = False) -> list[str]:
        if cell is None:
            return ["-"] * len(side)
        version = ",".join(cell["versions"]) if total else str(cell["version"] or "-")
        return [version, str(cell["n"]), *(_number(cell[m]) for m in metrics)]

    rows = [
        [e["window_start"], *(c for r in ROLES for c in cells(e[r]))] for e in comparison["windows"]
    ]
    totals = comparison["totals"]
    rows.append(["total (n-weighted)", *(c for r in ROLES for c in cells(totals[r], True))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    text_columns = {0, 1, 1 + len(side)}

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i in text_columns else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows), verdict(comparison)])


def verdict(comparison: dict[str, Any]) -> str:
    """Which role is better on the comparison's metric, over the windows both scored."""
    metric = LIVE_METRICS[comparison["metric"]]
    direction = "higher" if comparison["higher_is_better"] else "lower"
    better, paired = comparison["better"], comparison["paired_windows"]
    if better is None:
        missing = [r for r in ROLES if comparison["totals"][r] is None]
        why = (
            f"no {missing[0]} rows in these windows"
            if len(missing) == 1
            else f"no window where both roles have {metric}"
        )
        return f"no verdict on {metric}: {why}"
    scores = comparison["paired"]
    figures = f"champion {scores['champion']:.3f}, challenger {scores['challenger']:.3f}"
    where = f"n-weighted over the {paired} window{'s' if paired != 1 else ''} both scored"
    if better == "equal":
        return f"champion and challenger equal on {metric} ({figures}; {where})"
    return f"{better} better on {metric} ({direction} is better): {figures} ({where})"
