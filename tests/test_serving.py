"""Served and shadow scoring (models/serving.py): the challenger never touches served fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from storeml.connectors.mlflow_registry import ModelHandle
from storeml.models.features import CUSTOMER_FEATURES
from storeml.models.serving import Scorer, score_kind
from storeml.models.store_models import StoreModelBundle, write_bundle
from tests.test_models import CountingEstimator, _customer_rows


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    CountingEstimator.calls.clear()
    CountingEstimator.rows.clear()


def _scorer(tmp_path: Path, name: str, version: str, first: float) -> Scorer:
    folder = write_bundle(
        tmp_path / f"{name}-{version}",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"a": CountingEstimator(f"{version}-a", first=first)},
        global_model=CountingEstimator(f"{version}-global", first=first / 2),
    )
    return Scorer(StoreModelBundle(folder), ModelHandle(name, version, None, folder.as_uri()))


def test_challenger_scores_go_to_shadow_only(tmp_path: Path) -> None:
    profiles = _customer_rows({"a": 4, "b": 3})
    champion = _scorer(tmp_path, "m", "1", first=0.2)
    challenger = _scorer(tmp_path, "m", "2", first=0.6)

    alone = score_kind("customer", profiles, champion, None, model_name="m")
    both = score_kind("customer", profiles, champion, challenger, model_name="m")

    assert alone["shadow"].isna().all()
    assert list(both["propensity"]) == list(alone["propensity"])  # served fields untouched
    assert list(both["model"]) == list(alone["model"])
    for store, shadow in zip(both["store_id"], both["shadow"], strict=True):
        scope = "store" if store == "a" else "global"
        expected = 0.4 if store == "a" else 0.7
        assert shadow["model"] == {"name": "m", "version": "2", "scope": scope}
        assert shadow["propensity"] == pytest.approx(expected)
    # one predict_proba per store (or global group) per scoring call, never per row
    assert CountingEstimator.calls == {"1-a": 2, "1-global": 2, "2-a": 1, "2-global": 1}


def test_no_shadow_when_challenger_is_the_served_version_or_missing(tmp_path: Path) -> None:
    profiles = _customer_rows({"a": 2})
    champion = _scorer(tmp_path, "m", "1", first=0.2)
    same = score_kind("customer", profiles, champion, champion, model_name="m")
    missing = score_kind("customer", profiles, champion, Scorer(None, None), model_name="m")
    assert same["shadow"].isna().all() and missing["shadow"].isna().all()
    assert CountingEstimator.calls == {"1-a": 2}
