"""Features, and scoring of profiles with a per-store bundle: pure pandas, DataFrame in and out.

The feature code lives in :mod:`storeml.models.features` (re-exported here): training
(:mod:`storeml.models.training`) and the stream call the same functions, so a model never sees
features computed another way.

Scoring groups rows by store and calls ``predict_proba`` once per store that has a model of its
own, plus once for all rows served by the global fallback, never once per row. Customer bundles
with a linear table (:mod:`storeml.models.linear`) go further: every row whose store's model (or
global fallback) is on the table is scored in one numpy expression for all stores at once, with
the same result as ``predict_proba`` (to ~1e-12), and only the other stores are scored one call
per store. The fallback rule, documented in the output's ``model.scope``:

* ``store``  the store's own model scored the row;
* ``global`` the store has no model of its own (too few examples or one class when trained):
  the global model, trained on every store, scored it;
* ``none``   unscored: no registered model or alias (``bundle`` is None), a bundle with no global
  model, or nothing to score (a product that already has a category, or no title/description).
  Customers get ``propensity`` None, products an empty ``predicted_categories``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.features import (
    CUSTOMER_FEATURES,
    NO_ORDER_DAYS,
    customer_features,
    product_text,
)

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle
    from storeml.models.store_models import StoreModelBundle

__all__ = [
    "CUSTOMER_FEATURES",
    "NO_ORDER_DAYS",
    "TOP_K",
    "customer_features",
    "product_text",
    "score_customers",
    "score_products",
]

#: Predicted categories per uncategorised product.
TOP_K = 5


def _model_name(
    bundle: StoreModelBundle | None, handle: ModelHandle | None, model_name: str | None
) -> str:
    if handle is not None:
        return handle.name
    if model_name:
        return model_name
    if bundle is not None:
        return str(bundle.index.get("metadata", {}).get("model_name", ""))
    return ""


def _refs(name: str, version: str | None, scopes: np.ndarray) -> list[dict[str, Any]]:
    return [{"name": name, "version": version, "scope": scope} for scope in scopes.tolist()]


def _groups(stores: pd.Series, rows: np.ndarray) -> dict[Any, np.ndarray]:
    """Row positions (into the full frame) grouped by store, for the given positions."""
    if len(rows) == 0:
        return {}
    values = stores.to_numpy()[rows]
    positions = pd.Series(values).groupby(values, sort=False).indices
    return {store: rows[where] for store, where in positions.items()}


def _predict(estimator: Any, inputs: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(estimator.predict_proba(inputs))
    except Exception as exc:
        raise ModelError(f"{what}: predict_proba failed: {exc}") from exc


def _score_linear(
    bundle: StoreModelBundle,
    stores: pd.Series,
    features: np.ndarray,
    propensity: np.ndarray,
    scopes: np.ndarray,
) -> np.ndarray:
    """Score the rows the bundle's linear table covers; returns the positions of the others."""
    found = bundle.linear_rows(stores.to_numpy())
    if found is None:
        return np.arange(len(stores))
    table, position = found
    rows = np.flatnonzero(position >= 0)
    if len(rows):
        where = position[rows]
        try:
            propensity[rows] = table.propensity(table.inputs(features[rows]), where)
        except Exception as exc:
            raise ModelError(f"linear table of {bundle.folder}: scoring failed: {exc}") from exc
        scopes[rows] = np.where(where < table.n_stores, "store", "global")
    return np.flatnonzero(position < 0)


def _score_groups(
    bundle: StoreModelBundle,
    groups: dict[Any, np.ndarray],
    scopes: np.ndarray,
    predict: Any,
) -> None:
    """Call ``predict(estimator, rows, label)`` once per own-model store and once for the rest."""
    fallback: list[np.ndarray] = []
    for store, rows in groups.items():
        estimator, scope = bundle.model_for(store)
        if scope == "store":
            predict(estimator, rows, f"store {store!r}")
            scopes[rows] = "store"
        elif scope == "global":
            fallback.append(rows)
    if fallback:
        rows = np.concatenate(fallback)
        predict(bundle.global_model(), rows, "global model")
        scopes[rows] = "global"


def score_customers(
    profiles: pd.DataFrame,
    bundle: StoreModelBundle | None,
    handle: ModelHandle | None,
    *,
    model_name: str | None = None,
) -> pd.DataFrame:
    """``profiles`` plus ``propensity`` (float, None when unscored) and ``model`` (ModelRef dict).

    ``bundle`` None (no registered model or alias) publishes every row unscored. ``model_name``
    names the model in ``model`` when there is no ``handle``.
    """
    out = profiles.copy()
    n = len(out)
    propensity = np.full(n, np.nan)
    scopes = np.full(n, "none", dtype=object)
    if bundle is not None and n:
        features = customer_features(out).to_numpy(dtype="float64")

        def predict(estimator: Any, rows: np.ndarray, label: str) -> None:
            proba = _predict(estimator, features[rows], label)
            classes = list(getattr(estimator, "classes_", [0, 1]))
            if 1 not in classes:
                raise ModelError(
                    f"{label}: classes {classes} have no positive class 1; the propensity model"
                    " must be trained on labels 0/1"
                )
            propensity[rows] = proba[:, classes.index(1)]

        rest = _score_linear(bundle, out["store_id"], features, propensity, scopes)
        _score_groups(bundle, _groups(out["store_id"], rest), scopes, predict)
    # object dtype keeps None (Avro null) for unscored rows; a float column would turn it to NaN
    out["propensity"] = pd.Series(
        [None if np.isnan(p) else float(p) for p in propensity], index=out.index, dtype=object
    )
    version = handle.version if handle is not None else None
    out["model"] = _refs(_model_name(bundle, handle, model_name), version, scopes)
    return out


def score_products(
    profiles: pd.DataFrame,
    bundle: StoreModelBundle | None,
    handle: ModelHandle | None,
    *,
    model_name: str | None = None,
    top_k: int = TOP_K,
) -> pd.DataFrame:
    """``profiles`` plus ``predicted_categories`` and ``model`` (ModelRef dict).

    Products whose ``category`` is None and that have some title/description text get up to
    ``top_k`` ``{"category", "probability", "rank"}`` dicts, most likely first (rank 0); every
    other row gets ``[]`` and scope "none".
    """
    out = profiles.copy()
    n = len(out)
    predicted: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    scopes = np.full(n, "none", dtype=object)
    if bundle is not None and n:
        texts = product_text(out).to_numpy(dtype=object)
        category = out["category"] if "category" in out else pd.Series(None, index=out.index)
        wanted = np.flatnonzero(category.isna().to_numpy() & (texts != ""))

        def predict(estimator: Any, rows: np.ndarray, label: str) -> None:
            proba = _predict(estimator, list(texts[rows]), label)
            classes = np.asarray(getattr(estimator, "classes_", []), dtype=object)
            k = min(top_k, proba.shape[1])
            best = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            for row, order, p in zip(rows.tolist(), best, proba, strict=True):
                predicted[row] = [
                    {"category": str(classes[j]), "probability": float(p[j]), "rank": rank}
                    for rank, j in enumerate(order.tolist())
                ]

        _score_groups(bundle, _groups(out["store_id"], wanted), scopes, predict)
    out["predicted_categories"] = predicted
    version = handle.version if handle is not None else None
    out["model"] = _refs(_model_name(bundle, handle, model_name), version, scopes)
    return out
