"""The small-frame feature path (online predict) equals the pandas one, bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from storeml.models.features import (
    SMALL_FRAME_ROWS,
    _small_customer_features,
    customer_feature_matrix,
    customer_features,
)
from tests.test_serving_api import customer


def _frame(rng: random.Random, rows: int) -> pd.DataFrame:
    records = [customer(f"s{rng.randint(0, 3)}", rng.randint(0, 10**6)) for _ in range(rows)]
    for r in records:
        if rng.random() < 0.2:
            r["total_spend_minor"] = rng.choice([None, -5, 0, 10**15])
        if rng.random() < 0.2:
            r["avg_order_value_minor"] = rng.choice([None, -0.0, float("nan"), 3.3e9])
        if rng.random() < 0.2:
            r["first_order_time"] = None
        if rng.random() < 0.1:
            r["top_categories"] = None
        if rng.random() < 0.1:
            r["days_since_last_order"] = rng.choice([None, 1e-9, 400.5, "12.5"])
        if rng.random() < 0.05:
            r["product_views"] = rng.choice(["7", "x", None])
    return pd.DataFrame.from_records(records)


def test_small_frames_get_the_same_features_as_pandas() -> None:
    rng = random.Random(7)
    for _ in range(1_500):
        frame = _frame(rng, rng.randint(1, SMALL_FRAME_ROWS))
        want = customer_features(frame).to_numpy(dtype="float64")
        got = _small_customer_features(frame)
        assert got.shape == want.shape
        assert np.array_equal(got, want)
        assert np.array_equal(np.signbit(got), np.signbit(want))  # -0.0 kept as pandas keeps it
        assert np.array_equal(customer_feature_matrix(frame), want)


def test_missing_columns_and_empty_frames() -> None:
    bare = pd.DataFrame({"store_id": ["s1", "s2"]})
    assert np.array_equal(
        _small_customer_features(bare), customer_features(bare).to_numpy(dtype="float64")
    )
    empty = _frame(random.Random(1), 1).iloc[0:0]
    assert customer_feature_matrix(empty).shape == (0, 9)
