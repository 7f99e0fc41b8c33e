"""The feature registry: every feature a model can use, written once, as pandas code.

Features are computed in two steps, and both steps are shared by training, the stream, the
recompute and online prediction:

1. the *base frame* of a model kind, computed from profiles by :func:`customer_features`
   (columns :data:`CUSTOMER_FEATURES`) or :func:`product_text` (one column ``text``). This is
   exactly what the stream hands to a store's model (``models/scoring.py`` passes the base frame
   as a float matrix, or the texts as a list), so :func:`base_frame` turns either form back into
   the same DataFrame;
2. the *named features* of :data:`FEATURES`, each a function of the base frame. A model package
   lists the names it uses (``features.profile_fields`` / ``features.derived`` in its
   ``config.yaml``); :class:`storeml.models.base.FeatureStep` computes them.

Because step 2 only reads the base frame, a feature is computed the same way whether the input is
a training set, a micro-batch of the stream or a single profile sent for online prediction.
"Profile fields" are profile values recovered exactly from the base frame (integers are rounded
back after ``log1p``); nulls are filled as the base frame fills them (documented per feature).

Register a new feature with :func:`register_feature`; its function must accept the base frame and
return one value per row, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from storeml.errors import ModelError

__all__ = [
    "NO_ORDER_DAYS",
    "CUSTOMER_FEATURES",
    "PRODUCT_BASE",
    "KINDS",
    "Kind",
    "Feature",
    "FEATURES",
    "customer_features",
    "customer_feature_matrix",
    "product_text",
    "base_columns",
    "base_frame",
    "base_array",
    "register_feature",
    "get_feature",
    "feature_names",
    "compute_features",
]

Kind = Literal["customer", "product"]
#: Model kinds: what a model scores (customer profiles or product profiles).
KINDS: tuple[str, ...] = ("customer", "product")

#: Days-since-last-order given to customers who never ordered (the profile says null).
NO_ORDER_DAYS = 3650.0

#: Columns of :func:`customer_features`, in order (models are trained on this order).
CUSTOMER_FEATURES: tuple[str, ...] = (
    "order_count",
    "log_total_spend",
    "log_avg_order_value",
    "days_since_last_order",
    "days_active",
    "has_ordered",
    "log_product_views",
    "top_category_count",
    "top_category_share",
)

#: The product base frame: one text column (title and description).
PRODUCT_BASE: tuple[str, ...] = ("text",)


# --- the base frames (the stream's own feature code) -----------------------------------------
def _numeric(profiles: pd.DataFrame, column: str) -> pd.Series:
    if column not in profiles:
        return pd.Series(np.nan, index=profiles.index, dtype="float64")
    return pd.to_numeric(profiles[column], errors="coerce").astype("float64")


#: Frames up to this many rows take :func:`_small_customer_features` (online predict): the
#: same arithmetic on numpy arrays, without pandas' cost per operation (~1.8 ms for one row).
SMALL_FRAME_ROWS = 64


def _small_number(value: Any) -> float:
    """``pd.to_numeric(errors="coerce")`` of one value, as a float."""
    if value is None or value is pd.NA or isinstance(value, bool | np.bool_):
        return float(value) if isinstance(value, bool | np.bool_) else np.nan
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    try:
        return float(pd.to_numeric(value, errors="coerce"))
    except (TypeError, ValueError):
        return np.nan


def _small_column(profiles: pd.DataFrame, column: str) -> np.ndarray:
    if column not in profiles:
        return np.full(len(profiles), np.nan)
    values = profiles[column].to_numpy()
    if values.dtype.kind in "iuf":
        return values.astype("float64")
    return np.array([_small_number(v) for v in values], dtype="float64")


def _floor0(values: np.ndarray) -> np.ndarray:
    return np.where(values < 0, 0.0, values)  # as Series.clip(lower=0): -0.0 and NaN stay


def _small_customer_features(profiles: pd.DataFrame) -> np.ndarray:
    """:func:`customer_features` as a float matrix, computed on numpy arrays (small frames)."""

    def filled(column: str, value: float) -> np.ndarray:
        values = _small_column(profiles, column)
        return np.where(np.isnan(values), value, values)

    orders = filled("order_count", 0.0)
    spend = _floor0(filled("total_spend_minor", 0.0))
    avg = _floor0(filled("avg_order_value_minor", 0.0))
    since = filled("days_since_last_order", NO_ORDER_DAYS)
    active = (
        _small_column(profiles, "last_event_time") - _small_column(profiles, "first_order_time")
    ) / 86_400_000.0
    active = _floor0(np.where(np.isnan(active), 0.0, active))
    views = _floor0(filled("product_views", 0.0))
    tops = (
        profiles["top_categories"].tolist()
        if "top_categories" in profiles
        else [None] * len(profiles)
    )
    count = np.array([len(t) if t is not None else 0 for t in tops], dtype="float64")
    share = np.array(
        [float(t[0]["share"]) if t is not None and len(t) else 0.0 for t in tops],
        dtype="float64",
    )
    columns = {
        "order_count": orders,
        "log_total_spend": np.log1p(spend),
        "log_avg_order_value": np.log1p(avg),
        "days_since_last_order": since,
        "days_active": active,
        "has_ordered": (orders > 0).astype("float64"),
        "log_product_views": np.log1p(views),
        "top_category_count": count,
        "top_category_share": share,
    }
    return np.column_stack([columns[name] for name in CUSTOMER_FEATURES])


def customer_feature_matrix(profiles: pd.DataFrame) -> np.ndarray:
    """:func:`customer_features` as a float64 matrix (what a model is given)."""
    if len(profiles) <= SMALL_FRAME_ROWS:
        return _small_customer_features(profiles).reshape(len(profiles), len(CUSTOMER_FEATURES))
    return customer_features(profiles).to_numpy(dtype="float64")


def customer_features(profiles: pd.DataFrame) -> pd.DataFrame:
    """Numeric model features of customer profiles (columns :data:`CUSTOMER_FEATURES`).

    Reads the columns :func:`storeml.models.profiles.customer_profiles` produces (or their
    Avro-decoded form, with None for nulls). Never NaN: a customer without orders gets
    ``days_since_last_order`` = :data:`NO_ORDER_DAYS` and zero money features.
    """
    orders = _numeric(profiles, "order_count").fillna(0.0)
    spend = _numeric(profiles, "total_spend_minor").fillna(0.0).clip(lower=0)
    avg = _numeric(profiles, "avg_order_value_minor").fillna(0.0).clip(lower=0)
    since = _numeric(profiles, "days_since_last_order").fillna(NO_ORDER_DAYS)
    first = _numeric(profiles, "first_order_time")
    last_event = _numeric(profiles, "last_event_time")
    active = ((last_event - first) / 86_400_000.0).fillna(0.0).clip(lower=0)
    views = _numeric(profiles, "product_views").fillna(0.0).clip(lower=0)
    if "top_categories" in profiles:
        tops = profiles["top_categories"]
        count = tops.map(lambda t: len(t) if t is not None else 0).astype("float64")
        share = tops.map(
            lambda t: float(t[0]["share"]) if t is not None and len(t) else 0.0
        ).astype("float64")
    else:
        count = share = pd.Series(0.0, index=profiles.index)
    out = pd.DataFrame(
        {
            "order_count": orders,
            "log_total_spend": np.log1p(spend),
            "log_avg_order_value": np.log1p(avg),
            "days_since_last_order": since,
            "days_active": active,
            "has_ordered": (orders > 0).astype("float64"),
            "log_product_views": np.log1p(views),
            "top_category_count": count,
            "top_category_share": share,
        },
        index=profiles.index,
    )
    return out[list(CUSTOMER_FEATURES)]


def product_text(profiles: pd.DataFrame) -> pd.Series:
    """The text a product is categorised by: title and description (missing parts empty)."""

    def part(column: str) -> pd.Series:
        if column not in profiles:
            return pd.Series("", index=profiles.index, dtype=object)
        values = profiles[column]
        return values.where(values.notna(), "").astype(str)

    return (part("title") + " " + part("description")).str.strip()


def base_columns(kind: str) -> tuple[str, ...]:
    """Columns of ``kind``'s base frame."""
    if kind == "customer":
        return CUSTOMER_FEATURES
    if kind == "product":
        return PRODUCT_BASE
    raise ModelError(f"unknown model kind {kind!r}; use one of {KINDS}")


def base_frame(kind: str, data: Any) -> pd.DataFrame:
    """``kind``'s base frame from profiles, from a base frame, or from what the stream passes.

    Accepts a DataFrame of profiles (base columns are computed), a DataFrame that already has the
    base columns (used as is), a 2-D float matrix in :data:`CUSTOMER_FEATURES` order (customers)
    or a sequence of texts (products).
    """
    columns = base_columns(kind)
    if isinstance(data, pd.DataFrame):
        if all(c in data.columns for c in columns):
            return data[list(columns)]
        if kind == "customer":
            return customer_features(data)
        return pd.DataFrame({"text": product_text(data)}, index=data.index)
    if kind == "customer":
        matrix = np.asarray(data, dtype="float64")
        if matrix.ndim != 2 or matrix.shape[1] != len(columns):
            raise ModelError(
                f"customer model input has shape {matrix.shape}; pass profiles, a base frame or"
                f" a matrix of the {len(columns)} columns {list(columns)}"
            )
        return pd.DataFrame(matrix, columns=list(columns))
    texts = pd.Series(list(data), dtype=object)
    return pd.DataFrame({"text": texts.where(texts.notna(), "").astype(str)})


def base_array(kind: str, profiles: pd.DataFrame) -> np.ndarray:
    """What the stream passes to ``predict_proba``: a float matrix or an object array of texts."""
    if kind == "customer":
        return customer_features(profiles).to_numpy(dtype="float64")
    return product_text(profiles).to_numpy(dtype=object)


# --- the registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    """A named feature of one model kind.

    ``source`` is "profile" (a profile field, recovered exactly from the base frame) or "derived";
    ``dtype`` "float" or "text"; ``fields`` the profile fields it is computed from.
    """

    name: str
    kind: str
    source: Literal["profile", "derived"]
    dtype: Literal["float", "text"]
    fields: tuple[str, ...]
    doc: str
    compute: Callable[[pd.DataFrame], pd.Series]


#: kind -> name -> feature, in registration order.
FEATURES: dict[str, dict[str, Feature]] = {kind: {} for kind in KINDS}


def register_feature(
    kind: str,
    name: str,
    *,
    source: Literal["profile", "derived"] = "derived",
    dtype: Literal["float", "text"] = "float",
    fields: Sequence[str] = (),
    doc: str = "",
) -> Callable[[Callable[[pd.DataFrame], Any]], Callable[[pd.DataFrame], Any]]:
    """Decorator registering ``function(base_frame) -> values`` as feature ``name`` of ``kind``."""
    if kind not in FEATURES:
        raise ModelError(f"unknown model kind {kind!r}; use one of {KINDS}")

    def decorate(function: Callable[[pd.DataFrame], Any]) -> Callable[[pd.DataFrame], Any]:
        if name in FEATURES[kind]:
            raise ModelError(f"{kind} feature {name!r} is already registered; pick another name")
        FEATURES[kind][name] = Feature(
            name,
            kind,
            source,
            dtype,
            tuple(fields),
            doc or (function.__doc__ or "").strip(),
            function,
        )
        return function

    return decorate


def get_feature(kind: str, name: str) -> Feature:
    """The registered feature, or :class:`ModelError` listing the known names."""
    feature = FEATURES.get(kind, {}).get(name)
    if feature is None:
        raise ModelError(
            f"unknown {kind} feature {name!r}; known: {', '.join(feature_names(kind)) or 'none'}"
        )
    return feature


def feature_names(kind: str, source: str | None = None) -> list[str]:
    """Registered feature names of ``kind`` (only ``source`` ones when given)."""
    return [
        name
        for name, feature in FEATURES.get(kind, {}).items()
        if source is None or feature.source == source
    ]


def compute_features(kind: str, names: Sequence[str], data: Any) -> pd.DataFrame:
    """The named features, in order, for ``data`` (anything :func:`base_frame` accepts)."""
    base = base_frame(kind, data)
    columns: Mapping[str, Any] = {
        name: np.asarray(get_feature(kind, name).compute(base)) for name in names
    }
    return pd.DataFrame(dict(columns), index=base.index)


def _column(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda base: base[name].astype("float64")


def _unlog(name: str, *, integer: bool) -> Callable[[pd.DataFrame], pd.Series]:
    def compute(base: pd.DataFrame) -> pd.Series:
        values = np.expm1(base[name].astype("float64"))
        return np.round(values) if integer else values

    return compute


# Customer profile fields (recovered from the base frame; nulls filled as documented).
for _name, _compute, _fields, _doc in (
    ("order_count", _column("order_count"), ("order_count",), "Orders so far."),
    (
        "total_spend_minor",
        _unlog("log_total_spend", integer=True),
        ("total_spend_minor",),
        "Total spend in minor units (negative clipped to 0).",
    ),
    (
        "avg_order_value_minor",
        _unlog("log_avg_order_value", integer=False),
        ("avg_order_value_minor",),
        "Average order value in minor units; 0 without orders.",
    ),
    (
        "days_since_last_order",
        _column("days_since_last_order"),
        ("days_since_last_order",),
        f"Days from the last order to the latest event; {NO_ORDER_DAYS:g} without orders.",
    ),
    (
        "product_views",
        _unlog("log_product_views", integer=True),
        ("product_views",),
        "Product views.",
    ),
):
    register_feature("customer", _name, source="profile", fields=_fields, doc=_doc)(_compute)

# Customer derived features: the rest of the base frame, plus features derived from it.
_DERIVED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("log_total_spend", ("total_spend_minor",), "log(1 + total spend in minor units)."),
    ("log_avg_order_value", ("avg_order_value_minor",), "log(1 + average order value)."),
    (
        "days_active",
        ("first_order_time", "last_event_time"),
        "Days from first order to latest event.",
    ),
    ("has_ordered", ("order_count",), "1.0 when the customer ordered at least once, else 0.0."),
    ("log_product_views", ("product_views",), "log(1 + product views)."),
    ("top_category_count", ("top_categories",), "Categories in the top-5 list (0-5)."),
    ("top_category_share", ("top_categories",), "Spend share of the top category (0-1)."),
)
for _name, _inputs, _doc in _DERIVED:
    register_feature("customer", _name, fields=_inputs, doc=_doc)(_column(_name))


@register_feature(
    "customer",
    "orders_per_month",
    fields=("order_count", "first_order_time", "last_event_time"),
    doc="Orders per 30 days of activity (activity shorter than 30 days counts as 30).",
)
def _orders_per_month(base: pd.DataFrame) -> pd.Series:
    return base["order_count"] / np.maximum(base["days_active"] / 30.0, 1.0)


@register_feature(
    "product",
    "text",
    dtype="text",
    fields=("title", "description"),
    doc="Title and description joined by a space (missing parts empty).",
)
def _text(base: pd.DataFrame) -> pd.Series:
    return base["text"].astype(object)


@register_feature(
    "product",
    "text_words",
    fields=("title", "description"),
    doc="Number of words in title and description.",
)
def _text_words(base: pd.DataFrame) -> pd.Series:
    return base["text"].str.split().str.len().fillna(0).astype("float64")
