"""Mergeable accumulators of live model performance, and the metrics read from them (pure).

:class:`BinaryCounts` keeps, per score bin, how many labelled predictions were positive and
negative, plus the sum of squared errors: bounded state (``SCORE_BINS`` bins) that merges by adding,
whatever the number of events. A score ``s`` in [0, 1] falls in bin ``min(int(s * SCORE_BINS),
SCORE_BINS - 1)`` (scores outside [0, 1] are clipped into it). Metrics read from the bins:

* AUC: a positive in a higher bin than a negative counts 1, in the same bin 1/2; this equals the
  exact AUC of the scores rounded down to their bin's lower edge;
* precision and recall at the served threshold: a bin counts as predicted positive when its lower
  edge ``i / SCORE_BINS`` is ``>= threshold`` (exact for thresholds on the bin grid);
* Brier score: exact (from the running sum, not the bins).

:class:`TopKCounts` counts hit@1 and hit@5 of product category predictions. Metrics that are
undefined (no rows, one class only, nothing predicted positive) are None, not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "SCORE_BINS",
    "score_bins",
    "BinaryCounts",
    "binary_metrics",
    "TopKCounts",
    "topk_metrics",
]

SCORE_BINS = 1000


def score_bins(scores: Any) -> np.ndarray:
    """The bin of every score (int64)."""
    s = np.clip(np.asarray(scores, dtype="float64"), 0.0, 1.0)
    return np.minimum((s * SCORE_BINS).astype("int64"), SCORE_BINS - 1)


class BinaryCounts:
    """Positives and negatives per score bin, Brier sum and row count; merge with :meth:`merge`."""

    __slots__ = ("pos", "neg", "brier_sum", "n")

    def __init__(self) -> None:
        self.pos = np.zeros(SCORE_BINS, dtype="int64")
        self.neg = np.zeros(SCORE_BINS, dtype="int64")
        self.brier_sum = 0.0
        self.n = 0

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Count labelled predictions; rows whose score is None/NaN are skipped (unscored)."""
        s = np.asarray(scores, dtype="float64")
        y = np.asarray(labels, dtype="int64")
        if s.shape != y.shape:
            raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} labels")
        keep = ~np.isnan(s)
        s, y = s[keep], y[keep]
        if not len(s):
            return
        bins = score_bins(s)
        self.pos += np.bincount(bins[y == 1], minlength=SCORE_BINS)
        self.neg += np.bincount(bins[y != 1], minlength=SCORE_BINS)
        self.brier_sum += float(np.sum((np.clip(s, 0.0, 1.0) - (y == 1)) ** 2))
        self.n += len(s)

    def merge(self, other: BinaryCounts) -> BinaryCounts:
        """A new accumulator holding both."""
        out = BinaryCounts()
        out.pos = self.pos + other.pos
        out.neg = self.neg + other.neg
        out.brier_sum = self.brier_sum + other.brier_sum
        out.n = self.n + other.n
        return out

    def to_list(self) -> list[Any]:
        """``[n, brier_sum, [[bin, positives, negatives], ...]]`` over non-empty bins (JSON-able)."""
        used = np.flatnonzero(self.pos + self.neg)
        rows = [[int(i), int(self.pos[i]), int(self.neg[i])] for i in used]
        return [int(self.n), float(self.brier_sum), rows]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> BinaryCounts:
        """Inverse of :meth:`to_list`."""
        out = cls()
        n, brier_sum, rows = values
        out.n = int(n)
        out.brier_sum = float(brier_sum)
        for i, pos, neg in rows:
            out.pos[int(i)] = int(pos)
            out.neg[int(i)] = int(neg)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BinaryCounts):
            return NotImplemented
        return (
            self.n == other.n
            and self.brier_sum == other.brier_sum
            and bool(np.array_equal(self.pos, other.pos))
            and bool(np.array_equal(self.neg, other.neg))
        )

    def __repr__(self) -> str:
        return f"BinaryCounts(n={self.n}, positives={int(self.pos.sum())})"


def binary_metrics(counts: BinaryCounts, threshold: float) -> dict[str, Any]:
    """``n``, ``positives`` (ints), ``auc``, ``brier``, ``precision``, ``recall`` (float or None)."""
    pos = counts.pos.astype("float64")
    neg = counts.neg.astype("float64")
    n_pos, n_neg = pos.sum(), neg.sum()
    auc = None
    if n_pos > 0 and n_neg > 0:
        below = np.cumsum(neg) - neg  # negatives in strictly lower bins
        auc = float(np.sum(pos * (below + neg / 2)) / (n_pos * n_neg))
    predicted = np.arange(SCORE_BINS) / SCORE_BINS >= threshold
    tp = float(pos[predicted].sum())
    fp = float(neg[predicted].sum())
    return {
        "n": int(counts.n),
        "positives": int(n_pos),
        "auc": auc,
        "brier": counts.brier_sum / counts.n if counts.n else None,
        "precision": tp / (tp + fp) if tp + fp > 0 else None,
        "recall": tp / n_pos if n_pos > 0 else None,
    }


class TopKCounts:
    """Rows, hits at rank 1 and hits in the top 5 of category predictions."""

    __slots__ = ("n", "hit1", "hit5")

    def __init__(self, n: int = 0, hit1: int = 0, hit5: int = 0) -> None:
        self.n = n
        self.hit1 = hit1
        self.hit5 = hit5

    def add(self, predicted: Sequence[Sequence[str]], actual: Sequence[str]) -> None:
        """Count each ``actual`` category against its ranked ``predicted`` list (best first)."""
        if len(predicted) != len(actual):
            raise ValueError(f"{len(predicted)} predictions but {len(actual)} categories")
        for ranked, truth in zip(predicted, actual, strict=True):
            top = list(ranked)[:5]
            self.n += 1
            self.hit1 += int(bool(top) and top[0] == truth)
            self.hit5 += int(truth in top)

    def merge(self, other: TopKCounts) -> TopKCounts:
        return TopKCounts(self.n + other.n, self.hit1 + other.hit1, self.hit5 + other.hit5)

    def to_list(self) -> list[int]:
        return [self.n, self.hit1, self.hit5]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> TopKCounts:
        n, hit1, hit5 = values
        return cls(int(n), int(hit1), int(hit5))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopKCounts):
            return NotImplemented
        return self.to_list() == other.to_list()

    def __repr__(self) -> str:
        return f"TopKCounts(n={self.n}, hit1={self.hit1}, hit5={self.hit5})"


def topk_metrics(counts: TopKCounts) -> dict[str, Any]:
    """``n`` and the hit@1 / hit@5 rates (None without rows)."""
    n = counts.n
    return {
        "n": n,
        "hit1": counts.hit1 / n if n else None,
        "hit5": counts.hit5 / n if n else None,
    }
