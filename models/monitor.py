"""Monitoring as a model: a :class:`Monitor` is fit on reference rows and predicts drift alerts.

State. Every monitored column has fixed bins from the *global* reference
(:mod:`storeml.models.drift`); a (store, window) is one flat int64 vector, the bins of every column
concatenated (``layout`` maps a column to its slice). :meth:`Monitor.counts` turns live rows into
such vectors, grouped by store; they merge by ``+``. A store with at least ``min_store_rows``
reference rows keeps its own reference histogram; any other store is compared with the global one.

Test and alert rule. For each (store, column), :meth:`Monitor.predict` runs the 2 x k G-test of
homogeneity (live window vs reference counts) and alerts when::

    p_value * calibration < alpha  and  js >= min_js  and  rows >= min_rows

with ``alpha = alert_budget_per_day / (windows_per_day * tests_per_window)``,
``tests_per_window = max(1, stores in the reference) * len(columns)``, so that a day of windows
without drift raises ``alert_budget_per_day`` false alerts in expectation.

Learned calibration (genomic-control style). The chi-square distribution of G is an asymptotic
approximation; with sparse bins and small windows, G's null p-values run small (too many alerts).
``fit`` measures this on null bootstrap windows drawn from the reference itself: for each column,
group (``store`` references, ``global`` reference) and live size on a grid (``min_rows * 2**i``),
it draws a reference replicate (multinomial, the reference's own size) and a live window
(multinomial, the grid size) from each reference histogram, ``bootstrap`` times, and computes their
G-test p-values. Drawing both sides replicates the noise of the reference sample as well as the
window's. With ``q`` the 1% quantile of those p-values, ``ratio = clip(q / 0.01, 1e-3, 1)`` and the
stored correction is ``calibration = 1 / ratio`` (1 when the chi-square p-values are already valid,
up to 1000). ``predict`` interpolates it in log(live rows) between grid sizes (constant beyond).

The calibration is pooled over stores (at most ``calibration_stores`` sampled store references
per column, ``bootstrap`` draws each; the global reference gets ``bootstrap * 50`` draws): a per-store
1% quantile of 200 draws would rest on two draws. Pooled, it is exact on average over stores at
the 1% level, and extrapolated from there to the much smaller ``alpha``; ``min_js`` bounds what
the extrapolation can cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.base import Model
from storeml.models.drift import (
    ColumnSpec,
    bin_index,
    categorical_spec,
    g_test,
    js_distance,
    numeric_spec,
    psi,
)

__all__ = ["Monitor", "PREDICT_COLUMNS", "SECONDS_PER_DAY"]

SECONDS_PER_DAY = 86_400.0
#: Columns of :meth:`Monitor.predict`'s frame, in order.
PREDICT_COLUMNS = [
    "store_id",
    "column",
    "rows",
    "js",
    "psi",
    "g",
    "dof",
    "p_value",
    "alpha",
    "calibration",
    "alert",
    "reference",
]
_GRID = 6  # live sizes min_rows * 2**0 .. 2**5
_QUANTILE = 0.01


class Monitor(Model):
    """Drift monitor of one kind ("orders", "customer", "product"); see the module docstring.

    Attributes after ``fit``: ``columns`` (one :class:`ColumnSpec` each), ``layout`` (column ->
    slice of the flat vector), ``n_bins``, ``store_ids`` (stores with their own reference, sorted),
    ``store_counts`` (int64, one row each), ``global_counts``, ``reference_stores`` (distinct
    stores in the reference), ``alpha``, ``calibration`` (float, group x column x size) on
    ``calibration_sizes``.
    """

    def __init__(
        self,
        kind: str,
        numeric: Sequence[str],
        categorical: Sequence[str] = (),
        *,
        window_seconds: float = 300.0,
        alert_budget_per_day: float = 1.0,
        min_js: float = 0.1,
        min_rows: int = 20,
        min_store_rows: int = 200,
        bins: int = 10,
        top_categories: int = 20,
        bootstrap: int = 200,
        seed: int = 0,
        calibration_stores: int = 100,
    ) -> None:
        if window_seconds <= 0 or alert_budget_per_day <= 0:
            raise ModelError(
                f"window_seconds ({window_seconds}) and alert_budget_per_day"
                f" ({alert_budget_per_day}) must be positive"
            )
        if not list(numeric) + list(categorical):
            raise ModelError(f"monitor {kind!r} names no column to monitor")
        self.kind = kind
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.window_seconds = float(window_seconds)
        self.alert_budget_per_day = float(alert_budget_per_day)
        self.min_js = float(min_js)
        self.min_rows = int(min_rows)
        self.min_store_rows = int(min_store_rows)
        self.bins = int(bins)
        self.top_categories = int(top_categories)
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.calibration_stores = int(calibration_stores)
        self.version = "0"
        self.model_name = ""
        #: Columns asked for but left out of the fit (see monitor_reference.fit_monitor).
        self.skipped: tuple[str, ...] = ()
        self.columns: tuple[ColumnSpec, ...] = ()
        self.layout: dict[str, slice] = {}
        self.n_bins = 0
        self.store_ids = np.array([], dtype=object)
        self.store_counts = np.zeros((0, 0), dtype="int64")
        self.global_counts = np.zeros(0, dtype="int64")
        self.reference_stores = 0
        self.alpha = float("nan")
        self.calibration_sizes = self.min_rows * 2.0 ** np.arange(_GRID)
        self.calibration = np.ones((2, 0, _GRID))
        self._index: dict[str, int] = {}

    # --- layout and counting -------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self.columns:
            raise ModelError(f"monitor {self.kind!r} is not fitted; call fit on reference rows")

    def _check_frame(self, X: pd.DataFrame, what: str) -> None:
        needed = ["store_id", *self.numeric, *self.categorical]
        missing = [c for c in needed if c not in X.columns]
        if missing:
            raise ModelError(
                f"monitor {self.kind!r}: {what} lacks columns {missing}; it needs {needed}"
            )

    def empty_counts(self) -> np.ndarray:
        """A zero state vector (``n_bins`` int64)."""
        self._check_fitted()
        return np.zeros(self.n_bins, dtype="int64")

    def _bins(self, X: pd.DataFrame) -> np.ndarray:
        """(rows, columns) flat bin indices (each column offset by its layout start)."""
        out = np.empty((len(X), len(self.columns)), dtype="int64")
        for j, spec in enumerate(self.columns):
            out[:, j] = bin_index(spec, X[spec.name]) + self.layout[spec.name].start
        return out

    def counts(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Live rows -> (store ids [groups] object array, int64 counts [groups, n_bins]).

        Groups are the distinct ``store_id`` values in order of first appearance; every row adds
        one count to one bin of every column.
        """
        self._check_fitted()
        self._check_frame(X, "the live frame")
        codes, stores = pd.factorize(X["store_id"], sort=False)
        if (codes < 0).any():
            raise ModelError(f"monitor {self.kind!r}: rows without a store_id cannot be counted")
        flat = codes[:, None].astype("int64") * self.n_bins + self._bins(X)
        size = len(stores) * self.n_bins
        counts = np.bincount(flat.ravel(), minlength=size).astype("int64")
        return np.asarray(stores, dtype=object), counts.reshape(len(stores), self.n_bins)

    def reference_counts(self, store_id: str) -> np.ndarray:
        """The store's own reference counts, or the global ones when it has none (a copy)."""
        self._check_fitted()
        row = self._index.get(store_id)
        if row is None:
            return self.global_counts.copy()
        return self.store_counts[row].copy()

    # --- fitting -------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        """Learn bins, per-store and global reference counts, alpha and the calibration."""
        self._check_frame(X, "the reference frame")
        if not len(X):
            raise ModelError(f"monitor {self.kind!r}: the reference frame has no rows")
        specs = [numeric_spec(c, X[c], self.bins) for c in self.numeric]
        specs += [categorical_spec(c, X[c], self.top_categories) for c in self.categorical]
        self.columns = tuple(specs)
        start = 0
        self.layout = {}
        for spec in self.columns:
            self.layout[spec.name] = slice(start, start + spec.bins)
            start += spec.bins
        self.n_bins = start
        stores, counts = self.counts(X)
        rows = counts[:, self.layout[self.columns[0].name]].sum(axis=1)
        own = rows >= self.min_store_rows
        order = np.argsort(stores[own].astype(str), kind="stable")
        self.store_ids = stores[own][order]
        self.store_counts = counts[own][order]
        self.global_counts = counts.sum(axis=0)
        self._index = {str(s): i for i, s in enumerate(self.store_ids)}
        self.reference_stores = len(stores)
        windows_per_day = SECONDS_PER_DAY / self.window_seconds
        tests = max(1, self.reference_stores) * len(self.columns)
        self.alpha = self.alert_budget_per_day / (windows_per_day * tests)
        self.calibration_sizes = self.min_rows * 2.0 ** np.arange(_GRID)
        self.calibration = self._calibrate(np.random.default_rng(self.seed))
        return self

    def _calibrate(self, rng: np.random.Generator) -> np.ndarray:
        """(2 groups, columns, sizes) p-value corrections >= 1 (see the module docstring)."""
        out = np.ones((2, len(self.columns), _GRID))
        n_stores = len(self.store_ids)
        chosen = np.arange(n_stores)
        if n_stores > self.calibration_stores:
            chosen = np.sort(rng.choice(n_stores, self.calibration_stores, replace=False))
        groups = [(0, self.store_counts[chosen], self.bootstrap)]
        groups.append((1, self.global_counts[None, :], self.bootstrap * 50))
        for group, counts, draws in groups:
            if not len(counts) or draws < 1:
                continue
            for j, spec in enumerate(self.columns):
                out[group, j] = self._column_correction(
                    counts[:, self.layout[spec.name]], draws, rng
                )
        return out

    def _column_correction(
        self, counts: np.ndarray, draws: int, rng: np.random.Generator
    ) -> np.ndarray:
        sizes = counts.sum(axis=1)
        keep = sizes > 0
        counts, sizes = counts[keep], sizes[keep]
        if not len(counts):
            return np.ones(_GRID)
        shares = np.repeat(counts / sizes[:, None], draws, axis=0)
        shares /= shares.sum(axis=1, keepdims=True)  # multinomial wants sums <= 1 exactly
        reference = rng.multinomial(np.repeat(sizes, draws), shares)
        out = np.ones(_GRID)
        for i, size in enumerate(self.calibration_sizes):
            live = rng.multinomial(int(size), shares)
            _, _, p = g_test(reference, live)
            ratio = np.clip(np.quantile(p, _QUANTILE) / _QUANTILE, 1e-3, 1.0)
            out[i] = 1.0 / ratio
        return out

    # --- evaluation ----------------------------------------------------------------------
    def _live_matrix(self, values: Sequence[Any]) -> np.ndarray:
        if not len(values):
            return np.zeros((0, self.n_bins), dtype="int64")
        try:
            live = np.stack([np.asarray(v, dtype="int64") for v in values])
        except ValueError as exc:
            raise ModelError(
                f"monitor {self.kind!r}: counts must be vectors of {self.n_bins} ints: {exc}"
            ) from exc
        if live.shape[1] != self.n_bins:
            raise ModelError(
                f"monitor {self.kind!r}: counts have {live.shape[1]} bins, the monitor has"
                f" {self.n_bins}; were they counted by another monitor version?"
            )
        return live

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """One row per (store, column) of ``X`` (columns ``store_id``, ``counts``).

        Columns: :data:`PREDICT_COLUMNS`; ``reference`` is "store" or "global", ``calibration``
        the interpolated correction, ``alert`` the rule of the module docstring.
        """
        self._check_fitted()
        for column in ("store_id", "counts"):
            if column not in X.columns:
                raise ModelError(f"monitor {self.kind!r}: predict needs a {column!r} column")
        stores = X["store_id"].to_numpy(dtype=object)
        live = self._live_matrix(list(X["counts"]))
        rows_of = np.array([self._index.get(str(s), -1) for s in stores], dtype="int64")
        own = rows_of >= 0
        ref = np.empty_like(live)
        ref[own] = self.store_counts[rows_of[own]]
        ref[~own] = self.global_counts
        group = np.where(own, 0, 1)
        frames = []
        for j, spec in enumerate(self.columns):
            part = self.layout[spec.name]
            r, lv = ref[:, part], live[:, part]
            n = lv.sum(axis=1)
            g, dof, p = g_test(r, lv)
            js = js_distance(r, lv)
            size = np.log(np.maximum(n, 1))
            grid = np.log(self.calibration_sizes)
            correction = np.where(
                group == 0,
                np.interp(size, grid, self.calibration[0, j]),
                np.interp(size, grid, self.calibration[1, j]),
            )
            alert = (p * correction < self.alpha) & (js >= self.min_js) & (n >= self.min_rows)
            frames.append(
                pd.DataFrame(
                    {
                        "store_id": stores,
                        "column": spec.name,
                        "rows": n.astype("int64"),
                        "js": js,
                        "psi": psi(r, lv),
                        "g": g,
                        "dof": dof,
                        "p_value": p,
                        "alpha": self.alpha,
                        "calibration": correction,
                        "alert": np.asarray(alert, dtype=bool),
                        "reference": np.where(own, "store", "global").astype(object),
                        "_order": np.arange(len(stores)) * len(self.columns) + j,
                    }
                )
            )
        if not frames or not len(stores):
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in PREDICT_COLUMNS})
        out = pd.concat(frames, ignore_index=True).sort_values("_order", kind="stable")
        return out.drop(columns="_order").reset_index(drop=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index = {str(s): i for i, s in enumerate(self.store_ids)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_index", None)  # rebuilt on load: smaller files
        return state

    def __repr__(self) -> str:
        return (
            f"Monitor({self.kind!r}, columns={[c.name for c in self.columns]!r},"
            f" stores={len(self.store_ids)}, alpha={self.alpha:.3g}, version={self.version!r})"
        )
