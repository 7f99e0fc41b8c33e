"""Fixed-bin histograms and drift statistics against direct scipy/numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency

from storeml.models.drift import (
    ColumnSpec,
    bin_index,
    categorical_spec,
    g_test,
    js_distance,
    numeric_spec,
    psi,
)


def test_numeric_bins_layout_and_missing() -> None:
    spec = numeric_spec("x", np.arange(100.0), bins=4)
    assert spec.edges == (24.0, 49.0, 74.0)  # values of the reference
    assert spec.bins == 5 and len(spec.labels) == 5
    values = [-1.0, 23.9, 24, 49, 1e9, np.inf, None, float("nan"), "abc"]
    assert bin_index(spec, values).tolist() == [0, 0, 1, 2, 3, 3, 4, 4, 4]


def test_numeric_spec_collapses_repeated_quantiles() -> None:
    # few distinct values: one bin per value (quantile edges would merge 2 and 3)
    spec = numeric_spec("lines", [1] * 80 + [2] * 15 + [3] * 5, bins=10)
    assert spec.edges == (2.0, 3.0)
    assert bin_index(spec, [0, 1, 2, 3, 7]).tolist() == [0, 0, 1, 2, 2]
    spec = numeric_spec("ties", [0.0] * 50 + list(np.arange(1.0, 51.0)), bins=4)
    assert spec.edges == (25.0,)  # 0 fills half: the 25% and 50% edges fall on the minimum
    assert numeric_spec("const", [5.0] * 10).edges == ()
    assert numeric_spec("empty", [None, np.nan]).bins == 2


def test_categorical_top_other_missing() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] + [None]
    spec = categorical_spec("c", values, top=2)
    assert spec.categories == ("a", "b")  # b and c tie: the smaller name wins
    assert spec.bins == 4
    assert bin_index(spec, ["b", "a", "zz", None, np.nan]).tolist() == [1, 0, 2, 3, 3]
    # non-strings are labelled by str(): 1 and "1" are the same category
    spec = categorical_spec("n", [1, 1, "1", 2])
    assert spec.categories == ("1", "2")
    assert bin_index(spec, [1, "2", 3]).tolist() == [0, 1, 2]


def test_js_psi_against_scipy_and_formula() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 50, size=(20, 8))
    live = rng.integers(0, 50, size=(20, 8))
    ref[:, 3] = 0
    live[:, 3] = 0  # empty in both: dropped
    js = js_distance(ref, live)
    for i in range(20):
        assert js[i] == pytest.approx(jensenshannon(ref[i], live[i], base=2), abs=1e-12)
        assert js_distance(ref[i], live[i]) == pytest.approx(js[i])
        p, q = ref[i] / ref[i].sum(), live[i] / live[i].sum()
        p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
        used = (ref[i] + live[i]) > 0
        expected = np.sum(((q - p) * np.log(q / p))[used])
        assert psi(ref[i], live[i]) == pytest.approx(expected)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([3, 1], [6, 2]) == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(js_distance([1, 2], [0, 0]))


def test_g_test_equals_scipy_log_likelihood_test() -> None:
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 30, size=(50, 6))
    live = rng.integers(0, 30, size=(50, 6))
    live[:, 0] = 0
    ref[:, 0] = 0
    g, dof, p = g_test(ref, live)
    for i in range(50):
        table = np.vstack([ref[i], live[i]])
        table = table[:, table.sum(axis=0) > 0]
        stat, pv, df, _ = chi2_contingency(table, correction=False, lambda_="log-likelihood")
        assert g[i] == pytest.approx(stat)
        assert dof[i] == df
        assert p[i] == pytest.approx(pv)
    assert g_test([5, 5], [0, 0]) == (0.0, 0, 1.0)
    assert g_test([5, 0], [7, 0]) == (0.0, 0, 1.0)


def test_column_spec_is_frozen_and_hashable() -> None:
    spec = ColumnSpec("x", "numeric", edges=(1.0,))
    assert hash(spec) == hash(ColumnSpec("x", "numeric", edges=(1.0,)))
    with pytest.raises(AttributeError):
        spec.name = "y"  # type: ignore[misc]
