"""Fixed-bin histograms and the drift statistics computed on them (pure numpy, no I/O).

A monitored column is described by a :class:`ColumnSpec` learned once from reference (training)
data; :func:`bin_index` maps live values to its bins, so a window's state is a vector of counts
that merges by ``+``. Bin layout, counted from 0:

* numeric, ``k`` inner edges ``e_0 < ... < e_{k-1}``: bin ``i`` holds ``e_{i-1} <= v < e_i``
  (bin 0 is everything below ``e_0``, bin ``k`` everything at or above ``e_{k-1}``, infinities
  included), bin ``k + 1`` holds missing values (None, NaN, non-numbers): ``bins = k + 2``;
* categorical, ``c`` categories: bin ``i`` is ``categories[i]``, bin ``c`` any other value,
  bin ``c + 1`` missing (None, NaN): ``bins = c + 2``.

The statistics take two count vectors (reference, live), or two 2-D arrays whose rows are stores,
and then return one value per row. Bins empty in both are dropped first. A side with no counts
gives NaN distances and a G-test of ``(0.0, 0, 1.0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import chi2

__all__ = [
    "ColumnSpec",
    "numeric_spec",
    "categorical_spec",
    "bin_index",
    "js_distance",
    "psi",
    "g_test",
]


@dataclass(frozen=True)
class ColumnSpec:
    """The bins of one monitored column (see the module docstring for the layout)."""

    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def bins(self) -> int:
        """Number of bins, the missing bin included."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        return len(self.categories) + 2

    @property
    def labels(self) -> list[str]:
        """A human label per bin (for plots and messages)."""
        if self.kind == "numeric":
            if not self.edges:
                return ["all", "missing"]
            e = [f"{x:g}" for x in self.edges]
            inner = [f"[{a}, {b})" for a, b in zip(e[:-1], e[1:], strict=True)]
            return [f"< {e[0]}", *inner, f">= {e[-1]}", "missing"]
        return [*self.categories, "other", "missing"]


def _as_float(values: Any) -> np.ndarray:
    """Values as float64; None, NA and non-numbers become NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype("float64", copy=False)
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    series = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _factorize(values: Any) -> tuple[np.ndarray, list[str]]:
    """Codes (-1 = missing) and the distinct values as strings (non-strings via ``str``).

    Factorizing first keeps the cost of labels per distinct value, not per row (pandas' string
    columns stay in their own storage).
    """
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return np.asarray(codes, dtype="int64"), [str(u) for u in uniques]


def numeric_spec(name: str, values: Any, bins: int = 10) -> ColumnSpec:
    """A numeric column with edges at the reference's quantiles ``1/bins ... (bins-1)/bins``.

    Edges are values of the reference (``inverted_cdf`` quantiles), never one at its minimum.
    Repeated quantiles (discrete columns) collapse; a column with at most ``bins`` distinct
    values gets one bin per value instead. Missing and infinite values do not move the edges.
    """
    v = _as_float(values)
    v = v[np.isfinite(v)]
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not len(v) or bins == 1:
        return ColumnSpec(name, "numeric")
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf"))
    edges = edges[edges > v.min()]  # an edge at the minimum would leave bin 0 empty
    if len(edges) < bins - 1:  # ties collapsed quantiles: maybe few distinct values
        distinct = np.unique(v)
        if len(distinct) <= bins:
            edges = distinct[1:]  # one bin per value
    return ColumnSpec(name, "numeric", edges=tuple(float(x) for x in edges))


def categorical_spec(name: str, values: Any, top: int = 20) -> ColumnSpec:
    """A categorical column whose categories are the reference's ``top`` most frequent values.

    Ties in frequency are broken by the value, so the same reference gives the same spec.
    """
    codes, uniques = _factorize(values)
    n = np.bincount(codes[codes >= 0], minlength=len(uniques))
    frame = pd.DataFrame({"value": pd.Series(uniques, dtype=object), "n": n})
    frame = frame.groupby("value", sort=False)["n"].sum().reset_index()  # 1 and "1" are one label
    frame = frame.sort_values(["n", "value"], ascending=[False, True], kind="stable")
    categories = tuple(str(x) for x in frame["value"].head(top))
    return ColumnSpec(name, "categorical", categories=categories)


def bin_index(spec: ColumnSpec, values: Any) -> np.ndarray:
    """The bin of every value (int64 array, same length as ``values``)."""
    if spec.kind == "numeric":
        v = _as_float(values)
        edges = np.asarray(spec.edges, dtype="float64")
        out = np.searchsorted(edges, v, side="right").astype("int64")
        out[np.isnan(v)] = len(edges) + 1
        return out
    codes, uniques = _factorize(values)
    index = pd.Index(list(spec.categories), dtype=object)
    of_unique = index.get_indexer(pd.Index(uniques, dtype=object)).astype("int64")
    of_unique[of_unique < 0] = len(spec.categories)
    of_unique = np.append(of_unique, len(spec.categories) + 1)  # code -1 (missing) -> last
    return of_unique[codes]


def _pair(ref_counts: Any, live_counts: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    ref = np.asarray(ref_counts, dtype="float64")
    live = np.asarray(live_counts, dtype="float64")
    if ref.shape != live.shape:
        raise ValueError(f"reference counts {ref.shape} and live counts {live.shape} differ")
    flat = ref.ndim == 1
    return np.atleast_2d(ref), np.atleast_2d(live), flat


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x * log(y)`` with 0 where ``x == 0``."""
    out = np.zeros_like(x)
    np.multiply(x, np.log(y, where=x > 0, out=np.ones_like(y)), out=out, where=x > 0)
    return out


def _shares(ref: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_ref = ref.sum(axis=1, keepdims=True)
    n_live = live.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ref / n_ref
        q = live / n_live
    empty = (n_ref[:, 0] == 0) | (n_live[:, 0] == 0)
    return p, q, empty


def js_distance(ref_counts: Any, live_counts: Any) -> Any:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two normalised histograms."""
    ref, live, flat = _pair(ref_counts, live_counts)
    p, q, empty = _shares(ref, live)
    p = np.nan_to_num(p)
    q = np.nan_to_num(q)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        div = (_xlogy(p, p / m).sum(axis=1) + _xlogy(q, q / m).sum(axis=1)) / (2 * np.log(2))
    out = np.sqrt(np.clip(div, 0.0, 1.0))
    out[empty] = np.nan
    return float(out[0]) if flat else out


def psi(ref_counts: Any, live_counts: Any, eps: float = 1e-4) -> Any:
    """Population stability index ``sum (q - p) ln(q / p)``, shares clipped below at ``eps``."""
    ref, live, flat = _pair(ref_counts, live_counts)
    p, q, empty = _shares(ref, live)
    used = (ref + live) > 0
    p = np.clip(np.nan_to_num(p), eps, None)
    q = np.clip(np.nan_to_num(q), eps, None)
    out = np.where(used, (q - p) * np.log(q / p), 0.0).sum(axis=1)
    out[empty] = np.nan
    return float(out[0]) if flat else out


def g_test(ref_counts: Any, live_counts: Any) -> Any:
    """G-test of homogeneity of the 2 x k table (reference, live): ``(G, dof, p_value)``.

    ``dof`` = bins used by either side minus 1; p-values from the chi-square distribution
    (``scipy.stats.chi2.sf``). 2-D input gives three arrays, one value per row.
    """
    ref, live, flat = _pair(ref_counts, live_counts)
    column = ref + live
    n_ref = ref.sum(axis=1, keepdims=True)
    n_live = live.sum(axis=1, keepdims=True)
    total = n_ref + n_live
    with np.errstate(divide="ignore", invalid="ignore"):
        e_ref = n_ref * column / total
        e_live = n_live * column / total
        g = 2 * (_xlogy(ref, ref / e_ref) + _xlogy(live, live / e_live)).sum(axis=1)
    valid = (n_ref[:, 0] > 0) & (n_live[:, 0] > 0)
    dof = np.where(valid, (column > 0).sum(axis=1) - 1, 0).astype("int64")
    g = np.where(valid & (dof > 0), np.clip(g, 0.0, None), 0.0)
    p = np.where(dof > 0, chi2.sf(g, np.maximum(dof, 1)), 1.0)
    if flat:
        return float(g[0]), int(dof[0]), float(p[0])
    return g, dof, p
