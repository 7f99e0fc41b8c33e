"""Batch predictions (batch/transform.py) on real Spark and a real MLflow registry.

Models are trained once for the module on synthetic history and registered at @champion under
names private to the module; the entities are profiles folded from other synthetic events plus a
store the models never saw (scored by the global fallback). Every written row is checked against
``score_kind`` called directly on the same rows with the same version opened outside Spark.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from storeml.batch.transform import (
    KEYS,
    OUTPUT_FIELD,
    StoreGroup,
    batch_transform,
    read_predictions,
)
from storeml.connectors.mlflow_registry import ModelHandle, resolve_alias
from storeml.connectors.profile_files import write_profiles
from storeml.errors import ConfigError, ModelError
from storeml.models.events import bucket_of
from storeml.models.profiles import to_records
from storeml.models.serving import Scorer, score_kind
from storeml.models.store_models import ModelCache
from storeml.settings import Settings, load_settings
from storeml.streams.publish import CUSTOMER_FIELDS
from tests.test_models import _facts, _profiles

NEW_STORE = "store-new"


@pytest.fixture(scope="module")
def trained(mlflow_uris: Any, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose customer and product models have a @champion (trained once)."""
    from storeml.batch.history import train_on_synthetic

    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        home=tmp_path_factory.mktemp("transform-home"),
        mlflow_tracking_uri=mlflow_uris.tracking_uri,
        mlflow_artifact_root=mlflow_uris.artifact_root,
        customer_model=f"test-{suffix}-customers",
        product_model=f"test-{suffix}-products",
    )
    train_on_synthetic(settings, stores=6, events=8_000, seed=21)
    return settings


@pytest.fixture(scope="module")
def entities() -> dict[str, pd.DataFrame]:
    """Customer and product profiles of 6 known stores plus rows of a store with no model."""
    facts, _ = _facts(stores=6, events=8_000, seed=5)
    customers, products = _profiles(facts)
    out = {}
    for kind, frame in (("customer", customers), ("product", products)):
        extra = frame[frame["store_id"] == "store-001"].head(7).assign(store_id=NEW_STORE)
        out[kind] = pd.concat([frame, extra], ignore_index=True).drop(columns=["source"])
    return out


def _direct(settings: Settings, kind: str, frame: pd.DataFrame) -> dict[tuple[str, str], Any]:
    """What ``score_kind`` gives for ``frame`` with @champion opened directly (no Spark)."""
    name = settings.customer_model if kind == "customer" else settings.product_model
    handle = resolve_alias(settings.tracking_uri, settings.registry_uri, name, "champion")
    assert handle is not None
    bundle = ModelCache().bundle(handle)
    scored = score_kind(kind, frame, Scorer(bundle, handle), None, model_name=name)
    key = KEYS[kind]
    return {
        (s, k): (value, model)
        for s, k, value, model in zip(
            scored["store_id"],
            scored[key],
            scored[OUTPUT_FIELD[kind]],
            scored["model"],
            strict=True,
        )
    }


def _plain(value: Any) -> Any:
    """Parquet-read values (numpy arrays of dicts, NaN) as the plain Python scoring returns."""
    if isinstance(value, np.ndarray | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _assert_matches_direct(
    settings: Settings, kind: str, frame: pd.DataFrame, written: pd.DataFrame
) -> None:
    expected = _direct(settings, kind, frame)
    key = KEYS[kind]
    got = {
        (s, k): (_plain(value), _plain(model))
        for s, k, value, model in zip(
            written["store_id"],
            written[key],
            written[OUTPUT_FIELD[kind]],
            written["model"],
            strict=True,
        )
    }
    assert len(written) == len(frame) and got.keys() == expected.keys()
    for entity, (value, model) in got.items():
        want_value, want_model = expected[entity]
        assert model == want_model, entity
        if kind == "customer":
            assert (value is None) == (want_value is None), entity
            if value is not None:
                assert value == pytest.approx(want_value, rel=1e-9, abs=1e-12), entity
        else:
            assert [(c["category"], c["rank"]) for c in value] == [
                (c["category"], c["rank"]) for c in want_value
            ], entity
            assert [c["probability"] for c in value] == pytest.approx(
                [c["probability"] for c in want_value], rel=1e-9
            )


def _layout(root: Path) -> dict[str, set[str]]:
    """``{date folder: {store folders}}`` of the written Parquet files (``_`` folders skipped)."""
    out: dict[str, set[str]] = {}
    for path in root.rglob("*.parquet"):
        parts = path.relative_to(root).parts
        if parts[0].startswith("_"):
            continue
        assert len(parts) == 3 and parts[0].startswith("date=") and parts[1].startswith("store_id=")
        out.setdefault(parts[0], set()).add(parts[1])
    return out


def test_customers_from_a_recompute_folder_match_direct_scoring(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    customers = entities["customer"]
    # the recompute's --output layout: <root>/customer/bucket=N.parquet, served fields unscored
    unscored = score_kind("customer", customers, Scorer(None, None), None, model_name="x")
    root = tmp_path / "profiles"
    for bucket in sorted({bucket_of(s, 4) for s in customers["store_id"]}):
        rows = unscored[[bucket_of(s, 4) == bucket for s in unscored["store_id"]]]
        write_profiles(str(root), bucket, to_records(rows, CUSTOMER_FIELDS), [])

    out = tmp_path / "predictions"
    # each scoring call holds at most 50 rows, a small part of the input
    summary = batch_transform(
        spark,
        trained.model_copy(update={"task_chunk_rows": 50}),
        root,
        kind="customer",
        output=out,
        run_date="2024-05-01",
    )
    assert 0 < summary.max_chunk_rows <= 50 and len(customers) > 10 * 50

    stores = set(customers["store_id"])
    assert _layout(out) == {"date=2024-05-01": {f"store_id={s}" for s in stores}}
    one_file = next((out / "date=2024-05-01").rglob("*.parquet"))
    assert pq.read_schema(one_file).names == ["customer_id", "propensity", "model"]
    written = read_predictions(out, "customer")
    assert set(written["date"]) == {"2024-05-01"}
    _assert_matches_direct(trained, "customer", customers, written)
    scopes = written["model"].map(lambda m: m["scope"])
    assert set(scopes[written["store_id"] == NEW_STORE]) == {"global"}
    assert (scopes[written["store_id"] != NEW_STORE] == "store").any()
    assert (summary.rows, summary.stores, summary.model, summary.alias) == (
        len(customers),
        len(stores),
        trained.customer_model,
        "champion",
    )
    assert summary.scopes == scopes.value_counts().to_dict()
    assert summary.version == written["model"].iloc[0]["version"]
    assert not (out / "_staging").exists()


def test_products_from_pandas_get_five_ranked_categories_when_uncategorised(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    products = entities["product"]
    out = tmp_path / "predictions"
    summary = batch_transform(
        spark, trained, products, kind="product", output=out, run_date="2024-05-02"
    )
    written = read_predictions(out / "date=2024-05-02", "product")
    _assert_matches_direct(trained, "product", products, written)

    by_key = written.set_index(["store_id", "product_id"])
    uncategorised = products[products["category"].isna() & products["title"].notna()]
    assert len(uncategorised) >= 5
    for store, product in zip(uncategorised["store_id"], uncategorised["product_id"], strict=True):
        predicted = _plain(by_key.loc[(store, product), "predicted_categories"])
        assert [c["rank"] for c in predicted] == [0, 1, 2, 3, 4]
        probabilities = [c["probability"] for c in predicted]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len({c["category"] for c in predicted}) == 5
    categorised = products[products["category"].notna()]
    for store, product in zip(categorised["store_id"], categorised["product_id"], strict=True):
        row = by_key.loc[(store, product)]
        assert _plain(row["predicted_categories"]) == [] and row["model"]["scope"] == "none"
    assert summary.rows == len(products) and summary.scopes["none"] == len(categorised)


def test_a_rerun_of_a_date_replaces_its_partition_and_leaves_other_dates(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    customers = entities["customer"]
    out = tmp_path / "predictions"
    frame = spark.createDataFrame(customers.drop(columns=["top_categories"]))
    batch_transform(spark, trained, frame, kind="customer", output=out, run_date="2024-05-01")
    batch_transform(spark, trained, frame, kind="customer", output=out, run_date="2024-05-02")
    kept = ["store-002", "store-005"]
    again = frame.where(frame.store_id.isin(kept))
    summary = batch_transform(
        spark, trained, again, kind="customer", output=out, run_date="2024-05-02"
    )

    layout = _layout(out)
    assert layout["date=2024-05-02"] == {f"store_id={s}" for s in kept}  # replaced, not merged
    assert layout["date=2024-05-01"] == {f"store_id={s}" for s in set(customers["store_id"])}
    rerun = read_predictions(out / "date=2024-05-02", "customer")
    subset = customers[customers["store_id"].isin(kept)].drop(columns=["top_categories"])
    assert summary.rows == len(rerun) == len(subset)  # no duplicates
    _assert_matches_direct(trained, "customer", subset, rerun)
    assert not (out / "_staging").exists()


def test_missing_model_alias_or_columns_are_clear_errors(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    customers = entities["customer"].head(20)
    out = tmp_path / "predictions"
    with pytest.raises(ModelError, match="no registered model 'nope'"):
        batch_transform(spark, trained, customers, kind="customer", model_name="nope", output=out)
    with pytest.raises(ModelError, match="has no alias 'gold'.*storeml models promote"):
        batch_transform(spark, trained, customers, kind="customer", alias="gold", output=out)
    with pytest.raises(ConfigError, match="no column customer_id"):
        batch_transform(
            spark, trained, customers.drop(columns=["customer_id"]), kind="customer", output=out
        )
    nulls = customers.assign(store_id=[None] + list(customers["store_id"][1:]))
    with pytest.raises(ConfigError, match="null store_id or customer_id"):
        batch_transform(spark, trained, nulls, kind="customer", output=out)
    with pytest.raises(ConfigError, match="null store_id or customer_id"):  # a group sees it too
        batch_transform(
            spark, trained, nulls, kind="customer", output=out, store_group=StoreGroup(1, 2)
        )
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        batch_transform(spark, trained, customers, kind="customer", output=out, run_date="May 1")
    with pytest.raises(ConfigError, match="does not exist"):
        batch_transform(spark, trained, tmp_path / "missing", kind="customer", output=out)
    assert not out.exists()


def test_a_version_number_can_stand_for_the_alias(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    handle = resolve_alias(
        trained.tracking_uri, trained.registry_uri, trained.customer_model, "champion"
    )
    assert isinstance(handle, ModelHandle)
    summary = batch_transform(
        spark,
        trained,
        entities["customer"].head(30),
        kind="customer",
        alias=handle.version,
        output=tmp_path / "out",
        run_date="2024-05-03",
    )
    assert summary.version == handle.version and summary.rows == 30


def test_batch_transform_command_prints_a_summary(
    spark: Any, trained: Settings, entities: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from storeml.cli import main

    products = entities["product"]
    products.to_parquet(tmp_path / "products.parquet")
    out = tmp_path / "predictions"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(trained.home),
            "--mlflow-tracking-uri",
            trained.tracking_uri,
            "batch-transform",
            "--kind",
            "product",
            "--input",
            str(tmp_path / "products.parquet"),
            "--output",
            str(out),
            "--date",
            "2024-05-04",
        ],
        env={"STOREML_PRODUCT_MODEL": trained.product_model},
    )
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    stores = products["store_id"].nunique()
    assert first.startswith(
        f"batch-transform product: {len(products):,} rows in {stores} stores scored by"
        f" {trained.product_model} version 1 (@champion) in "
    )
    assert second == f"written to {out}/date=2024-05-04"
    assert len(read_predictions(out, "product")) == len(products)
    assert spark.range(1).count() == 1  # the session it found running is left running
