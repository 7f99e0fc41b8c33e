"""Linear store models as one table: the vectorised fast path of customer scoring.

A customer model is *linear in the scoring input* when the probability of class 1 it gives a row
``x`` (what :mod:`storeml.models.scoring` passes to ``predict_proba``) is::

    p = expit(((x - shift) / scale) @ coef + intercept)        (or 1 - p when class 1 comes first)

That holds, exactly as scikit-learn computes it, for

* a binary ``LogisticRegression`` (``shift`` 0, ``scale`` 1);
* a ``Pipeline`` of affine scalers (``StandardScaler``, ``RobustScaler``, ``MaxAbsScaler``,
  ``MinMaxScaler`` without ``clip``; ``"passthrough"`` steps) ending in one; several scalers are
  composed into one ``shift``/``scale``;
* a :class:`~storeml.models.base.PackagedModel` whose predictor is one of the above (optionally
  after an affine scaler as preprocessing step). Its feature step is not affine, but it is
  row-wise (a feature is computed the same way for one row or a batch, see
  :mod:`storeml.models.features`), so it is applied once to all rows and ``x`` is its output.

:class:`TableBuilder` (used by :func:`storeml.models.store_models.write_bundle`) extracts that
affine head from every model it is given, checks it against the model's own ``predict_proba`` on
a few probe rows (difference at most :data:`TOLERANCE`; a model that fails the check, or is of
any other type, simply stays off the table) and writes one ``linear.npz``: store ids and, per
store plus one row for the global model, ``shift``, ``scale``, ``coef`` (n x features),
``intercept`` and ``flip``. All models of a table share one input (the base matrix, or one
feature step); when models disagree the input most of them use wins and the others stay off.

:class:`LinearTable` is the loaded file: 100,000 stores of 10 features take about 32 MB (four
float64 matrices). Scoring looks every row's store up in it at once and computes all their
probabilities in one numpy expression, so the cost no longer grows with the number of stores;
only stores off the table are scored one ``predict_proba`` call per store. Pure numpy and
pandas: scikit-learn is only imported when a table is built from scikit-learn objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.features import base_columns, compute_features, get_feature

__all__ = [
    "LINEAR_FILE",
    "TOLERANCE",
    "AffineHead",
    "affine_head",
    "TableBuilder",
    "LinearTable",
    "expit",
]

#: File of the table inside a bundle folder.
LINEAR_FILE = "linear.npz"
#: Largest difference to the model's own ``predict_proba`` a head may show on the probe rows.
TOLERANCE = 1e-12

_PROBES = 8

#: What a table row's input is: ``("base",)`` (the base matrix) or ``("features", kind, *names)``.
InputKey = tuple[str, ...]
#: One table row: shift, scale, coef, intercept, flip.
_Row = tuple[np.ndarray, np.ndarray, np.ndarray, float, bool]


def expit(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow for large ``|z|``."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _probability(
    x: np.ndarray, shift: Any, scale: Any, coef: Any, intercept: Any, flip: Any
) -> np.ndarray:
    """``expit(((x - shift) / scale) . coef + intercept)``, or one minus it where ``flip``.

    ``(x - shift) / scale`` is what the scalers compute, in the same order, so a single
    ``StandardScaler`` gives bit-identical scaled values.
    """
    scaled = (x - shift) / scale
    z = np.einsum("ij,ij->i", scaled, np.broadcast_to(coef, scaled.shape)) + intercept
    p = expit(z)
    return np.where(flip, 1.0 - p, p)


@dataclass(frozen=True)
class AffineHead:
    """The affine part of one linear model, and the model's own probability of class 1.

    ``own_proba(x)`` calls the model on ``x`` in the head's input space (for the check).
    """

    input: InputKey
    shift: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    flip: bool
    own_proba: Callable[[np.ndarray], np.ndarray]

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of class 1 by the table formula (the same arithmetic as scoring)."""
        return _probability(x, self.shift, self.scale, self.coef, self.intercept, self.flip)

    def check(self) -> bool:
        """Whether the formula matches the model on probe rows within :data:`TOLERANCE`."""
        rng = np.random.default_rng(0)
        g = rng.normal(scale=2.0, size=(_PROBES, len(self.coef)))
        g[0] = 0.0
        x = self.shift + self.scale * g
        try:
            expected = np.asarray(self.own_proba(x), dtype="float64")
        except Exception:  # a model that cannot score probes is not put on the table
            return False
        got = self.proba(x)
        if expected.shape != got.shape or not np.isfinite(expected).all():
            return False
        return bool(np.max(np.abs(expected - got)) <= TOLERANCE)


# --- extraction ---------------------------------------------------------------------------------
def _module_root(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def _scaler(step: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(shift, scale)`` with ``step.transform(x) == (x - shift) / scale``, or None."""
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

    kind = type(step)
    width = getattr(step, "n_features_in_", None)
    if width is None:
        return None
    zeros, ones = np.zeros(width), np.ones(width)
    if kind is StandardScaler:
        shift = step.mean_ if step.with_mean else zeros
        scale = step.scale_ if step.with_std else ones
    elif kind is RobustScaler:
        shift = step.center_ if step.with_centering else zeros
        scale = step.scale_ if step.with_scaling else ones
    elif kind is MaxAbsScaler:
        shift, scale = zeros, step.scale_
    elif kind is MinMaxScaler and not step.clip:
        # transform is x * scale_ + min_; rewritten with a rounding the check has to accept
        shift, scale = -step.min_ / step.scale_, 1.0 / step.scale_
    else:
        return None
    return np.asarray(shift, dtype="float64"), np.asarray(scale, dtype="float64")


def _compose(stages: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[Any, Any] | None:
    """One ``(shift, scale)`` equal to applying ``stages`` in order (exact for one stage)."""
    shift, scale = np.zeros(width), np.ones(width)
    for stage_shift, stage_scale in stages:
        if stage_shift.shape != (width,) or stage_scale.shape != (width,):
            return None
        shift, scale = shift + stage_shift * scale, scale * stage_scale
    return shift, scale


def _classifier(
    estimator: Any,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, float, bool] | None:
    """Scaler stages, coef, intercept and flip of a LogisticRegression or Pipeline ending in one."""
    if _module_root(estimator) != "sklearn":
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    stages: list[tuple[np.ndarray, np.ndarray]] = []
    if type(estimator) is Pipeline:
        steps = [step for _, step in estimator.steps]
        for step in steps[:-1]:
            if step is None or step == "passthrough":
                continue
            stage = _scaler(step)
            if stage is None:
                return None
            stages.append(stage)
        estimator = steps[-1]
    if type(estimator) is not LogisticRegression:
        return None
    classes = list(getattr(estimator, "classes_", []))
    coef = np.asarray(getattr(estimator, "coef_", np.empty((0, 0))), dtype="float64")
    if len(classes) != 2 or 1 not in classes or coef.ndim != 2 or coef.shape[0] != 1:
        return None
    intercept = float(np.asarray(estimator.intercept_, dtype="float64").reshape(-1)[0])
    return stages, coef[0], intercept, classes.index(1) == 0


def affine_head(model: Any, kind: str) -> AffineHead | None:
    """The affine head of ``model`` when it is linear in the scoring input of ``kind``, else None.

    Only customer models qualify (product models rank many categories from text). Exact types
    are required: a subclass may change ``predict_proba``.
    """
    if kind != "customer" or _module_root(model) not in ("sklearn", "storeml"):
        return None
    from storeml.models.base import (
        FeatureStep,
        PackagedModel,
        SklearnPredictor,
        SklearnTransformer,
    )

    if type(model) is PackagedModel:
        features = model.features
        if model.kind != kind or type(features) is not FeatureStep or features.kind != kind:
            return None
        if any(get_feature(kind, name).dtype != "float" for name in features.names):
            return None
        stages: list[tuple[np.ndarray, np.ndarray]] = []
        preprocess = model.preprocess
        if preprocess is not None:
            if type(preprocess) is not SklearnTransformer:
                return None
            stage = _scaler(preprocess.estimator)
            if stage is None:
                return None
            stages.append(stage)
        predictor = model.predictor
        if type(predictor) is not SklearnPredictor:
            return None
        found = _classifier(predictor.estimator)
        if found is None:
            return None
        inner, coef, intercept, flip = found
        names = list(features.names)

        def packaged_proba(x: np.ndarray) -> np.ndarray:
            frame: Any = pd.DataFrame(x, columns=names)
            if preprocess is not None:
                frame = preprocess.transform(frame)
            proba = np.asarray(predictor.predict_proba(frame))
            return proba[:, list(predictor.classes_).index(1)]

        key = ("features", kind, *names)
        return _head(key, [*stages, *inner], coef, intercept, flip, packaged_proba)

    found = _classifier(model)
    if found is None:
        return None
    stages, coef, intercept, flip = found
    if len(coef) != len(base_columns(kind)):
        return None

    def own_proba(x: np.ndarray) -> np.ndarray:
        proba = np.asarray(model.predict_proba(x))
        return proba[:, list(model.classes_).index(1)]

    return _head(("base",), stages, coef, intercept, flip, own_proba)


def _head(
    key: InputKey,
    stages: list[tuple[np.ndarray, np.ndarray]],
    coef: np.ndarray,
    intercept: float,
    flip: bool,
    own_proba: Callable[[np.ndarray], np.ndarray],
) -> AffineHead | None:
    composed = _compose(stages, len(coef))
    if composed is None or (key[0] == "features" and len(key[2:]) != len(coef)):
        return None
    shift, scale = composed
    return AffineHead(key, shift, scale, coef, intercept, flip, own_proba)


# --- the table ----------------------------------------------------------------------------------
class TableBuilder:
    """Collects the affine heads of a bundle's models; :meth:`write` saves the table.

    ``add`` returns whether the model is linear (and passed the check); the final table holds
    only models of the input most of them share.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._stores: dict[InputKey, list[tuple[str, _Row]]] = {}
        self._global: tuple[InputKey, _Row] | None = None
        self.checked = 0
        self.rejected = 0

    def _row(self, model: Any) -> tuple[InputKey, _Row] | None:
        head = affine_head(model, self.kind)
        if head is None:
            return None
        self.checked += 1
        if not head.check():
            self.rejected += 1
            return None
        # keep the arrays only: the head's own_proba holds the model, which may be one of 100k
        return head.input, (head.shift, head.scale, head.coef, head.intercept, head.flip)

    def add(self, store_id: str, model: Any) -> bool:
        found = self._row(model)
        if found is not None:
            self._stores.setdefault(found[0], []).append((store_id, found[1]))
        return found is not None

    def add_global(self, model: Any) -> bool:
        self._global = self._row(model)
        return self._global is not None

    def write(self, folder: Path) -> dict[str, Any] | None:
        """Write ``linear.npz`` into ``folder``; returns its ``index.json`` entry, or None."""
        counts = {key: len(rows) for key, rows in self._stores.items()}
        if self._global is not None:
            counts[self._global[0]] = counts.get(self._global[0], 0) + 1
        if not counts:
            return None
        key = max(counts, key=lambda k: counts[k])
        stores = self._stores.get(key, [])
        rows = [row for _, row in stores]
        has_global = self._global is not None and self._global[0] == key
        if has_global and self._global is not None:
            rows.append(self._global[1])
        np.savez(
            folder / LINEAR_FILE,
            stores=np.asarray([store for store, _ in stores], dtype=str),
            shift=np.stack([row[0] for row in rows]),
            scale=np.stack([row[1] for row in rows]),
            coef=np.stack([row[2] for row in rows]),
            intercept=np.asarray([row[3] for row in rows], dtype="float64"),
            flip=np.asarray([row[4] for row in rows], dtype=bool),
        )
        return {
            "file": LINEAR_FILE,
            "input": _input_entry(key),
            "stores": len(stores),
            "global": has_global,
            "other_input_stores": sum(len(v) for k, v in self._stores.items() if k != key),
            "failed_check": self.rejected,
        }


def _input_entry(key: InputKey) -> dict[str, Any]:
    if key[0] == "base":
        return {"type": "base"}
    return {"type": "features", "kind": key[1], "names": list(key[2:])}


class LinearTable:
    """A loaded ``linear.npz``: store ``i`` is row ``i``, the global model (if any) the last row.

    :meth:`positions` maps store ids to rows, :meth:`inputs` turns the base matrix into the
    table's input, :meth:`propensity` scores rows of many stores at once.
    """

    def __init__(
        self,
        stores: np.ndarray,
        shift: np.ndarray,
        scale: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
        flip: np.ndarray,
        *,
        has_global: bool,
        input_entry: dict[str, Any],
    ) -> None:
        self.stores = stores
        self.shift, self.scale, self.coef = shift, scale, coef
        self.intercept, self.flip = intercept, flip
        self.n_stores = len(stores)
        self.global_row: int | None = self.n_stores if has_global else None
        self.input = input_entry
        self._index = pd.Index(stores.astype(object), dtype=object)
        if len(intercept) != self.n_stores + int(has_global):
            raise ModelError(
                f"linear table has {len(intercept)} rows for {self.n_stores} stores"
                f"{' and the global model' if has_global else ''}; rewrite the bundle"
            )

    @classmethod
    def load(cls, path: Path, entry: dict[str, Any]) -> LinearTable:
        """Read the table written by :class:`TableBuilder` (``entry``: its ``index.json`` entry)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            return cls(
                arrays["stores"],
                arrays["shift"],
                arrays["scale"],
                arrays["coef"],
                arrays["intercept"],
                arrays["flip"],
                has_global=bool(entry.get("global")),
                input_entry=dict(entry.get("input") or {"type": "base"}),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"cannot read the linear table {path}: {exc}; the bundle is incomplete (delete"
                " 'linear' from its index.json to score every store with its own file)"
            ) from exc

    @property
    def nbytes(self) -> int:
        arrays = (self.stores, self.shift, self.scale, self.coef, self.intercept, self.flip)
        return sum(a.nbytes for a in arrays)

    def positions(self, store_ids: np.ndarray) -> np.ndarray:
        """Row of each store id in the table; -1 for stores not on it (and nulls)."""
        return np.asarray(self._index.get_indexer(np.asarray(store_ids, dtype=object)))

    def inputs(self, base: np.ndarray) -> np.ndarray:
        """The table's input for rows of the base matrix (the feature step applied once)."""
        if self.input.get("type", "base") == "base":
            return base
        names = list(self.input["names"])
        return compute_features(self.input["kind"], names, base).to_numpy(dtype="float64")

    def propensity(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Probability of class 1 of input ``x[i]`` under table row ``rows[i]``, all i at once."""
        return _probability(
            x,
            self.shift[rows],
            self.scale[rows],
            self.coef[rows],
            self.intercept[rows],
            self.flip[rows],
        )
