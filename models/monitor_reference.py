"""The rows a :class:`~storeml.models.monitor.Monitor` counts, from history and from live records.

Training and the live monitor derive the monitored columns with the same functions here, so a
column means the same on both sides:

* ``orders``: one row per order. :func:`order_reference` reads the facts table (one row per
  order line, as :mod:`storeml.models.training` folds it); :func:`order_rows` reads decoded
  ``OrderEvent`` records. Both build a lines frame and aggregate it with one function.
* ``customer``: one row per enriched customer profile (:func:`customer_rows` from decoded
  records, :func:`customer_reference` from a scored profile frame of
  :func:`storeml.models.profiles.customer_profiles` plus a score column).
* ``product``: one row per *uncategorised* product profile with predictions (top-1 predicted
  category and its probability): :func:`product_rows`, :func:`product_reference`.

Order columns: ``store_id``, ``event_time`` (ms; not monitored, for windows), ``order_value_minor``
(sum of quantity x unit_price_minor over the lines), ``line_count``, ``channel`` and ``category``:
the category the order spent most on (lines without a category do not count; ties go to the
smallest name; None when no line has one). The most-spent category does not depend on the order
of lines, which the facts table does not keep reliably.

The facts table has no ``channel`` column (the event lake does not keep it): when ``facts`` has
none, ``order_reference`` gives None for every order, and :func:`fit_monitor` leaves out any
categorical column that is missing in the whole reference, so the live channel mix is not
reported as drift against a reference that never saw it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.monitor import Monitor

__all__ = [
    "MONITOR_COLUMNS",
    "ORDER_COLUMNS",
    "CUSTOMER_COLUMNS",
    "PRODUCT_COLUMNS",
    "order_reference",
    "order_rows",
    "customer_reference",
    "customer_rows",
    "product_reference",
    "product_rows",
    "make_monitor",
    "fit_monitor",
]

#: kind -> (numeric columns, categorical columns) a monitor of that kind watches.
MONITOR_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orders": (("order_value_minor", "line_count"), ("category", "channel")),
    "customer": (
        (
            "order_count",
            "total_spend_minor",
            "avg_order_value_minor",
            "days_since_last_order",
            "product_views",
            "propensity",
        ),
        (),
    ),
    "product": (("top_probability",), ("top_category",)),
}
ORDER_COLUMNS = [
    "store_id",
    "event_time",
    "order_value_minor",
    "line_count",
    "channel",
    "category",
]
CUSTOMER_COLUMNS = ["store_id", *MONITOR_COLUMNS["customer"][0]]
PRODUCT_COLUMNS = ["store_id", "top_category", "top_probability"]

#: Settings fields -> Monitor options, read by :func:`make_monitor`.
_SETTINGS = {
    "monitor_window_seconds": "window_seconds",
    "monitor_alert_budget_per_day": "alert_budget_per_day",
    "monitor_min_js": "min_js",
    "monitor_min_rows": "min_rows",
}


def _none_for_nan(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), None)


# --- orders ----------------------------------------------------------------------------------
def _orders_from_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """Lines (``order`` key, store_id, event_time, channel, category, value) -> one row per order."""
    if not len(lines):
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in ORDER_COLUMNS})
    grouped = lines.groupby("order", sort=True)
    out = pd.DataFrame(
        {
            "store_id": grouped["store_id"].first().astype(object),
            "event_time": grouped["event_time"].min().astype("int64"),
            "order_value_minor": grouped["value"].sum().astype("int64"),
            "line_count": grouped.size().astype("int64"),
            "channel": grouped["channel"].first(),
        }
    )
    named = lines[lines["category"].notna()]
    spend = named.groupby(["order", "category"], sort=False)["value"].sum().reset_index()
    spend = spend.sort_values(
        ["order", "value", "category"], ascending=[True, False, True], kind="stable"
    )
    top = spend.drop_duplicates("order").set_index("order")["category"]
    out["category"] = top.reindex(out.index)
    out["channel"] = _none_for_nan(out["channel"])
    out["category"] = _none_for_nan(out["category"])
    return out.reset_index(drop=True)[ORDER_COLUMNS]


def order_reference(facts: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    """One row per order with ``event_time < cutoff_ms`` in ``facts`` (:data:`ORDER_COLUMNS`).

    Orders are keyed by (store_id, order_id). ``channel`` comes from a ``channel`` column of
    ``facts`` when there is one, else None (see the module docstring).
    """
    lines = facts[(facts["kind"] == "order_line") & (facts["event_time"] < cutoff_ms)]
    quantity = lines["quantity"].astype("Float64").fillna(0).to_numpy(dtype="float64")
    price = lines["unit_price_minor"].astype("Float64").fillna(0).to_numpy(dtype="float64")
    channel = lines["channel"] if "channel" in lines else pd.Series(None, index=lines.index)
    frame = pd.DataFrame(
        {
            "order": lines.groupby(["store_id", "order_id"], sort=False).ngroup().to_numpy(),
            "store_id": lines["store_id"].to_numpy(dtype=object),
            "event_time": lines["event_time"].to_numpy(dtype="int64"),
            "channel": channel.to_numpy(dtype=object),
            "category": lines["category"].to_numpy(dtype=object),
            "value": (quantity * price).astype("int64"),
        }
    )
    return _orders_from_lines(frame)


def order_rows(order_records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per decoded ``OrderEvent`` record (:data:`ORDER_COLUMNS`); orders without lines
    (rejected by validation anyway) give no row."""
    columns: dict[str, list[Any]] = {
        "order": [],
        "store_id": [],
        "event_time": [],
        "channel": [],
        "category": [],
        "value": [],
    }
    for i, record in enumerate(order_records):
        channel = record.get("channel", "unknown")
        for line in record.get("lines") or ():
            columns["order"].append(i)
            columns["store_id"].append(record["store_id"])
            columns["event_time"].append(record["event_time"])
            columns["channel"].append(channel)
            columns["category"].append(line.get("category"))
            columns["value"].append(int(line["quantity"]) * int(line["unit_price_minor"]))
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    frame["value"] = frame["value"].astype("int64")
    frame["event_time"] = frame["event_time"].astype("int64")
    return _orders_from_lines(frame)


# --- customers -------------------------------------------------------------------------------
def _customer_frame(frame: pd.DataFrame, score_column: str) -> pd.DataFrame:
    out = pd.DataFrame({"store_id": frame["store_id"].to_numpy(dtype=object)})
    for column in CUSTOMER_COLUMNS[1:]:
        source = score_column if column == "propensity" else column
        values = frame[source] if source in frame else pd.Series(None, index=frame.index)
        numbers = pd.to_numeric(values.astype(object), errors="coerce")
        out[column] = numbers.to_numpy(dtype="float64", na_value=np.nan)
    return out


def customer_rows(profiles: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per decoded enriched ``CustomerProfile`` (:data:`CUSTOMER_COLUMNS`, floats)."""
    frame = pd.DataFrame.from_records(list(profiles), columns=CUSTOMER_COLUMNS)
    return _customer_frame(frame, "propensity")


def customer_reference(
    scored_profiles: pd.DataFrame, score_column: str = "propensity"
) -> pd.DataFrame:
    """The same columns from a profile frame with a score column (the model's propensity)."""
    if score_column not in scored_profiles:
        raise ModelError(f"the customer reference needs a score column {score_column!r}")
    return _customer_frame(scored_profiles, score_column)


# --- products --------------------------------------------------------------------------------
def _top_prediction(predicted: Any) -> tuple[str | None, float]:
    if predicted is None or not len(predicted):
        return None, np.nan
    best = min(predicted, key=lambda p: int(p.get("rank", 0)))
    return str(best["category"]), float(best["probability"])


def _product_frame(
    stores: Sequence[Any], categories: Sequence[Any], predicted: Sequence[Any]
) -> pd.DataFrame:
    rows: dict[str, list[Any]] = {"store_id": [], "top_category": [], "top_probability": []}
    for store, category, prediction in zip(stores, categories, predicted, strict=True):
        if category is not None and category == category:  # categorised (NaN != NaN)
            continue
        top, probability = _top_prediction(prediction)
        if top is None:
            continue
        rows["store_id"].append(store)
        rows["top_category"].append(top)
        rows["top_probability"].append(probability)
    return pd.DataFrame(
        {
            "store_id": pd.Series(rows["store_id"], dtype=object),
            "top_category": pd.Series(rows["top_category"], dtype=object),
            "top_probability": np.asarray(rows["top_probability"], dtype="float64"),
        }
    )


def product_rows(profiles: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Uncategorised decoded ``ProductProfile`` records with predictions (:data:`PRODUCT_COLUMNS`)."""
    return _product_frame(
        [p["store_id"] for p in profiles],
        [p.get("category") for p in profiles],
        [p.get("predicted_categories") for p in profiles],
    )


def product_reference(
    scored_profiles: pd.DataFrame, predictions_column: str = "predicted_categories"
) -> pd.DataFrame:
    """The same columns from a scored product profile frame (``category`` + predictions)."""
    if predictions_column not in scored_profiles:
        raise ModelError(f"the product reference needs a column {predictions_column!r}")
    return _product_frame(
        scored_profiles["store_id"].tolist(),
        scored_profiles["category"].tolist(),
        scored_profiles[predictions_column].tolist(),
    )


# --- monitors --------------------------------------------------------------------------------
def make_monitor(
    kind: str,
    settings: Any = None,
    *,
    columns: tuple[Sequence[str], Sequence[str]] | None = None,
    model_name: str = "",
    version: str = "0",
    **options: Any,
) -> Monitor:
    """An unfitted monitor of ``kind`` watching :data:`MONITOR_COLUMNS` (or ``columns``).

    ``settings`` (a Settings object, optional) supplies ``monitor_window_seconds``,
    ``monitor_alert_budget_per_day``, ``monitor_min_js`` and ``monitor_min_rows``; ``options``
    (any :class:`Monitor` keyword) override them.
    """
    if kind not in MONITOR_COLUMNS and columns is None:
        raise ModelError(f"unknown monitor kind {kind!r}; known: {sorted(MONITOR_COLUMNS)}")
    numeric, categorical = columns if columns is not None else MONITOR_COLUMNS[kind]
    merged: dict[str, Any] = {}
    if settings is not None:
        for field, option in _SETTINGS.items():
            if hasattr(settings, field):
                merged[option] = getattr(settings, field)
    merged.update(options)
    monitor = Monitor(kind, numeric, categorical, **merged)
    monitor.model_name = model_name
    monitor.version = version
    return monitor


def fit_monitor(
    kind: str, reference: pd.DataFrame, settings: Any = None, **options: Any
) -> Monitor:
    """:func:`make_monitor` fitted on ``reference``, leaving out categorical columns that are
    missing in every reference row (kept in ``monitor.skipped``)."""
    numeric, categorical = options.pop("columns", None) or MONITOR_COLUMNS[kind]
    kept = tuple(c for c in categorical if c in reference and reference[c].notna().any())
    monitor = make_monitor(kind, settings, columns=(numeric, kept), **options)
    monitor.skipped = tuple(c for c in categorical if c not in kept)
    return monitor.fit(reference)
