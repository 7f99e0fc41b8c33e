"""The drift Monitor: false alarms within the alert budget, calibration, injected drift, state.

Reference and live rows come from the same per-store distributions (order values log-normal,
line counts, category and channel mixes, a few missing values) unless a test shifts one store.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, poisson

from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.errors import ModelError
from storeml.models.base import Model
from storeml.models.events import ORDER, facts_from_events
from storeml.models.monitor import PREDICT_COLUMNS, Monitor
from storeml.models.monitor_reference import (
    MONITOR_COLUMNS,
    customer_reference,
    customer_rows,
    fit_monitor,
    make_monitor,
    order_reference,
    order_rows,
    product_reference,
    product_rows,
)

NUMERIC = ["order_value_minor", "line_count"]
CATEGORICAL = ["channel", "category"]
CATEGORIES = np.array([f"cat{i}" for i in range(8)], dtype=object)
CHANNELS = np.array(["web", "app", "store", "marketplace"], dtype=object)
STORES = 300
WINDOWS = 40


def _pick(rng: np.random.Generator, shares: np.ndarray, names: np.ndarray) -> np.ndarray:
    u = rng.random(len(shares))
    return names[(u[:, None] > np.cumsum(shares, axis=1)).sum(axis=1).clip(0, len(names) - 1)]


class Stores:
    """Per-store distributions; ``rows`` draws ``n[i]`` orders for store i."""

    def __init__(self, stores: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.mu = rng.normal(8, 0.5, stores)
        self.sigma = rng.uniform(0.3, 1.0, stores)
        self.lines = rng.uniform(0.5, 3.0, stores)
        self.categories = rng.dirichlet(np.ones(8), stores)
        self.channels = rng.dirichlet(np.ones(4) * 2, stores)
        self.missing = rng.uniform(0, 0.05, stores)
        self.ids = np.array([f"s{i:04d}" for i in range(stores)], dtype=object)

    def rows(self, rng: np.random.Generator, n: np.ndarray, scale: np.ndarray | None = None):
        store = np.repeat(np.arange(len(n)), n)
        value = np.exp(rng.normal(self.mu[store], self.sigma[store])).round()
        if scale is not None:
            value = value * scale[store]
        value[rng.random(len(store)) < self.missing[store]] = np.nan
        return pd.DataFrame(
            {
                "store_id": self.ids[store],
                "order_value_minor": value,
                "line_count": 1 + rng.poisson(self.lines[store]),
                "channel": _pick(rng, self.channels[store], CHANNELS),
                "category": _pick(rng, self.categories[store], CATEGORIES),
            }
        )


@pytest.fixture(scope="module")
def world() -> tuple[Stores, pd.DataFrame]:
    stores = Stores(STORES, seed=1)
    rng = np.random.default_rng(2)
    return stores, stores.rows(rng, rng.integers(200, 2000, STORES))


def _windows(stores: Stores, monitor: Monitor, seed: int) -> pd.DataFrame:
    """WINDOWS null windows of every store (20-200 rows each), evaluated by ``monitor``."""
    rng = np.random.default_rng(seed)
    rate = rng.integers(20, 200, STORES)
    out = []
    for window in range(WINDOWS):
        ids, counts = monitor.counts(stores.rows(rng, rng.poisson(rate)))
        result = monitor.predict(pd.DataFrame({"store_id": ids, "counts": list(counts)}))
        out.append(result.assign(window=window))
    return pd.concat(out, ignore_index=True)


def test_false_alarms_stay_within_the_budget(world) -> None:
    stores, reference = world
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(reference)
    assert monitor.alpha == pytest.approx(1.0 / (288 * STORES * 4))
    results = _windows(stores, monitor, seed=3)
    tests = int((results["rows"] >= monitor.min_rows).sum())
    alerts = int(results["alert"].sum())
    expected = monitor.alpha * tests
    bound = poisson.ppf(0.999, expected)
    print(f"false alarms: {alerts} in {tests} tests, expected {expected:.3f}, bound {bound:.0f}")
    assert tests > 0.95 * WINDOWS * STORES * 4
    assert alerts <= bound


def test_calibration_gives_the_promised_rate_at_a_large_alpha(world) -> None:
    stores, reference = world
    budget = 0.01 * 288 * STORES * 4  # alpha = 0.01
    monitor = Monitor("orders", NUMERIC, CATEGORICAL, alert_budget_per_day=budget, min_js=0.0)
    monitor.fit(reference)
    assert monitor.alpha == pytest.approx(0.01)
    assert (monitor.calibration >= 1).all() and (monitor.calibration <= 1000).all()
    results = _windows(stores, monitor, seed=4)
    tested = results[results["rows"] >= monitor.min_rows]
    tests, alerts = len(tested), int(tested["alert"].sum())
    raw = int((tested["p_value"] < monitor.alpha).sum())
    low, high = binom.ppf(0.0005, tests, 0.01), binom.ppf(0.9995, tests, 0.01)
    print(
        f"alerts at alpha 0.01: {alerts} of {tests} (interval {low:.0f}-{high:.0f});"
        f" uncalibrated chi-square p-values would give {raw}"
    )
    assert low <= alerts <= high
    assert (tested["alert"] == (tested["p_value"] * tested["calibration"] < 0.01)).all()


def test_a_scaled_store_alerts_in_one_window_and_no_other(world) -> None:
    stores, reference = world
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(reference)
    rng = np.random.default_rng(5)
    scale = np.ones(STORES)
    scale[7] = 3.0
    ids, counts = monitor.counts(stores.rows(rng, np.full(STORES, 60), scale=scale))
    result = monitor.predict(pd.DataFrame({"store_id": ids, "counts": list(counts)}))
    alerting = result[result["alert"]]
    assert set(alerting["store_id"]) == {stores.ids[7]}
    assert set(alerting["column"]) == {"order_value_minor"}
    row = alerting.iloc[0]
    assert row["reference"] == "store" and row["rows"] == 60 and row["js"] >= monitor.min_js


def test_small_stores_fall_back_to_the_global_reference(world) -> None:
    stores, reference = world
    small = reference[reference["store_id"] == stores.ids[0]].head(50).assign(store_id="tiny")
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(pd.concat([reference, small]))
    assert "tiny" not in set(monitor.store_ids) and monitor.reference_stores == STORES + 1
    assert (monitor.reference_counts("tiny") == monitor.global_counts).all()
    assert (monitor.reference_counts("never-seen") == monitor.global_counts).all()
    ids, counts = monitor.counts(small)
    result = monitor.predict(pd.DataFrame({"store_id": ids, "counts": list(counts)}))
    assert list(result.columns) == PREDICT_COLUMNS
    assert set(result["reference"]) == {"global"} and len(result) == 4


def test_counts_are_per_store_and_merge_by_addition(world) -> None:
    _, reference = world
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(reference)
    part = reference.sample(3000, random_state=0)
    ids, counts = monitor.counts(part)
    assert counts.dtype == np.int64 and counts.shape == (len(ids), monitor.n_bins)
    assert list(ids) == list(pd.unique(part["store_id"]))
    for name, cut in monitor.layout.items():
        sizes = part.groupby("store_id", sort=False).size().reindex(ids).to_numpy()
        assert (counts[:, cut].sum(axis=1) == sizes).all(), name
    a, b = part.iloc[:1000], part.iloc[1000:]
    merged: dict[str, np.ndarray] = {}
    for frame in (a, b):
        for store, row in zip(*monitor.counts(frame), strict=True):
            merged[store] = merged.get(store, monitor.empty_counts()) + row
    for store, row in zip(ids, counts, strict=True):
        assert (merged[store] == row).all()
    assert monitor.empty_counts().sum() == 0 and len(monitor.empty_counts()) == monitor.n_bins


def test_bad_input_names_the_problem(world) -> None:
    _, reference = world
    with pytest.raises(ModelError, match="not fitted"):
        Monitor("orders", NUMERIC).counts(reference)
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(reference.head(500))
    with pytest.raises(ModelError, match="bins"):
        monitor.predict(pd.DataFrame({"store_id": ["s"], "counts": [[1, 2, 3]]}))
    with pytest.raises(ModelError, match="lacks columns"):
        monitor.counts(reference[["store_id", "line_count"]])
    empty = monitor.predict(pd.DataFrame({"store_id": [], "counts": []}))
    assert list(empty.columns) == PREDICT_COLUMNS and not len(empty)


def test_save_load_round_trip_and_small_pickle(world, tmp_path: Path) -> None:
    _, reference = world
    monitor = Monitor("orders", NUMERIC, CATEGORICAL).fit(reference)
    monitor.version, monitor.model_name = "7", "orders-model"
    path = Model.save(monitor, tmp_path / "monitor.joblib")
    loaded = Monitor.load(path)
    assert (loaded.version, loaded.model_name, loaded.columns) == (
        "7",
        "orders-model",
        monitor.columns,
    )
    ids, counts = monitor.counts(reference.head(2000))
    frame = pd.DataFrame({"store_id": ids, "counts": list(counts)})
    pd.testing.assert_frame_equal(monitor.predict(frame), loaded.predict(frame))
    size = len(pickle.dumps(monitor))
    print(f"pickle: {size} bytes for {len(monitor.store_ids)} stores x {monitor.n_bins} bins")
    assert size < monitor.store_counts.nbytes + 50_000
    assert path.stat().st_size < monitor.store_counts.nbytes + 50_000


def test_fitting_ten_thousand_stores_takes_seconds() -> None:
    rng = np.random.default_rng(0)
    stores, per_store = 10_000, 60
    n = stores * per_store
    frame = pd.DataFrame({"store_id": np.repeat([f"s{i}" for i in range(stores)], per_store)})
    for i in range(4):
        frame[f"x{i}"] = rng.lognormal(8, 1, n)
        frame[f"c{i}"] = np.array([f"k{j}" for j in range(30)], dtype=object)[
            rng.integers(0, 30, n)
        ]
    start = time.perf_counter()
    monitor = Monitor(
        "t", [f"x{i}" for i in range(4)], [f"c{i}" for i in range(4)], min_store_rows=50
    )
    monitor.fit(frame)
    took = time.perf_counter() - start
    print(f"fit: 10,000 stores x 8 columns in {took:.1f} s")
    assert len(monitor.store_ids) == stores and took < 30


# --- reference rows ----------------------------------------------------------------------
def _synthetic(events: int = 2000):
    out = []
    for offset, e in enumerate(generate(GeneratorConfig(stores=5, events=events, seed=4))):
        kind = ORDER if e.topic_kind == "orders" else "product"
        out.append((kind, e.record, e.topic_kind, 0, offset))
    return out


def test_order_reference_and_order_rows_agree() -> None:
    events = _synthetic()
    orders = [record for kind, record, *_ in events if kind == ORDER]
    facts = facts_from_events(events)
    cutoff = max(r["event_time"] for r in orders) + 1
    history = order_reference(facts, cutoff).sort_values(["store_id", "event_time"], kind="stable")
    live = order_rows(orders).sort_values(["store_id", "event_time"], kind="stable")
    assert len(history) == len(orders)
    assert history["channel"].isna().all()  # the facts table keeps no channel
    columns = ["store_id", "event_time", "order_value_minor", "line_count", "category"]
    pd.testing.assert_frame_equal(
        history[columns].reset_index(drop=True), live[columns].reset_index(drop=True)
    )
    first = orders[0]
    spend: dict[str, int] = {}
    for line in first["lines"]:
        if line.get("category") is not None:
            spend[line["category"]] = (
                spend.get(line["category"], 0) + line["quantity"] * line["unit_price_minor"]
            )
    row = order_rows([first]).iloc[0]
    assert row["order_value_minor"] == sum(
        line["quantity"] * line["unit_price_minor"] for line in first["lines"]
    )
    assert row["line_count"] == len(first["lines"]) and row["channel"] == first["channel"]
    best = min(spend, key=lambda c: (-spend[c], c)) if spend else None
    assert row["category"] == best
    monitor = fit_monitor("orders", history)
    assert monitor.skipped == ("channel",) and [c.name for c in monitor.columns] == [
        "order_value_minor",
        "line_count",
        "category",
    ]
    monitor.counts(live)  # live rows have the columns the monitor needs


def test_customer_and_product_rows_equal_their_references() -> None:
    profiles = pd.DataFrame(
        {
            "store_id": ["a", "a", "b"],
            "order_count": [1, 3, 0],
            "total_spend_minor": [100, 900, 0],
            "avg_order_value_minor": [100.0, 300.0, np.nan],
            "days_since_last_order": [2.5, 0.0, np.nan],
            "product_views": [4, 0, 7],
            "score": [0.25, 0.75, None],
        }
    )
    records = profiles.rename(columns={"score": "propensity"}).astype(object)
    records = records.where(records.notna(), None).to_dict("records")
    pd.testing.assert_frame_equal(customer_reference(profiles, "score"), customer_rows(records))
    assert customer_rows(records)["propensity"].isna().tolist() == [False, False, True]

    predicted = [
        {"category": "toys", "probability": 0.2, "rank": 1},
        {"category": "books", "probability": 0.7, "rank": 0},
    ]
    products = [
        {"store_id": "a", "category": None, "predicted_categories": predicted},
        {"store_id": "a", "category": "shoes", "predicted_categories": []},
        {"store_id": "b", "category": None, "predicted_categories": []},
    ]
    rows = product_rows(products)
    assert rows.to_dict("records") == [
        {"store_id": "a", "top_category": "books", "top_probability": 0.7}
    ]
    pd.testing.assert_frame_equal(product_reference(pd.DataFrame(products)), rows)


def test_make_monitor_reads_settings_like_objects() -> None:
    class Settings:
        monitor_window_seconds = 60.0
        monitor_alert_budget_per_day = 2.0
        monitor_min_js = 0.2
        monitor_min_rows = 30

    monitor = make_monitor("customer", Settings(), model_name="m", version="3", min_rows=40)
    assert (monitor.window_seconds, monitor.alert_budget_per_day, monitor.min_js) == (
        60.0,
        2.0,
        0.2,
    )
    assert monitor.min_rows == 40 and (monitor.model_name, monitor.version) == ("m", "3")
    assert monitor.numeric == MONITOR_COLUMNS["customer"][0]
    with pytest.raises(ModelError, match="unknown monitor kind"):
        make_monitor("nope")
