"""Train a model version's monitors from the same history, in the same MLflow run.

A version's monitors learn what "normal" looks like for that version: the orders of the history
it was trained on (input drift) and the profiles it scored, with its own scores (feature and
prediction drift). The reference is the last ``monitor_reference_days`` of that history (the
whole history given to training, labels' period included): the period closest to the live traffic,
since commerce data drifts slowly on its own (catalogues grow, prices move) and an old reference
would report that as drift in every store.

The reference profiles are the ones the stream would have published: the history is folded in
time slices (as micro-batches, coarse), each slice emitting the profiles it changed; those of the
reference period are scored by the bundle just trained. The monitors are fit before the version
is registered, so an alias never points at a version whose monitors are not logged yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storeml.connectors.mlflow_registry import ModelHandle
from storeml.models.monitor_reference import (
    customer_reference,
    fit_monitor,
    order_reference,
    product_reference,
)
from storeml.models.profiles import (
    ProfileState,
    apply_delta,
    customer_profiles,
    fold,
    product_profiles,
)
from storeml.models.scoring import score_customers, score_products
from storeml.models.store_models import StoreModelBundle

__all__ = ["emitted_profiles", "fit_monitors", "monitor_options"]

log = logging.getLogger(__name__)


def monitor_options(settings: Any) -> dict[str, Any]:
    """Monitor parameters from the settings (window, alert budget, effect floor, rows)."""
    return {
        "window_seconds": settings.monitor_window_seconds,
        "alert_budget_per_day": settings.monitor_alert_budget_per_day,
        "min_js": settings.monitor_min_js,
        "min_rows": settings.monitor_min_rows,
        "min_store_rows": settings.monitor_min_store_rows,
    }


def reference_start(facts: pd.DataFrame, days: float) -> int:
    """Start (ms) of the reference period: ``days`` before the last fact."""
    return int(facts["event_time"].max()) - int(days * 86_400_000)


def emitted_profiles(
    facts: pd.DataFrame, since_ms: int, slices: int = 16
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer and product profiles a stream folding ``facts`` would emit from ``since_ms`` on.

    Every fact is folded (a profile's numbers need the whole history); the slices before
    ``since_ms`` are folded as one batch, the reference period in ``slices`` slices.
    """
    if facts.empty:
        return pd.DataFrame(), pd.DataFrame()
    end = int(facts["event_time"].max()) + 1
    edges = [int(facts["event_time"].min()), *np.linspace(since_ms, end, slices + 1).astype(int)]
    state = ProfileState()
    customers, products = [], []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        part = facts[(facts["event_time"] >= lo) & (facts["event_time"] < hi)]
        if part.empty:
            continue
        delta = fold(state, part)
        state = apply_delta(state, delta)
        if i == 0:
            continue  # before the reference period: state only
        customers.append(customer_profiles(state, delta, part))
        products.append(product_profiles(state, delta, part))
    return (
        pd.concat(customers, ignore_index=True) if customers else pd.DataFrame(),
        pd.concat(products, ignore_index=True) if products else pd.DataFrame(),
    )


def fit_monitors(
    kind: str,
    bundle_folder: Path,
    facts: pd.DataFrame,
    options: dict[str, Any],
    *,
    model_name: str,
    reference_days: float = 28.0,
) -> dict[str, Any]:
    """The monitors of a version of ``kind`` whose bundle was written to ``bundle_folder``."""
    bundle = StoreModelBundle(bundle_folder, label=f"new version of {model_name}")
    handle = ModelHandle(model_name, "new", None, str(bundle_folder))
    since = reference_start(facts, reference_days)
    customers, products = emitted_profiles(facts, since)
    monitors: dict[str, Any] = {}
    if kind == "customer":
        recent = facts[facts["event_time"] >= since]
        end = int(facts["event_time"].max()) + 1
        monitors["orders"] = fit_monitor("orders", order_reference(recent, end), **options)
        if not customers.empty:
            scored = score_customers(customers, bundle, handle)
            monitors["customer"] = fit_monitor("customer", customer_reference(scored), **options)
    elif kind == "product" and not products.empty:
        scored = score_products(products, bundle, handle)
        reference = product_reference(scored)
        if len(reference):
            monitors["product"] = fit_monitor("product", reference, **options)
    for monitor in monitors.values():
        monitor.model_name = model_name
    log.info("%s: fitted monitors %s", model_name, sorted(monitors))
    return monitors
