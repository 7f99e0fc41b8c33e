"""Training sets from history and per-store model fitting: pure pandas/scikit-learn, no MLflow.

Training sets are built with the stream's own code: :func:`customer_training_set` folds the facts
before a cutoff with :func:`storeml.models.profiles.fold` / ``apply_delta`` /
``customer_profiles`` (exactly what the stream publishes) and labels a customer 1 when they order
again at or after the cutoff; :func:`product_training_set` takes categorised products' latest
title/description. Features come from :mod:`storeml.models.features`, shared with scoring.

A model package (:mod:`storeml.models.package`) drives the same fit through
:func:`package_training_set` and :func:`fit_package_models`: each store's model is the package's
:class:`~storeml.models.base.PackagedModel`, fitted on exactly the input the stream passes to
``predict_proba`` (:func:`storeml.models.features.base_array`).

:func:`fit_store_models` fits one small estimator per store with enough examples of at least two
classes (a stratified per-store train/test split, seeded per store so a store's split does not
depend on which other stores are trained) and a global fallback on every store's training rows.
Stores without a model of their own are scored by the global model. Models are kept small (a
scaled logistic regression; a bounded TF-IDF vocabulary and naive Bayes), so a thousand stores
fit in seconds.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.features import base_array, customer_features, product_text
from storeml.models.profiles import (
    CUSTOMER_KEY,
    ProfileState,
    apply_delta,
    customer_profiles,
    fold,
    product_profiles,
)

if TYPE_CHECKING:
    from storeml.models.package import ModelPackage

__all__ = [
    "LABEL",
    "FitResult",
    "customer_training_set",
    "product_training_set",
    "make_customer_estimator",
    "make_product_estimator",
    "customer_metrics",
    "product_metrics",
    "fit_store_models",
    "fit_customer_models",
    "fit_product_models",
    "package_training_set",
    "fit_package_models",
    "summarise_metrics",
    "compact",
]

#: Label column of the training sets.
LABEL = "label"

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


class FitResult(NamedTuple):
    """What :func:`fit_store_models` returns.

    ``metrics``: one row per store (``store_id``, ``examples``, ``train``, ``test``, ``classes``,
    ``scope`` serving it, ``reason`` it has no model of its own, the serving model's test metrics
    and the global model's as ``global_<metric>``). ``splits``: one row per training row
    (``row`` = the frame's index label, ``store_id``, ``split`` "train"/"test").
    """

    models: dict[str, Any]
    global_model: Any | None
    metrics: pd.DataFrame
    splits: pd.DataFrame


# --- training sets ---------------------------------------------------------------------------
def customer_training_set(
    facts: pd.DataFrame, cutoff_ms: int, *, horizon_ms: int | None = None
) -> pd.DataFrame:
    """Customer profiles as of ``cutoff_ms`` with ``label`` = 1 if they order again afterwards.

    Profiles fold every fact with ``event_time < cutoff_ms`` (the stream's code, one batch);
    "again" means an order with ``cutoff_ms <= event_time`` (``< cutoff_ms + horizon_ms`` when a
    horizon is given). Customers first seen after the cutoff are not in the set.
    """
    before = facts[facts["event_time"] < cutoff_ms]
    state = ProfileState()
    delta = fold(state, before)
    state = apply_delta(state, delta)
    profiles = customer_profiles(state, delta, before)
    after = facts[(facts["kind"] == "order_line") & (facts["event_time"] >= cutoff_ms)]
    if horizon_ms is not None:
        after = after[after["event_time"] < cutoff_ms + horizon_ms]
    again = pd.MultiIndex.from_frame(after[CUSTOMER_KEY].drop_duplicates())
    keys = pd.MultiIndex.from_frame(profiles[CUSTOMER_KEY])
    profiles[LABEL] = keys.isin(again).astype("int64")
    return profiles


def product_training_set(facts: pd.DataFrame, cutoff_ms: int | None = None) -> pd.DataFrame:
    """Categorised products (as of ``cutoff_ms``, default all facts) with ``label`` = category.

    Uses each product's latest title/description/category as the profile fold chooses them;
    products with neither title nor description are left out.
    """
    history = facts if cutoff_ms is None else facts[facts["event_time"] < cutoff_ms]
    state = ProfileState()
    delta = fold(state, history)
    state = apply_delta(state, delta)
    profiles = product_profiles(state, delta, history)
    profiles = profiles[profiles["category"].notna()].copy()
    profiles = profiles[product_text(profiles) != ""].reset_index(drop=True)
    profiles[LABEL] = profiles["category"].astype(str)
    return profiles


# --- estimators and metrics ------------------------------------------------------------------
def make_customer_estimator() -> Any:
    """Scaled, class-balanced logistic regression (propensity = probability of class 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        # newton-cholesky: ~10x faster than lbfgs on a few features and a few hundred rows
        LogisticRegression(class_weight="balanced", solver="newton-cholesky", max_iter=100),
    )


def make_product_estimator(*, scope: str = "store") -> Any:
    """TF-IDF over title and description, then a classifier with ``predict_proba``.

    Per store: a bounded vocabulary (1,000 terms) and multinomial naive Bayes, which fits in about
    a millisecond (a logistic regression took ~100 ms per store, too slow for thousands of
    stores). Global (one fit over every store): a 20,000-term vocabulary and a logistic
    regression, which ranks better and is fitted once.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    if scope == "store":
        return make_pipeline(
            TfidfVectorizer(sublinear_tf=True, max_features=1_000, dtype=np.float32),
            MultinomialNB(alpha=0.1),
        )
    return make_pipeline(
        TfidfVectorizer(sublinear_tf=True, max_features=20_000, dtype=np.float32),
        LogisticRegression(C=10.0, max_iter=200),
    )


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties get average ranks); NaN with one class."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def customer_metrics(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """``auc`` (NaN with one class in ``y``), ``accuracy`` at 0.5, ``positive_rate``."""
    positive = proba[:, list(classes).index(1)] if 1 in list(classes) else np.zeros(len(y))
    y = np.asarray(y).astype(int)
    auc = _auc(y, positive)
    return {
        "auc": auc,
        "accuracy": float(np.mean((positive >= 0.5).astype(int) == y)) if len(y) else float("nan"),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
    }


def product_metrics(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """``accuracy`` (top 1) and ``top5_accuracy``."""
    if len(y) == 0:
        return {"accuracy": float("nan"), "top5_accuracy": float("nan")}
    order = np.argsort(-proba, axis=1, kind="stable")[:, :5]
    ranked = np.asarray(classes, dtype=object)[order]
    y = np.asarray(y, dtype=object)
    return {
        "accuracy": float(np.mean(ranked[:, 0] == y)),
        "top5_accuracy": float(np.mean((ranked == y[:, None]).any(axis=1))),
    }


# --- fitting ---------------------------------------------------------------------------------
def _split(y: np.ndarray, test_size: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean test mask, stratified: ``floor(n_class * test_size)`` rows of each class."""
    test = np.zeros(len(y), dtype=bool)
    for cls in pd.unique(y):
        where = np.flatnonzero(y == cls)
        take = int(np.floor(len(where) * test_size))
        if take:
            test[rng.permutation(where)[:take]] = True
    return test


def compact(estimator: Any) -> Any:
    """Drop what a fitted model keeps only for refitting, to keep store files small.

    Naive Bayes' ``feature_count_`` (only ``partial_fit`` reads it) is dropped and its log
    probabilities stored as float32; a vectorizer's ``stop_words_`` (terms cut by the vocabulary
    bound, kept only for inspection) is dropped. This halves a store's product model.
    """
    inner = getattr(estimator, "inner_estimators", None)
    if callable(inner):  # a PackagedModel: compact the scikit-learn objects inside
        for item in inner():
            compact(item)
        return estimator
    steps = [step for _, step in getattr(estimator, "steps", [])] or [estimator]
    for step in steps:
        if hasattr(step, "stop_words_"):
            del step.stop_words_
        if hasattr(step, "feature_count_") and hasattr(step, "feature_log_prob_"):
            del step.feature_count_
            step.feature_log_prob_ = step.feature_log_prob_.astype(np.float32)
    return estimator


def _fit(estimator: Any, x: Any, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of tiny stores are expected
        estimator.fit(x, y)
    return compact(estimator)


def _reason(y_train: np.ndarray, min_examples: int, min_class_examples: int) -> str:
    if len(y_train) < min_examples:
        return f"too few training examples ({len(y_train)} < {min_examples})"
    counts = pd.Series(y_train).value_counts()
    if int((counts >= min_class_examples).sum()) < 2:
        return f"fewer than 2 classes with at least {min_class_examples} training examples"
    return ""


def fit_store_models(
    frame: pd.DataFrame,
    store_col: str = "store_id",
    *,
    features: Callable[[pd.DataFrame], np.ndarray],
    make_estimator: Callable[[], Any],
    metric: Metric,
    make_global: Callable[[], Any] | None = None,
    label: str = LABEL,
    min_examples: int = 20,
    min_class_examples: int = 3,
    test_size: float = 0.25,
    seed: int = 0,
) -> FitResult:
    """Fit one estimator per store with enough data, and a global one on all training rows.

    A store gets its own model when its training split has ``min_examples`` rows and at least
    two classes with ``min_class_examples`` rows each. ``features(frame)`` must return an array
    indexable by row positions (numeric matrix or object array of texts). The global model is
    None when all training rows together have fewer than two classes.
    """
    if label not in frame or store_col not in frame:
        raise ModelError(f"training frame needs columns {store_col!r} and {label!r}")
    rows = frame.index.to_numpy()
    frame = frame.reset_index(drop=True)
    x = features(frame)
    y = frame[label].to_numpy()
    stores = frame[store_col].astype(str).to_numpy()
    groups = pd.Series(stores).groupby(stores, sort=True).indices
    is_test = np.zeros(len(frame), dtype=bool)
    for store, where in groups.items():
        rng = np.random.default_rng([seed, zlib.crc32(str(store).encode())])
        is_test[where] = _split(y[where], test_size, rng)
    train_rows = np.flatnonzero(~is_test)

    global_model = None
    if len(pd.unique(y[train_rows])) >= 2:
        global_model = _fit((make_global or make_estimator)(), x[train_rows], y[train_rows])
    global_proba = None
    test_rows = np.flatnonzero(is_test)
    if global_model is not None and len(test_rows):
        global_proba = np.zeros((len(frame), len(global_model.classes_)))
        global_proba[test_rows] = global_model.predict_proba(x[test_rows])

    models: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for store, where in groups.items():
        train, test = where[~is_test[where]], where[is_test[where]]
        reason = _reason(y[train], min_examples, min_class_examples)
        record: dict[str, Any] = {
            "store_id": store,
            "examples": len(where),
            "train": len(train),
            "test": len(test),
            "classes": len(pd.unique(y[where])),
            "reason": reason,
        }
        global_scores: dict[str, float] = {}
        if global_model is not None and global_proba is not None and len(test):
            global_scores = metric(y[test], global_proba[test], global_model.classes_)
        if not reason:
            model = _fit(make_estimator(), x[train], y[train])
            models[store] = model
            record["scope"] = "store"
            scores = (
                metric(y[test], model.predict_proba(x[test]), model.classes_) if len(test) else {}
            )
        else:
            record["scope"] = "global" if global_model is not None else "none"
            scores = global_scores
        record.update(scores)
        record.update({f"global_{k}": v for k, v in global_scores.items()})
        records.append(record)
    metrics = pd.DataFrame.from_records(records)
    splits = pd.DataFrame(
        {"row": rows, "store_id": stores, "split": np.where(is_test, "test", "train")}
    )
    return FitResult(models, global_model, metrics, splits)


def fit_customer_models(training_set: pd.DataFrame, **options: Any) -> FitResult:
    """:func:`fit_store_models` for the repeat-purchase propensity (labels 0/1)."""
    return fit_store_models(
        training_set,
        features=lambda f: customer_features(f).to_numpy(dtype="float64"),
        make_estimator=make_customer_estimator,
        metric=customer_metrics,
        **options,
    )


def fit_product_models(training_set: pd.DataFrame, **options: Any) -> FitResult:
    """:func:`fit_store_models` for product categories from title and description."""
    return fit_store_models(
        training_set,
        features=lambda f: product_text(f).to_numpy(dtype=object),
        make_estimator=make_product_estimator,
        make_global=lambda: make_product_estimator(scope="global"),
        metric=product_metrics,
        **options,
    )


def package_training_set(
    package: ModelPackage, facts: pd.DataFrame, cutoff_ms: int
) -> pd.DataFrame:
    """The training set of ``package``'s kind (customer labels use ``model.training.horizon_days``)."""
    if package.kind == "customer":
        days = package.config.model.training.horizon_days
        horizon = None if days is None else int(days * 86_400_000)
        return customer_training_set(facts, cutoff_ms, horizon_ms=horizon)
    return product_training_set(facts, cutoff_ms)


def fit_package_models(
    package: ModelPackage, training_set: pd.DataFrame, **options: Any
) -> FitResult:
    """:func:`fit_store_models` with the package's model, features and training options.

    ``options`` override ``model.training`` of the package (``min_examples``, ``seed``...).
    Every store model and the global model is a fresh ``package.build_model(scope)``.
    """
    training = package.config.model.training
    settings: dict[str, Any] = {
        "min_examples": training.min_examples,
        "min_class_examples": training.min_class_examples,
        "test_size": training.test_size,
        "seed": training.seed,
    }
    settings.update(options)
    kind = package.kind
    return fit_store_models(
        training_set,
        features=lambda f: base_array(kind, f),
        make_estimator=lambda: package.build_model("store"),
        make_global=lambda: package.build_model("global"),
        metric=customer_metrics if kind == "customer" else product_metrics,
        **settings,
    )


def summarise_metrics(metrics: pd.DataFrame) -> dict[str, float]:
    """Aggregate metrics of a fit: store counts, and test-size-weighted means of each metric."""
    out: dict[str, float] = {
        "stores": float(len(metrics)),
        "stores_with_model": float((metrics["scope"] == "store").sum()) if len(metrics) else 0.0,
        "examples": float(metrics["examples"].sum()) if len(metrics) else 0.0,
    }
    fixed = {"store_id", "examples", "train", "test", "classes", "reason", "scope"}
    for column in metrics.columns:
        if column in fixed:
            continue
        values = pd.to_numeric(metrics[column], errors="coerce")
        weights = metrics["test"].where(values.notna(), 0).astype("float64")
        if weights.sum() > 0:
            out[f"mean_{column}"] = float((values.fillna(0) * weights).sum() / weights.sum())
    return out
