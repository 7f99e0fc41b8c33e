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
* ``unavailable`` unscored because the model that should have scored the row failed: its version
  could not be opened (``bundle`` None with a ``handle``), or the store's model and then the global
  model raised. Sinks keep the score they already hold for such a row (a failure never erases a
  score).

**Faults stay with their store.** Given a ``faults`` list, a store whose model raises (loading or
``predict_proba``) is recorded there as a :class:`ScoringFault` and its rows fall back to the
global model, as a store without a model of its own would; when the global model raises too, the
rows are ``unavailable``. Every other store is scored as usual. Without a list the first failure
raises :class:`~storeml.errors.ModelError` (batch jobs that prefer to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.features import (
    CUSTOMER_FEATURES,
    NO_ORDER_DAYS,
    customer_feature_matrix,
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
    "ScoringFault",
    "customer_features",
    "product_text",
    "score_customers",
    "score_products",
]

#: Predicted categories per uncategorised product.
TOP_K = 5

#: Longest error text a fault keeps (a model's exception can carry a whole array).
_ERROR_CHARS = 500


@dataclass(frozen=True)
class ScoringFault:
    """One model failure while scoring: whose rows, which model, what it raised.

    ``store_id`` None means the global model (it serves every store without a model of its own)
    or the whole version (it could not be opened); ``rows`` is how many rows it left to the
    fallback.
    """

    store_id: str | None
    model: str
    version: str | None
    error: str
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "store_id": self.store_id,
            "model": self.model,
            "version": self.version,
            "error": self.error,
            "rows": self.rows,
        }


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


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


def _version(handle: ModelHandle | None) -> str | None:
    return handle.version if handle is not None else None


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


class _Faults:
    """Where a scoring call records failures: a list (isolate) or None (raise)."""

    def __init__(self, out: list[ScoringFault] | None, model: str, version: str | None) -> None:
        self.out = out
        self.model = model
        self.version = version

    def record(self, store: Any, exc: Exception, rows: int) -> None:
        if self.out is None:
            raise exc
        self.out.append(
            ScoringFault(
                None if store is None else str(store),
                self.model,
                self.version,
                _error_text(exc),
                rows,
            )
        )


def _score_linear(
    bundle: StoreModelBundle,
    stores: pd.Series,
    features: np.ndarray,
    propensity: np.ndarray,
    scopes: np.ndarray,
    faults: _Faults,
) -> np.ndarray:
    """Score the rows the bundle's linear table covers; returns the positions of the others.

    When the table itself fails, every row is left to the per-store path (where a failure stays
    with its store).
    """
    try:
        found = bundle.linear_rows(stores.to_numpy())
    except Exception as exc:
        faults.record(None, ModelError(f"linear table of {bundle.folder}: {exc}"), len(stores))
        return np.arange(len(stores))
    if found is None:
        return np.arange(len(stores))
    table, position = found
    rows = np.flatnonzero(position >= 0)
    if len(rows):
        where = position[rows]
        try:
            propensity[rows] = table.propensity(table.inputs(features[rows]), where)
        except Exception as exc:
            error = ModelError(f"linear table of {bundle.folder}: scoring failed: {exc}")
            faults.record(None, error, len(rows))
            return np.arange(len(stores))
        scopes[rows] = np.where(where < table.n_stores, "store", "global")
    return np.flatnonzero(position < 0)


def _score_groups(
    bundle: StoreModelBundle,
    groups: dict[Any, np.ndarray],
    scopes: np.ndarray,
    predict: Any,
    faults: _Faults,
) -> None:
    """Call ``predict(estimator, rows, label)`` once per own-model store and once for the rest.

    A store whose model fails (to load or to predict) joins the global group; a failing global
    model leaves its rows ``unavailable``. Each failure is recorded in ``faults``.
    """
    fallback: list[np.ndarray] = []
    for store, rows in groups.items():
        try:
            estimator, scope = bundle.model_for(store)
            if scope == "store":
                predict(estimator, rows, f"store {store!r}")
                scopes[rows] = "store"
        except Exception as exc:
            faults.record(store, exc, len(rows))
            scope = "global"
        if scope == "global":
            fallback.append(rows)
    if fallback:
        rows = np.concatenate(fallback)
        try:
            model = bundle.global_model()
            if model is None:  # only stores whose own model failed get here
                scopes[rows] = "unavailable"
                return
            predict(model, rows, "global model")
            scopes[rows] = "global"
        except Exception as exc:
            faults.record(None, exc, len(rows))
            scopes[rows] = "unavailable"


def score_customers(
    profiles: pd.DataFrame,
    bundle: StoreModelBundle | None,
    handle: ModelHandle | None,
    *,
    model_name: str | None = None,
    faults: list[ScoringFault] | None = None,
) -> pd.DataFrame:
    """``profiles`` plus ``propensity`` (float, None when unscored) and ``model`` (ModelRef dict).

    ``bundle`` None publishes every row unscored: scope ``none`` without a ``handle`` (no
    registered model or alias), ``unavailable`` with one (the version could not be opened).
    ``model_name`` names the model in ``model`` when there is no ``handle``. ``faults``: see the
    module docstring.
    """
    out = profiles.copy()
    n = len(out)
    propensity = np.full(n, np.nan)
    scopes = np.full(n, "none" if handle is None else "unavailable", dtype=object)
    if bundle is not None and n:
        scopes[:] = "none"
        sink = _Faults(faults, _model_name(bundle, handle, model_name), _version(handle))
        features = customer_feature_matrix(out)

        def predict(estimator: Any, rows: np.ndarray, label: str) -> None:
            proba = _predict(estimator, features[rows], label)
            classes = list(getattr(estimator, "classes_", [0, 1]))
            if 1 not in classes:
                raise ModelError(
                    f"{label}: classes {classes} have no positive class 1; the propensity model"
                    " must be trained on labels 0/1"
                )
            propensity[rows] = proba[:, classes.index(1)]

        rest = _score_linear(bundle, out["store_id"], features, propensity, scopes, sink)
        _score_groups(bundle, _groups(out["store_id"], rest), scopes, predict, sink)
    # object dtype keeps None (Avro null) for unscored rows; a float column would turn it to NaN
    out["propensity"] = pd.Series(
        [None if np.isnan(p) else float(p) for p in propensity], index=out.index, dtype=object
    )
    out["model"] = _refs(_model_name(bundle, handle, model_name), _version(handle), scopes)
    return out


def score_products(
    profiles: pd.DataFrame,
    bundle: StoreModelBundle | None,
    handle: ModelHandle | None,
    *,
    model_name: str | None = None,
    top_k: int = TOP_K,
    faults: list[ScoringFault] | None = None,
) -> pd.DataFrame:
    """``profiles`` plus ``predicted_categories`` and ``model`` (ModelRef dict).

    Products whose ``category`` is None and that have some title/description text get up to
    ``top_k`` ``{"category", "probability", "rank"}`` dicts, most likely first (rank 0); every
    other row gets ``[]`` and scope "none" (or "unavailable", see :func:`score_customers`).
    """
    out = profiles.copy()
    n = len(out)
    predicted: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    scopes = np.full(n, "none", dtype=object)
    if n and (bundle is not None or handle is not None):
        texts = product_text(out).to_numpy(dtype=object)
        category = out["category"] if "category" in out else pd.Series(None, index=out.index)
        wanted = np.flatnonzero(category.isna().to_numpy() & (texts != ""))
        if bundle is None:
            scopes[wanted] = "unavailable"
    if bundle is not None and n:
        sink = _Faults(faults, _model_name(bundle, handle, model_name), _version(handle))

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

        _score_groups(bundle, _groups(out["store_id"], wanted), scopes, predict, sink)
    out["predicted_categories"] = predicted
    out["model"] = _refs(_model_name(bundle, handle, model_name), _version(handle), scopes)
    return out
