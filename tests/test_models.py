"""Per-store models: training, the MLflow registry bundle, the per-process cache, and scoring.

MLflow is real (SQLite store and file artifacts of the session, ``mlflow_uris``); model names are
unique per test module/test. Scoring tests use a tiny counting estimator of our own to check that
``predict_proba`` runs once per store, never once per row.
"""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from storeml.connectors.mlflow_registry import (
    ModelHandle,
    get_client,
    register_bundle,
    resolve_alias,
    set_alias,
)
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.models import profiles as P
from storeml.models.events import ORDER, PRODUCT, facts_from_events
from storeml.models.scoring import (
    CUSTOMER_FEATURES,
    customer_features,
    product_text,
    score_customers,
    score_products,
)
from storeml.models.store_models import (
    ModelCache,
    StoreModelBundle,
    get_model_cache,
    store_file_name,
    write_bundle,
)
from storeml.models.training import (
    customer_training_set,
    fit_customer_models,
    fit_product_models,
    product_training_set,
)
from storeml.settings import Settings, load_settings


class CountingEstimator:
    """A fixed-probability estimator that counts its ``predict_proba`` calls (per tag)."""

    calls: ClassVar[Counter[str]] = Counter()
    rows: ClassVar[Counter[str]] = Counter()

    def __init__(self, tag: str, classes: tuple[Any, ...] = (0, 1), first: float = 0.3) -> None:
        self.tag = tag
        self.classes_ = np.asarray(classes, dtype=object if isinstance(classes[0], str) else None)
        self.first = first

    def predict_proba(self, x: Any) -> np.ndarray:
        CountingEstimator.calls[self.tag] += 1
        CountingEstimator.rows[self.tag] += len(x)
        k = len(self.classes_)
        rest = (1.0 - self.first) / (k - 1)
        row = [self.first] + [rest - 0.01 * i for i in range(k - 1)]
        row[-1] += 1.0 - sum(row)
        return np.tile(row, (len(x), 1))


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    CountingEstimator.calls.clear()
    CountingEstimator.rows.clear()


def _facts(stores: int, events: int, seed: int) -> tuple[pd.DataFrame, int]:
    good = [
        e
        for e in generate(GeneratorConfig(stores=stores, events=events, seed=seed))
        if e.malformed is None and e.record is not None
    ]
    facts = facts_from_events(
        (ORDER if e.topic_kind == "orders" else PRODUCT, e.record or {}, f"t-{e.topic_kind}", 0, i)
        for i, e in enumerate(good)
    )
    times = np.sort(facts["event_time"].to_numpy())
    return facts, int(times[int(len(times) * 0.6)])


def _profiles(facts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    state = P.ProfileState()
    delta = P.fold(state, facts)
    state = P.apply_delta(state, delta)
    return P.customer_profiles(state, delta, facts), P.product_profiles(state, delta, facts)


def _customer_rows(stores: dict[str, int]) -> pd.DataFrame:
    """Customer profile rows: ``count`` customers for each store."""
    rows = []
    for store, count in stores.items():
        for i in range(count):
            rows.append(
                {
                    "store_id": store,
                    "customer_id": f"c{i}",
                    "order_count": i % 4,
                    "total_spend_minor": 1000 * (i % 4),
                    "avg_order_value_minor": 1000.0 if i % 4 else np.nan,
                    "first_order_time": 1_000 if i % 4 else None,
                    "last_order_time": 5_000 if i % 4 else None,
                    "last_event_time": 90_000_000,
                    "days_since_last_order": 1.0 if i % 4 else np.nan,
                    "product_views": i,
                    "top_categories": [{"category": "toys", "spend_minor": 10, "share": 0.5}]
                    if i % 2
                    else [],
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def history() -> tuple[pd.DataFrame, int]:
    """Synthetic history of 20 stores (power-law sizes) and a cutoff at 60% of its events."""
    return _facts(stores=20, events=12_000, seed=7)


@pytest.fixture(scope="module")
def model_settings(mlflow_uris: Any, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on the session's MLflow store with model names private to this module."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        home=tmp_path_factory.mktemp("models-home"),
        mlflow_tracking_uri=mlflow_uris.tracking_uri,
        mlflow_artifact_root=mlflow_uris.artifact_root,
        customer_model=f"test-{suffix}-customers",
        product_model=f"test-{suffix}-products",
    )


@pytest.fixture(scope="module")
def trained(model_settings: Settings, history: tuple[pd.DataFrame, int]) -> dict[str, ModelHandle]:
    """One training of both kinds, registered with the alias ``champion``."""
    from storeml.batch.train import train_and_register

    facts, cutoff = history
    return train_and_register(model_settings, facts, cutoff, min_examples=10)


# --- training and the registry ----------------------------------------------------------------
def test_training_registers_versions_with_alias_and_artifacts(
    trained: dict[str, ModelHandle], model_settings: Settings
) -> None:
    import mlflow

    s = model_settings
    assert set(trained) == {"customer", "product"}
    assert trained["customer"].name == s.customer_model
    assert trained["product"].name == s.product_model
    client = get_client(s.tracking_uri, s.registry_uri)
    for handle in trained.values():
        assert handle.version == "1" and handle.alias == "champion"
        version = client.get_model_version_by_alias(handle.name, "champion")
        assert str(version.version) == handle.version
        # the run logged params, aggregate metrics, per-store metrics and the split
        assert handle.run_id is not None
        run = client.get_run(handle.run_id)
        assert run.data.params["kind"] in ("customer", "product")
        assert 0 < run.data.metrics["stores"] <= 20
        assert run.data.metrics["stores_with_model"] >= 1
        listed = {a.path for a in client.list_artifacts(handle.run_id, "metrics")}
        assert listed == {"metrics/store_metrics.csv", "metrics/splits.csv"}
        folder = Path(
            mlflow.artifacts.download_artifacts(
                run_id=handle.run_id, artifact_path="metrics", tracking_uri=s.tracking_uri
            )
        )
        metrics = pd.read_csv(folder / "store_metrics.csv")
        assert {"store_id", "examples", "train", "test", "scope", "reason"} <= set(metrics.columns)
        assert set(metrics["scope"]) <= {"store", "global"}
        assert (metrics["scope"] == "store").sum() == run.data.metrics["stores_with_model"]
        splits = pd.read_csv(folder / "splits.csv")
        assert set(splits["split"]) == {"train", "test"}
        assert len(splits) == metrics["examples"].sum()
    # the customer metrics are real numbers (a learnable signal, not a constant)
    run = client.get_run(str(trained["customer"].run_id))
    assert run.data.metrics["mean_global_auc"] > 0.5
    # nothing landed in ./mlruns: artifacts live under the configured root
    assert trained["customer"].source.startswith(s.artifact_root)


def test_resolve_alias_returns_handle_or_none(
    trained: dict[str, ModelHandle], model_settings: Settings
) -> None:
    s = model_settings
    handle = resolve_alias(s.tracking_uri, s.registry_uri, s.customer_model, "champion")
    assert handle == trained["customer"]
    assert resolve_alias(s.tracking_uri, s.registry_uri, s.customer_model, "no-such-alias") is None
    assert resolve_alias(s.tracking_uri, s.registry_uri, f"missing-{uuid.uuid4().hex}", "x") is None
    assert pickle.loads(pickle.dumps(handle)) == handle


def test_moved_alias_is_seen_by_the_next_resolve(
    trained: dict[str, ModelHandle], mlflow_uris: Any
) -> None:
    tracking = mlflow_uris.tracking_uri
    client = get_client(tracking)
    source = str(
        client.get_model_version(trained["product"].name, trained["product"].version).source
    )
    name = f"test-{uuid.uuid4().hex[:8]}-moving"
    first = register_bundle(tracking, None, name, source, alias="champion")
    second = register_bundle(tracking, None, name, source, alias=None)
    assert (first.version, second.version) == ("1", "2")
    assert resolve_alias(tracking, None, name, "champion").version == "1"  # type: ignore[union-attr]
    set_alias(tracking, None, name, "champion", second.version)
    assert resolve_alias(tracking, None, name, "champion").version == "2"  # type: ignore[union-attr]


def test_pyfunc_loads_and_predicts(
    trained: dict[str, ModelHandle], model_settings: Settings, history: tuple[pd.DataFrame, int]
) -> None:
    import mlflow

    customers, products = _profiles(history[0])
    model = mlflow.pyfunc.load_model(f"models:/{model_settings.customer_model}@champion")
    out = model.predict(customers.head(50))
    assert len(out) == 50
    assert out["propensity"].between(0, 1).all()
    assert set(out["scope"]) <= {"store", "global"}

    model = mlflow.pyfunc.load_model(f"models:/{model_settings.product_model}@champion")
    unlabelled = products[products["category"].isna()].head(20)
    out = model.predict(unlabelled)
    assert len(out) == len(unlabelled) > 0
    assert all(1 <= len(p) <= 5 for p in out["predicted_categories"])


def test_trained_bundle_scores_profiles_end_to_end(
    trained: dict[str, ModelHandle], model_settings: Settings, history: tuple[pd.DataFrame, int]
) -> None:
    s = model_settings
    customers, products = _profiles(history[0])
    cache = ModelCache(cache_size=64)
    handle = resolve_alias(s.tracking_uri, s.registry_uri, s.customer_model, "champion")
    assert handle is not None
    bundle = cache.bundle(handle, s.tracking_uri, s.registry_uri)
    scored = score_customers(customers, bundle, handle)
    scopes = Counter(m["scope"] for m in scored["model"])
    assert scopes["store"] > 0 and scopes["global"] > 0  # small stores fall back to global
    assert all(m["name"] == s.customer_model and m["version"] == "1" for m in scored["model"])
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in scored["propensity"])
    # the bundle's stores are exactly the stores with "store" scope
    by_store = {row["store_id"]: row["model"]["scope"] for _, row in scored.iterrows()}
    assert {st for st, scope in by_store.items() if scope == "store"} == set(bundle.stores)

    product_handle = trained["product"]
    scored = score_products(products, cache.bundle(product_handle), product_handle)
    for category, predicted, ref in zip(
        scored["category"], scored["predicted_categories"], scored["model"], strict=True
    ):
        if category is not None:
            assert predicted == [] and ref["scope"] == "none"
        else:
            assert [p["rank"] for p in predicted] == list(range(len(predicted)))
            probabilities = [p["probability"] for p in predicted]
            assert probabilities == sorted(probabilities, reverse=True)
            assert ref["scope"] in ("store", "global")
    # a second request for the same version is served from memory
    cache.bundle(handle, s.tracking_uri, s.registry_uri)
    stats = cache.stats()
    assert stats["bundle_hits"] == 1 and stats["bundle_misses"] == 2
    assert stats["loads"] >= 1 and stats["load_seconds"] > 0


def test_model_cache_downloads_remote_sources_once_and_keeps_few_versions(
    trained: dict[str, ModelHandle], model_settings: Settings, tmp_path: Path
) -> None:
    s = model_settings
    client = get_client(s.tracking_uri, s.registry_uri)
    handle = trained["customer"]
    # a models:/ source is not a local folder: the cache downloads it (once per host)
    logged = str(client.get_model_version(handle.name, handle.version).source)
    remote = ModelHandle(handle.name, handle.version, None, logged)
    cache = ModelCache(cache_dir=tmp_path / "cache", max_versions=2)
    bundle = cache.bundle(remote, s.tracking_uri, s.registry_uri)
    assert Path(bundle.folder).is_relative_to(tmp_path / "cache")
    assert (
        bundle.stores
        == StoreModelBundle(
            Path(handle.source.removeprefix("file://")) / "artifacts" / "stores"
        ).stores
    )
    again = ModelCache(cache_dir=tmp_path / "cache").bundle(remote, s.tracking_uri)
    assert again.folder == bundle.folder  # another process of the host reuses the download
    assert cache.stats()["downloads"] == 1
    cache.bundle(handle)
    cache.bundle(trained["product"])
    assert cache.stats()["versions"] == 2  # the oldest version was dropped


# --- scoring rules ---------------------------------------------------------------------------
def test_scoring_calls_predict_once_per_store_and_falls_back_to_global(tmp_path: Path) -> None:
    folder = write_bundle(
        tmp_path / "bundle",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={
            "a": CountingEstimator("a", first=0.1),
            "b/with slash": CountingEstimator("b", first=0.2),
        },
        global_model=CountingEstimator("global", first=0.6),
        examples={"a": 50, "b/with slash": 40, "c": 3, "d": 2},
    )
    assert (folder / "stores" / store_file_name("b/with slash")).exists()
    profiles = _customer_rows({"a": 40, "b/with slash": 25, "c": 7, "d": 5, "e": 3})
    profiles = profiles.sample(frac=1.0, random_state=1)  # stores interleaved
    bundle = StoreModelBundle(folder)
    handle = ModelHandle("m", "7", "champion", folder.as_uri())
    scored = score_customers(profiles, bundle, handle)

    assert CountingEstimator.calls == {"a": 1, "b": 1, "global": 1}
    assert CountingEstimator.rows == {"a": 40, "b": 25, "global": 15}
    expected = {
        "a": (0.9, "store"),
        "b/with slash": (0.8, "store"),
        "c": (0.4, "global"),
        "d": (0.4, "global"),
        "e": (0.4, "global"),
    }
    for store, propensity, ref in zip(
        scored["store_id"], scored["propensity"], scored["model"], strict=True
    ):
        assert propensity == pytest.approx(expected[store][0])
        assert ref == {"name": "m", "version": "7", "scope": expected[store][1]}
    assert list(scored.index) == list(profiles.index)  # rows stay in place


def test_no_model_publishes_rows_unscored(tmp_path: Path) -> None:
    profiles = _customer_rows({"a": 3, "b": 2})
    scored = score_customers(profiles, None, None, model_name="storeml-customer-propensity")
    assert scored["propensity"].tolist() == [None] * 5
    assert all(
        m == {"name": "storeml-customer-propensity", "version": None, "scope": "none"}
        for m in scored["model"]
    )
    products = pd.DataFrame(
        {
            "store_id": ["a", "a"],
            "product_id": ["p1", "p2"],
            "title": ["red shoe", "x"],
            "description": [None, None],
            "category": [None, "toys"],
        }
    )
    scored = score_products(products, None, None, model_name="cat")
    assert scored["predicted_categories"].tolist() == [[], []]
    assert {m["scope"] for m in scored["model"]} == {"none"}

    # a bundle without a global model: stores without their own model stay unscored
    folder = write_bundle(
        tmp_path / "b",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"a": CountingEstimator("a")},
        global_model=None,
    )
    scored = score_customers(profiles, StoreModelBundle(folder), None, model_name="m")
    scopes = dict(zip(scored["store_id"], (m["scope"] for m in scored["model"]), strict=True))
    assert scopes == {"a": "store", "b": "none"}
    assert scored.loc[scored["store_id"] == "b", "propensity"].tolist() == [None, None]


def test_product_scoring_ranks_top_five_for_uncategorised_only(tmp_path: Path) -> None:
    classes = ("apparel", "books", "garden", "home", "shoes", "toys", "pet")
    folder = write_bundle(
        tmp_path / "b",
        kind="product",
        features=("title", "description"),
        store_models={"s1": CountingEstimator("s1", classes=classes, first=0.5)},
        global_model=CountingEstimator("global", classes=classes[:3], first=0.5),
    )
    products = pd.DataFrame(
        {
            "store_id": ["s1", "s1", "s1", "s2", "s2"],
            "product_id": ["p1", "p2", "p3", "p4", "p5"],
            "title": ["red shoe", "novel", None, "rake", "spade"],
            "description": ["leather", None, None, "garden", None],
            "category": [None, "books", None, None, None],
        }
    )
    scored = score_products(products, StoreModelBundle(folder), None, model_name="cat")
    predicted = scored["predicted_categories"].tolist()
    assert [len(p) for p in predicted] == [5, 0, 0, 3, 3]  # categorised / no text: not scored
    assert predicted[0][0] == {"category": "apparel", "probability": 0.5, "rank": 0}
    assert [p["rank"] for p in predicted[0]] == [0, 1, 2, 3, 4]
    assert [m["scope"] for m in scored["model"]] == ["store", "none", "none", "global", "global"]
    assert CountingEstimator.calls == {"s1": 1, "global": 1}
    assert product_text(products).tolist() == [
        "red shoe leather",
        "novel",
        "",
        "rake garden",
        "spade",
    ]


def test_lru_bound_holds_with_thousands_of_stores(tmp_path: Path) -> None:
    stores = [f"store-{i:05d}" for i in range(2_500)]
    folder = write_bundle(
        tmp_path / "many",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={s: CountingEstimator(s) for s in stores},
        global_model=CountingEstimator("global"),
    )
    bundle = StoreModelBundle(folder, cache_size=100)
    profiles = _customer_rows(dict.fromkeys(stores, 2))
    scored = score_customers(profiles, bundle, None, model_name="m")
    assert {m["scope"] for m in scored["model"]} == {"store"}
    assert bundle.loaded == 100
    stats = bundle.stats.as_dict()
    assert stats["loads"] == 2_500 and stats["evictions"] == 2_400
    # scoring the most recent stores again is served from memory; an evicted one reloads
    score_customers(_customer_rows({stores[-1]: 2, stores[0]: 2}), bundle, None)
    stats = bundle.stats.as_dict()
    assert stats["hits"] == 1 and stats["loads"] == 2_501 and bundle.loaded == 100


def test_process_cache_is_a_picklable_singleton() -> None:
    cache = get_model_cache()
    assert get_model_cache() is cache
    assert get_model_cache(cache_size=77).cache_size == 77
    # what executors receive is the module-level function, pickled by reference
    assert pickle.loads(pickle.dumps(get_model_cache))() is cache


# --- training sets and fitting ---------------------------------------------------------------
def test_customer_training_set_labels_repeat_purchases() -> None:
    def order(customer: str, t: int, offset: int) -> tuple[str, dict[str, Any], str, int, int]:
        record = {
            "store_id": "s",
            "customer_id": customer,
            "order_id": f"o{offset}",
            "event_time": t,
            "currency": "USD",
            "lines": [
                {"product_id": "p", "category": "toys", "quantity": 1, "unit_price_minor": 500}
            ],
        }
        return ORDER, record, "orders", 0, offset

    facts = facts_from_events(
        [
            order("again", 10, 0),
            order("once", 20, 1),
            order("again", 120, 2),
            order("late", 150, 3),
            order("again", 30, 4),
        ]
    )
    training = customer_training_set(facts, cutoff_ms=100)
    labels = dict(zip(training["customer_id"], training["label"], strict=True))
    assert labels == {"again": 1, "once": 0}
    row = training.set_index("customer_id").loc["again"]
    assert row["order_count"] == 2  # only orders before the cutoff are folded in
    assert list(customer_features(training).columns) == list(CUSTOMER_FEATURES)
    assert not customer_features(training).isna().any().any()


def test_fit_store_models_gives_small_stores_no_model_of_their_own(
    history: tuple[pd.DataFrame, int],
) -> None:
    facts, cutoff = history
    training = customer_training_set(facts, cutoff)
    models, global_model, metrics, splits = fit_customer_models(training, min_examples=10)
    assert global_model is not None
    assert set(models) == set(metrics.loc[metrics["scope"] == "store", "store_id"])
    small = metrics[metrics["scope"] == "global"]
    assert len(small) > 0 and (small["reason"].str.len() > 0).all()
    assert (metrics.loc[metrics["scope"] == "store", "reason"].fillna("") == "").all()
    # a per-store stratified split: every row once, test rows in every store with a model
    assert sorted(splits["row"]) == sorted(training.index)
    with_model = splits[splits["store_id"].isin(models)]
    assert set(with_model.groupby("store_id")["split"].nunique()) == {2}
    # the same inputs give the same split
    again = fit_customer_models(training, min_examples=10).splits
    assert again.equals(splits)

    products = product_training_set(facts, cutoff)
    assert products["label"].notna().all() and (product_text(products) != "").all()
    models, global_model, metrics, _ = fit_product_models(products, min_examples=10)
    assert global_model is not None
    assert metrics["global_top5_accuracy"].dropna().mean() > 0.5
