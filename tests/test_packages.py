"""Model packages: validation of good and broken packages, training, promotion and comparison.

Broken packages are copies of the examples with one thing broken, written into ``tmp_path``; each
must be rejected with a :class:`PackageError` whose problem names the file, the exact key path and
a fix. Training and the ``storeml models`` commands use the session's real MLflow store (SQLite,
``mlflow_uris``) and a small synthetic shop; every registered model name is private to this module.
Settings are built on ``mlflow_uris`` (as in ``test_models.py``), module-scoped so the shop is
trained once: these tests need neither Kafka nor Redis.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result

from storeml.batch.history import synthetic_facts
from storeml.batch.packages import ALL_STORES, compare_store_metrics, compare_versions
from storeml.batch.train import train_package
from storeml.cli import main
from storeml.connectors.mlflow_registry import (
    SPLITS_ARTIFACT,
    STORE_METRICS_ARTIFACT,
    ModelHandle,
    get_client,
    read_run_table,
    resolve_alias,
    resolve_version,
)
from storeml.errors import ModelError
from storeml.models.package import PackageError, Problem, load_package
from storeml.settings import Settings, load_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "packages"
CUSTOMER = "customer_propensity"
PRODUCT = "product_category"

Config = dict[str, Any]


def _copy(tmp_path: Path, example: str, edit: Callable[[Config], None] | None = None) -> Path:
    """A copy of an example package in ``tmp_path``, its parsed config changed by ``edit``."""
    folder = Path(
        shutil.copytree(EXAMPLES / example, tmp_path / f"{example}-{uuid.uuid4().hex[:6]}")
    )
    if edit is not None:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        edit(config)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


# --- (a) the examples are valid --------------------------------------------------------------
@pytest.mark.parametrize("example", [CUSTOMER, PRODUCT])
def test_example_packages_validate(example: str) -> None:
    package = load_package(EXAMPLES / example)
    assert package.warnings == ()
    assert package.kind == ("customer" if example == CUSTOMER else "product")
    assert package.feature_names
    assert package.uses_code == (example == PRODUCT)
    model = package.build_model("global")  # builds with the merged hyper-parameters
    assert model.version == "1.0.0"


def test_validate_command_prints_the_package(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["models", "validate", str(EXAMPLES / PRODUCT)])
    assert result.exit_code == 0, result.output
    assert "product-category (product), predictor.py:TextCategoryPredictor" in result.output
    assert "schedule    30 2 * * mon-sat (next run " in result.output


# --- (b) broken packages name the file, the key and the fix ----------------------------------
def _set(path: str, value: Any) -> Callable[[Config], None]:
    """An edit setting ``a.b[1].c`` in the config (a missing last key is added)."""

    def edit(config: Config) -> None:
        target: Any = config
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        target[int(last) if last.isdigit() else last] = value

    return edit


def _rename(section: str, old: str, new: str) -> Callable[[Config], None]:
    def edit(config: Config) -> None:
        config[section][new] = config[section].pop(old)

    return edit


def _drop(section: str) -> Callable[[Config], None]:
    def edit(config: Config) -> None:
        del config[section]

    return edit


def _write(name: str, transform: Callable[[str], str]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / name
        path.write_text(transform(path.read_text() if path.exists() else ""))

    return change


def _delete(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


# (id, example, config edit, file change, expected file, expected key, text in the fix or message)
BROKEN: list[tuple[str, str, Any, Any, str, str, str]] = [
    (
        "typo-in-key",
        CUSTOMER,
        _rename("model", "description", "descripton"),
        None,
        "config.yaml",
        "model.descripton",
        "did you mean 'description'?",
    ),
    (
        "missing-section",
        CUSTOMER,
        _drop("prediction"),
        None,
        "config.yaml",
        "prediction",
        "add prediction:",
    ),
    (
        "unknown-estimator",
        CUSTOMER,
        _set("model.framework.estimator", "sklearn.linear_model.LogisticRegresion"),
        None,
        "config.yaml",
        "model.framework.estimator",
        "did you mean sklearn.linear_model.LogisticRegression?",
    ),
    (
        "estimator-outside-sklearn",
        CUSTOMER,
        _set("model.framework.estimator", "xgboost.XGBClassifier"),
        None,
        "config.yaml",
        "model.framework.estimator",
        "type: custom",
    ),
    (
        "estimator-without-predict-proba",
        CUSTOMER,
        _set("model.framework.estimator", "sklearn.linear_model.LinearRegression"),
        None,
        "config.yaml",
        "model.framework.estimator",
        "a classifier with predict_proba",
    ),
    (
        "unknown-framework-type",
        CUSTOMER,
        _set("model.framework.type", "sklern"),
        None,
        "config.yaml",
        "model.framework.type",
        "type: sklearn",
    ),
    (
        "bad-hyperparameter-name",
        CUSTOMER,
        _set("model.hyperparameters.max_iters", 100),
        None,
        "config.yaml",
        "model.hyperparameters.max_iters",
        "did you mean 'max_iter'?",
    ),
    (
        "bad-hyperparameter-value",
        CUSTOMER,
        _set("model.hyperparameters.C", -1.0),
        None,
        "config.yaml",
        "model.hyperparameters.C",
        "must be a float in the range",
    ),
    (
        "bad-global-hyperparameter",
        PRODUCT,
        _set("model.global_hyperparameters.max_feature", 5),
        None,
        "config.yaml",
        "model.global_hyperparameters.max_feature",
        "did you mean 'max_features'?",
    ),
    (
        "unknown-feature",
        CUSTOMER,
        _set("features.derived[1]", "log_avg_order_valu"),
        None,
        "config.yaml",
        "features.derived[1]",
        "did you mean 'log_avg_order_value'?",
    ),
    (
        "feature-of-the-other-kind",
        PRODUCT,
        _set("features.derived", ["text", "order_count"]),
        None,
        "config.yaml",
        "features.derived[1]",
        "'order_count' is a customer feature",
    ),
    (
        "feature-in-the-wrong-list",
        CUSTOMER,
        _set("features.profile_fields[1]", "days_active"),
        None,
        "config.yaml",
        "features.profile_fields[1]",
        "move it to features.derived",
    ),
    (
        "custom-class-file-missing",
        PRODUCT,
        None,
        _delete("predictor.py"),
        "config.yaml",
        "model.framework.file",
        "create predictor.py next to config.yaml",
    ),
    (
        "custom-class-name-typo",
        PRODUCT,
        _set("model.framework.class", "TextCategoryPredicter"),
        None,
        "config.yaml",
        "model.framework.class",
        "did you mean 'TextCategoryPredictor'?",
    ),
    (
        "class-not-a-predictor",
        PRODUCT,
        None,
        _write("predictor.py", lambda s: s.replace("(Predictor):", ":")),
        "predictor.py",
        "class TextCategoryPredictor",
        "from storeml.models.base import Predictor",
    ),
    (
        "predictor-missing-predict-proba",
        PRODUCT,
        None,
        _write("predictor.py", lambda s: s.replace("def predict_proba", "def predict_probas")),
        "predictor.py",
        "class TextCategoryPredictor",
        "implement predict_proba",
    ),
    (
        "preprocess-import-fails",
        PRODUCT,
        None,
        _write(
            "preprocess.py", lambda s: s.replace("import re\n", "import re\nimport no_such_mod\n")
        ),
        "preprocess.py",
        "",
        "requirements.txt",
    ),
    (
        "text-feature-without-vectorizer",
        PRODUCT,
        lambda c: (
            c["model"].update(
                framework={"type": "sklearn", "estimator": "sklearn.naive_bayes.MultinomialNB"},
                hyperparameters={},
                global_hyperparameters={},
            )
            or c["features"].pop("preprocess")
        ),
        _delete("predictor.py"),
        "config.yaml",
        "features.preprocess",
        "sklearn.feature_extraction.text.TfidfVectorizer",
    ),
    (
        "bad-output-type",
        CUSTOMER,
        _set("prediction.outputs[0].type", "doubel"),
        None,
        "config.yaml",
        "prediction.outputs[0].type",
        "did you mean 'double'?",
    ),
    (
        "bad-output-name",
        CUSTOMER,
        _set("prediction.outputs[1].name", "2nd"),
        None,
        "config.yaml",
        "prediction.outputs[1].name",
        "starting with a letter",
    ),
    (
        "bad-cron",
        CUSTOMER,
        _set("prediction.schedule", "0 25 * * *"),
        None,
        "config.yaml",
        "prediction.schedule",
        "'0 3 * * *'",
    ),
    (
        "cron-that-never-runs",
        CUSTOMER,
        _set("prediction.schedule", "0 0 31 2 *"),
        None,
        "config.yaml",
        "prediction.schedule",
        "never runs",
    ),
    (
        "bad-service-name",
        CUSTOMER,
        _set("prediction.service", "Customer_Propensity"),
        None,
        "config.yaml",
        "prediction.service",
        "a DNS label",
    ),
    (
        "bad-requirements-line",
        CUSTOMER,
        None,
        _write("requirements.txt", lambda s: s + "numpy>=>1.26\n"),
        "requirements.txt",
        "line 3",
        "numpy>=1.26",
    ),
    (
        "pip-option-in-requirements",
        PRODUCT,
        None,
        _write("requirements.txt", lambda s: "--index-url https://example.org\n" + s),
        "requirements.txt",
        "line 1",
        "one requirement per line",
    ),
]


@pytest.mark.parametrize(
    ("example", "edit", "change", "file", "key", "hint"),
    [pytest.param(*case[1:], id=case[0]) for case in BROKEN],
)
def test_broken_package_is_rejected_naming_file_key_and_fix(
    tmp_path: Path,
    example: str,
    edit: Callable[[Config], None] | None,
    change: Callable[[Path], None] | None,
    file: str,
    key: str,
    hint: str,
) -> None:
    folder = _copy(tmp_path, example, edit)
    if change is not None:
        change(folder)
    with pytest.raises(PackageError) as caught:
        load_package(folder)
    error = caught.value
    assert error.folder == folder
    matching = [p for p in error.problems if p.file == file and p.key == key]
    assert matching, f"no problem for {file}: {key!r} in:\n{error}"
    problem = matching[0]
    assert hint in f"{problem.message}; fix: {problem.fix}", str(problem)
    assert problem.fix  # every problem says how to fix it
    # the message people read names all three
    assert (f"{file}: {key}: " if key else f"{file}: ") in str(error)
    assert str(problem) in str(error)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def edit(config: Config) -> None:
        config["model"]["hyperparameters"]["max_iters"] = 10
        config["features"]["derived"][0] = "log_total_spnd"
        config["prediction"]["schedule"] = "61 * * * *"

    folder = _copy(tmp_path, CUSTOMER, edit)
    with pytest.raises(PackageError) as caught:
        load_package(folder)
    keys = {p.key for p in caught.value.problems}
    assert keys == {"model.hyperparameters.max_iters", "features.derived[0]", "prediction.schedule"}
    assert "(3 problems)" in str(caught.value)
    # the command shows the same message and fails
    result = CliRunner().invoke(main, ["models", "validate", str(folder)])
    assert result.exit_code == 1
    assert "config.yaml: features.derived[0]: unknown customer feature" in result.output


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="config.yaml: missing in"):
        load_package(tmp_path)
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(PackageError, match="config.yaml: is empty"):
        load_package(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  kind: customer: x\n")
    with pytest.raises(PackageError, match=r"not valid YAML: line 2, column 17"):
        load_package(tmp_path)
    assert (
        str(Problem("config.yaml", "a.b", "bad", "fix it")) == "config.yaml: a.b: bad; fix: fix it"
    )


# --- (c) training -------------------------------------------------------------------------
STORES, EVENTS, SEED = 12, 4_000, 5


@pytest.fixture(scope="module")
def history() -> tuple[pd.DataFrame, int]:
    """A small synthetic shop and its training cutoff (the project's generator)."""
    return synthetic_facts(STORES, EVENTS, SEED)


@pytest.fixture(scope="module")
def package_settings(mlflow_uris: Any, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on the session's MLflow store."""
    return load_settings(
        home=tmp_path_factory.mktemp("packages-home"),
        mlflow_tracking_uri=mlflow_uris.tracking_uri,
        mlflow_artifact_root=mlflow_uris.artifact_root,
    )


@pytest.fixture(scope="module")
def customer_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The customer example, registering under a name private to this module."""
    name = f"test-{uuid.uuid4().hex[:8]}-propensity"
    return _copy(tmp_path_factory.mktemp("pkg"), CUSTOMER, _set("model.name", name))


@pytest.fixture(scope="module")
def versions(
    package_settings: Settings, customer_package: Path, history: tuple[pd.DataFrame, int]
) -> dict[str, Any]:
    """Version 1 on every store (@champion), version 2 on three stores only (@challenger)."""
    facts, cutoff = history
    first = train_package(package_settings, customer_package, facts, cutoff, alias="champion")
    few = sorted(facts["store_id"].unique())[:3]
    second = train_package(
        package_settings, customer_package, facts, cutoff, stores=few, alias="challenger"
    )
    return {"champion": first, "challenger": second, "few": few}


def _run_table(settings: Settings, handle: ModelHandle, path: str) -> pd.DataFrame:
    assert handle.run_id is not None
    return read_run_table(settings.tracking_uri, handle.run_id, path)


def test_training_registers_a_version_with_per_store_metrics_and_splits(
    versions: dict[str, Any],
    package_settings: Settings,
    history: tuple[pd.DataFrame, int],
    customer_package: Path,
) -> None:
    s = package_settings
    handle: ModelHandle = versions["champion"]
    name = load_package(customer_package).name
    assert (handle.name, handle.version, handle.alias) == (name, "1", "champion")
    assert resolve_alias(s.tracking_uri, s.registry_uri, name, "champion") == handle

    metrics = _run_table(s, handle, STORE_METRICS_ARTIFACT)
    facts, _ = history
    assert set(metrics["store_id"]) <= set(facts["store_id"])
    assert len(metrics) >= STORES - 2  # stores whose customers all arrive after the cutoff drop
    assert {"store", "global"} <= set(metrics["scope"])  # big stores own a model, small fall back
    small = metrics[metrics["scope"] == "global"]
    assert small["reason"].str.contains("too few training examples").all()
    assert {"auc", "accuracy", "global_auc"} <= set(metrics.columns)

    splits = _run_table(s, handle, SPLITS_ARTIFACT)
    assert list(splits.columns) == ["row", "store_id", "split", "customer_id"]
    assert len(splits) == metrics["examples"].sum()
    assert splits.groupby("store_id")["split"].apply(set).map(len).max() == 2
    counts = splits.groupby("store_id").size()
    assert counts.to_dict() == dict(zip(metrics["store_id"], metrics["examples"], strict=True))

    client = get_client(s.tracking_uri, s.registry_uri)
    run = client.get_run(str(handle.run_id))
    assert run.data.params["package"] == name
    assert run.data.params["framework"] == "sklearn.linear_model.LogisticRegression"
    assert run.data.metrics["stores_with_model"] == (metrics["scope"] == "store").sum()
    packaged = {a.path for a in client.list_artifacts(str(handle.run_id), "package")}
    assert packaged == {"package/config.yaml", "package/requirements.txt"}
    version = client.get_model_version(name, "1")
    assert version.tags["package"] == name and version.tags["prediction_version"] == "1.0.0"


def test_store_option_limits_training_to_those_stores(
    versions: dict[str, Any], package_settings: Settings
) -> None:
    handle: ModelHandle = versions["challenger"]
    assert (handle.version, handle.alias) == ("2", "challenger")
    metrics = _run_table(package_settings, handle, STORE_METRICS_ARTIFACT)
    assert sorted(metrics["store_id"]) == versions["few"]
    splits = _run_table(package_settings, handle, SPLITS_ARTIFACT)
    assert set(splits["store_id"]) == set(versions["few"])


def test_training_an_unknown_store_fails_before_training(
    package_settings: Settings, customer_package: Path, history: tuple[pd.DataFrame, int]
) -> None:
    facts, cutoff = history
    with pytest.raises(ModelError, match="store-999: no history for them"):
        train_package(package_settings, customer_package, facts, cutoff, stores=["store-999"])


def test_custom_code_package_trains_and_its_models_predict(
    package_settings: Settings, history: tuple[pd.DataFrame, int], tmp_path: Path
) -> None:
    import mlflow

    name = f"test-{uuid.uuid4().hex[:8]}-category"
    folder = _copy(tmp_path, PRODUCT, _set("model.name", name))
    facts, cutoff = history
    handle = train_package(package_settings, folder, facts, cutoff, min_examples=5)
    assert (handle.version, handle.alias) == ("1", "challenger")
    metrics = _run_table(package_settings, handle, STORE_METRICS_ARTIFACT)
    assert {"accuracy", "top5_accuracy"} <= set(metrics.columns)
    client = get_client(package_settings.tracking_uri)
    packaged = {a.path for a in client.list_artifacts(str(handle.run_id), "package")}
    assert {"package/predictor.py", "package/preprocess.py"} <= packaged
    # the registered pyfunc predicts with the package's classes; the folder is not read again
    shutil.rmtree(folder)
    model = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    products = pd.DataFrame(
        {
            "store_id": ["store-001", "store-new"],
            "product_id": ["p1", "p2"],
            "title": ["red running shoe", "garden rake"],
            "description": ["leather", None],
            "category": [None, None],
        }
    )
    out = model.predict(products)
    assert [1 <= len(p) <= 5 for p in out["predicted_categories"]] == [True, True]

    # the version records its digest; the executors' cache checks the files (code inside) first
    from storeml.errors import ModelError
    from storeml.models.store_models import ModelCache

    assert handle.digest and client.get_model_version(name, "1").tags["storeml.bundle_sha256"]
    bundle = ModelCache().bundle(handle)
    store = bundle.stores[0]
    assert bundle.model_for(store)[1] == "store"
    store_file = bundle.folder / bundle.index["stores"][store]["file"]
    with store_file.open("ab") as out_file:  # e.g. someone appends to the artifact in place
        out_file.write(b"\0")
    with pytest.raises(ModelError, match=f"{name} version 1: file {store_file} has SHA-256"):
        ModelCache().bundle(handle).model_for(store)


# --- comparison (pure) -----------------------------------------------------------------------
def test_compare_store_metrics_side_by_side_with_an_aggregate_row() -> None:
    champion = pd.DataFrame(
        {
            "store_id": ["a", "b", "c"],
            "examples": [40, 20, 8],
            "test": [10, 5, 2],
            "scope": ["store", "store", "global"],
            "reason": ["", "", "too few"],
            "auc": [0.8, 0.6, np.nan],
            "accuracy": [0.7, 0.6, 0.5],
            "global_auc": [0.7, 0.5, np.nan],
        }
    )
    challenger = pd.DataFrame(
        {
            "store_id": ["a", "b", "d"],
            "examples": [40, 20, 30],
            "test": [10, 10, 7],
            "scope": ["store", "global", "store"],
            "reason": ["", "too few", ""],
            "auc": [0.9, 0.3, 0.7],
            "accuracy": [0.8, 0.5, 0.6],
            "global_auc": [0.8, 0.3, 0.6],
        }
    )
    frame = compare_store_metrics(champion, challenger)
    assert list(frame.columns) == [
        "store_id",
        "champion_scope",
        "champion_test",
        "champion_auc",
        "challenger_scope",
        "challenger_test",
        "challenger_auc",
        "delta_auc",
    ]
    assert frame["store_id"].tolist() == ["a", "b", "c", "d", ALL_STORES]
    rows = frame.set_index("store_id")
    assert rows.loc["a", "delta_auc"] == pytest.approx(0.1)
    assert rows.loc["b", "challenger_scope"] == "global"
    assert rows.loc["c", "challenger_scope"] is None and np.isnan(rows.loc["c", "challenger_auc"])
    assert rows.loc["d", "champion_scope"] is None and rows.loc["d", "challenger_auc"] == 0.7
    # the aggregate covers the stores both score (a, b), weighted by each side's test rows
    total = rows.loc[ALL_STORES]
    assert total["champion_auc"] == pytest.approx((0.8 * 10 + 0.6 * 5) / 15)
    assert total["challenger_auc"] == pytest.approx((0.9 * 10 + 0.3 * 10) / 20)
    assert (total["champion_test"], total["challenger_test"]) == (15, 20)
    assert (total["champion_scope"], total["challenger_scope"]) == ("2 store", "1 store / 1 global")

    assert "delta_accuracy" in compare_store_metrics(champion, challenger, "accuracy").columns
    with pytest.raises(ModelError, match="choose one of: auc, accuracy"):
        compare_store_metrics(champion, challenger, "f1")
    # product models: top5_accuracy is preferred over accuracy
    products = pd.DataFrame(
        {
            "store_id": ["a"],
            "test": [3],
            "scope": ["store"],
            "accuracy": [1.0],
            "top5_accuracy": 1.0,
        }
    )
    assert compare_store_metrics(products, products).columns[-1] == "delta_top5_accuracy"
    with pytest.raises(ModelError, match="no metric in common"):
        compare_store_metrics(champion, products.drop(columns=["accuracy", "top5_accuracy"]))


def test_compare_versions_reads_both_runs(
    versions: dict[str, Any], package_settings: Settings
) -> None:
    frame = compare_versions(package_settings, versions["champion"], versions["challenger"])
    stores = frame[frame["store_id"] != ALL_STORES]
    champion = _run_table(package_settings, versions["champion"], STORE_METRICS_ARTIFACT)
    assert sorted(stores["store_id"]) == sorted(champion["store_id"])
    only_champion = stores[stores["challenger_scope"].isna()]["store_id"]
    assert set(only_champion) == set(champion["store_id"]) - set(versions["few"])


# --- (d) the storeml models commands -----------------------------------------------------
def _cli(settings: Settings, *args: str) -> Result:
    env = {
        "STOREML_MLFLOW_ARTIFACT_ROOT": settings.artifact_root,
        "STOREML_CONFIG": None,
        "STOREML_SERVING_ALIAS": None,
        "STOREML_SHADOW_ALIAS": None,
    }
    return CliRunner().invoke(
        main,
        ["--home", str(settings.home), "--mlflow-tracking-uri", settings.tracking_uri, *args],
        env=env,  # None unsets a variable
    )


def test_models_group_is_wired_into_the_main_command() -> None:
    result = CliRunner().invoke(main, ["models", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("validate", "train", "list", "promote", "compare"):
        assert command in result.output


def test_promote_then_compare(versions: dict[str, Any], package_settings: Settings) -> None:
    s = package_settings
    name = versions["champion"].name
    few = versions["few"]

    listed = _cli(s, "models", "list", name)
    assert listed.exit_code == 0, listed.output
    assert name in listed.output and "challenger -> 2, champion -> 1" in listed.output

    compared = _cli(s, "models", "compare", name)
    assert compared.exit_code == 0, compared.output
    out = compared.output
    assert f"{name}: champion @champion (version 1) vs challenger @challenger (version 2)" in out
    assert "metric auc" in out
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["store", "champion", "test", "auc"]
    assert any(line.startswith(ALL_STORES) for line in lines)
    for store in few:  # trained by both: numbers on both sides
        row = next(line for line in lines if line.startswith(store)).split()
        assert row[1] in ("store", "global") and row[4] in ("store", "global")
    assert "only in the champion: " in out and "only in the challenger" not in out

    promoted = _cli(s, "models", "promote", name, "--version", "2")
    assert promoted.exit_code == 0, promoted.output
    assert promoted.output.strip() == f"{name}@champion: version 1 -> 2"
    assert resolve_version(s.tracking_uri, s.registry_uri, name, "champion").version == "2"
    same = _cli(s, "models", "compare", name)
    assert same.exit_code == 0 and "(both name the same version)" in same.output

    # rollback: promote the old version again; versions and aliases can be mixed in compare
    back = _cli(s, "models", "promote", name, "--version", "1", "--alias", "champion")
    assert back.output.strip() == f"{name}@champion: version 2 -> 1"
    by_number = _cli(s, "models", "compare", name, "--champion", "2", "--challenger", "champion")
    assert by_number.exit_code == 0, by_number.output
    assert "champion version 2 vs challenger @champion (version 1)" in by_number.output
    assert "only in the challenger: " in by_number.output


def test_promote_and_compare_name_what_does_not_exist(
    versions: dict[str, Any], package_settings: Settings
) -> None:
    s = package_settings
    name = versions["champion"].name
    missing_version = _cli(s, "models", "promote", name, "--version", "9")
    assert missing_version.exit_code == 1
    assert f"model {name!r} has no version '9'" in missing_version.output
    assert "versions: 1, 2" in missing_version.output

    missing_model = _cli(s, "models", "promote", name + "x", "--version", "1")
    assert missing_model.exit_code == 1
    assert f"no registered model {name + 'x'!r}" in missing_model.output
    assert f"did you mean {name!r}?" in missing_model.output

    missing_alias = _cli(s, "models", "compare", name, "--challenger", "candidate")
    assert missing_alias.exit_code == 1
    assert f"model {name!r} has no alias 'candidate'" in missing_alias.output
    assert f"storeml models promote {name} --version V --alias candidate" in missing_alias.output

    bad_metric = _cli(s, "models", "compare", name, "--metric", "f1")
    assert bad_metric.exit_code == 1 and "choose one of: auc" in bad_metric.output
    # nothing moved
    assert resolve_alias(s.tracking_uri, s.registry_uri, name, "champion") is not None


def test_train_command_with_store_options(
    versions: dict[str, Any], package_settings: Settings, customer_package: Path
) -> None:
    s = package_settings
    name = versions["champion"].name
    stores = versions["few"][:2]
    result = _cli(
        s,
        "models",
        "train",
        str(customer_package),
        *("--stores", str(STORES), "--events", str(EVENTS), "--seed", str(SEED)),
        *(arg for store in stores for arg in ("--store", store)),
        "--no-alias",
    )
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"{name} version ") and "@" not in first
    version = first.split()[2]
    handle = resolve_version(s.tracking_uri, s.registry_uri, name, version)
    metrics = _run_table(s, handle, STORE_METRICS_ARTIFACT)
    assert sorted(metrics["store_id"]) == stores
