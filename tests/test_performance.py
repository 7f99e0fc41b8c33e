"""Live performance accumulators equal direct numpy/pandas/scikit-learn computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score

from storeml.models.performance import (
    SCORE_BINS,
    BinaryCounts,
    TopKCounts,
    binary_metrics,
    score_bins,
    topk_metrics,
)


def _data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.clip(rng.beta(2, 5, n) + 0.25 * labels, 0, 1)
    scores[:20] = 1.0  # the top bin holds 1.0
    scores[20:40] = 0.0
    return scores, labels


def test_binary_metrics_equal_direct_computations() -> None:
    scores, labels = _data()
    counts = BinaryCounts()
    for part in np.array_split(np.arange(len(scores)), 7):  # added in pieces
        counts.add(scores[part], labels[part])
    m = binary_metrics(counts, threshold=0.5)
    floored = np.minimum(np.floor(scores * SCORE_BINS), SCORE_BINS - 1) / SCORE_BINS
    exact_binned = roc_auc_score(labels, floored)
    exact = roc_auc_score(labels, scores)
    print(f"auc binned {m['auc']:.6f}, on floored scores {exact_binned:.6f}, exact {exact:.6f}")
    assert m["auc"] == pytest.approx(exact_binned, abs=1e-12)
    assert abs(m["auc"] - exact) < 0.01
    assert m["brier"] == pytest.approx(brier_score_loss(labels, scores))
    predicted = (scores >= 0.5).astype(int)  # 0.5 is on the bin grid: exact
    assert m["precision"] == pytest.approx(precision_score(labels, predicted))
    assert m["recall"] == pytest.approx(recall_score(labels, predicted))
    assert (m["n"], m["positives"]) == (len(scores), int(labels.sum()))
    frame = pd.DataFrame({"s": scores, "y": labels})
    assert m["brier"] == pytest.approx(((frame.s - frame.y) ** 2).mean())


def test_threshold_off_the_grid_uses_bin_lower_edges() -> None:
    scores, labels = _data(seed=1)
    counts = BinaryCounts()
    counts.add(scores, labels)
    m = binary_metrics(counts, threshold=0.3337)
    predicted = score_bins(scores) / SCORE_BINS >= 0.3337
    tp = int((predicted & (labels == 1)).sum())
    assert m["precision"] == pytest.approx(tp / predicted.sum())
    assert m["recall"] == pytest.approx(tp / labels.sum())


def test_merge_and_list_round_trip() -> None:
    scores, labels = _data(seed=2)
    a, b, whole = BinaryCounts(), BinaryCounts(), BinaryCounts()
    a.add(scores[:1000], labels[:1000])
    b.add(scores[1000:], labels[1000:])
    whole.add(scores, labels)
    merged = a.merge(b)
    assert (merged.pos == whole.pos).all() and (merged.neg == whole.neg).all()
    assert merged.n == whole.n and merged.brier_sum == pytest.approx(whole.brier_sum)
    assert BinaryCounts.from_list(json.loads(json.dumps(whole.to_list()))) == whole


def test_unscored_rows_and_undefined_metrics() -> None:
    counts = BinaryCounts()
    counts.add(np.array([np.nan, 0.9, 0.8]), np.array([1, 1, 1]))
    m = binary_metrics(counts, 0.5)
    assert m["n"] == 2 and m["auc"] is None and m["precision"] == 1.0 and m["recall"] == 1.0
    empty = binary_metrics(BinaryCounts(), 0.5)
    assert empty["brier"] is None and empty["auc"] is None and empty["precision"] is None
    with pytest.raises(ValueError):
        counts.add(np.array([0.1]), np.array([1, 0]))


def test_topk_equals_a_direct_count() -> None:
    rng = np.random.default_rng(3)
    names = [f"c{i}" for i in range(12)]
    predicted = [list(rng.permutation(names)[:5]) for _ in range(500)]
    actual = [str(rng.choice(names)) for _ in range(500)]
    counts = TopKCounts()
    counts.add(predicted[:200], actual[:200])
    rest = TopKCounts()
    rest.add(predicted[200:], actual[200:])
    total = TopKCounts.from_list(counts.merge(rest).to_list())
    m = topk_metrics(total)
    frame = pd.DataFrame({"p": predicted, "a": actual})
    assert m["n"] == 500
    assert m["hit1"] == pytest.approx((frame.p.str[0] == frame.a).mean())
    assert m["hit5"] == pytest.approx(
        np.mean([a in p for p, a in zip(predicted, actual, strict=True)])
    )
    assert topk_metrics(TopKCounts()) == {"n": 0, "hit1": None, "hit5": None}
