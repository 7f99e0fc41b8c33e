"""The per-store model cache at scale, and the linear fast path of customer scoring.

Everything here writes real bundles with :func:`write_bundle` (joblib files, ``index.json``,
``linear.npz``) into ``tmp_path`` and scores through the same objects the stream uses; the models
are real scikit-learn estimators and model packages fitted on synthetic customer profiles. The
fast path must give what ``predict_proba`` gives (to 1e-12), with the same ``model.scope``.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from storeml.connectors.mlflow_registry import ModelHandle
from storeml.models.base import PackagedModel, SklearnPredictor
from storeml.models.linear import LINEAR_FILE, affine_head
from storeml.models.package import load_package
from storeml.models.scoring import CUSTOMER_FEATURES, customer_features, score_customers
from storeml.models.store_models import ModelCache, StoreModelBundle, write_bundle
from storeml.models.training import make_customer_estimator

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "packages" / "customer_propensity"


def _profiles(rng: np.random.Generator, stores: list[Any]) -> pd.DataFrame:
    """One synthetic customer profile per entry of ``stores`` (in that order)."""
    n = len(stores)
    orders = rng.poisson(2.0, n)
    ordered = orders > 0
    return pd.DataFrame(
        {
            "store_id": pd.Series(stores, dtype=object),
            "customer_id": [f"c{i}" for i in range(n)],
            "order_count": orders,
            "total_spend_minor": orders * rng.integers(100, 20_000, n),
            "avg_order_value_minor": np.where(ordered, rng.integers(100, 20_000, n), np.nan),
            "first_order_time": np.where(ordered, 1_000.0, np.nan),
            "last_order_time": np.where(ordered, 5_000.0, np.nan),
            "last_event_time": rng.integers(10**6, 10**10, n).astype("float64"),
            "days_since_last_order": np.where(ordered, rng.uniform(0, 400, n), np.nan),
            "product_views": rng.poisson(6.0, n),
            "top_categories": [
                [{"category": "toys", "spend_minor": 10, "share": float(s)}] if o else []
                for s, o in zip(rng.uniform(size=n), ordered, strict=True)
            ],
        }
    )


def _training(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """The base matrix of ``n`` synthetic profiles and 0/1 labels that depend on it."""
    x = customer_features(_profiles(rng, ["t"] * n)).to_numpy(dtype="float64")
    logit = 0.8 * x[:, 0] - 0.01 * x[:, 3] + 0.3 * x[:, 6] - 1.0 + rng.normal(size=n)
    return x, (logit > 0).astype("int64")


def _perturbed(model: Any, rng: np.random.Generator) -> Any:
    """A copy of a fitted linear model with its coefficients moved a little (another store)."""
    out = copy.deepcopy(model)
    inner = out
    if isinstance(out, PackagedModel) and isinstance(out.predictor, SklearnPredictor):
        inner = out.predictor.estimator
    lr = inner[-1] if hasattr(inner, "steps") else inner
    lr.coef_ = lr.coef_ * (1.0 + 0.2 * rng.normal(size=lr.coef_.shape))
    lr.intercept_ = lr.intercept_ + 0.2 * rng.normal(size=lr.intercept_.shape)
    return out


def _fit(family: str, x: np.ndarray, y: np.ndarray) -> Any:
    if family == "pipeline":  # what fit_customer_models trains
        return make_customer_estimator().fit(x, y)
    if family == "plain":
        return LogisticRegression(max_iter=500).fit(x, y)
    if family == "scalers":  # several affine scalers composed into one shift/scale
        return make_pipeline(
            MinMaxScaler(),
            RobustScaler(),
            "passthrough",
            MaxAbsScaler(),
            StandardScaler(with_mean=False),
            LogisticRegression(C=0.5),
        ).fit(x, y)
    if family == "flipped":  # class 1 comes first: the propensity is 1 - expit(z)
        return make_customer_estimator().fit(x, np.where(y == 1, 1, 7))
    if family == "package":  # feature step + StandardScaler + LogisticRegression
        return load_package(PACKAGE).build_model("store").fit(x, y)
    if family == "tree":  # not linear: always scored by its own predict_proba
        return DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    raise AssertionError(family)


def _propensity(scored: pd.DataFrame) -> np.ndarray:
    return np.asarray([np.nan if p is None else p for p in scored["propensity"]], dtype="float64")


def _scopes(scored: pd.DataFrame) -> list[str]:
    return [ref["scope"] for ref in scored["model"]]


def _assert_same_scores(fast: pd.DataFrame, slow: pd.DataFrame) -> None:
    assert _scopes(fast) == _scopes(slow)
    a, b = _propensity(fast), _propensity(slow)
    assert (np.isnan(a) == np.isnan(b)).all()
    scored = ~np.isnan(a)
    assert scored.any()
    assert np.max(np.abs(a[scored] - b[scored])) <= 1e-12


# --- the fast path equals predict_proba ----------------------------------------------------------
@pytest.mark.parametrize("family", ["pipeline", "plain", "scalers", "flipped", "package"])
def test_linear_table_scores_like_predict_proba(tmp_path: Path, family: str) -> None:
    rng = np.random.default_rng(11)
    x, y = _training(rng)
    template = _fit(family, x, y)
    stores = {f"s{i}": _perturbed(template, rng) for i in range(6)}
    folder = write_bundle(
        tmp_path / "bundle",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=stores,
        global_model=_fit(family, x, y),
        examples={"small": 3},
    )
    entry = json.loads((folder / "index.json").read_text())["linear"]
    assert entry["stores"] == 6 and entry["global"] is True and entry["failed_check"] == 0
    assert entry["input"]["type"] == ("features" if family == "package" else "base")

    # own stores, a store without a model (global), a null store id (never scored), interleaved
    ids = [*[f"s{i}" for i in range(6)] * 40, *["small"] * 30, *[None] * 5]
    profiles = _profiles(rng, ids).sample(frac=1.0, random_state=3)
    fast_bundle = StoreModelBundle(folder)
    fast = score_customers(profiles, fast_bundle, None, model_name="m")
    slow_bundle = StoreModelBundle(folder, vectorise=False)
    slow = score_customers(profiles, slow_bundle, None, model_name="m")

    _assert_same_scores(fast, slow)
    assert Counter(_scopes(fast)) == {"store": 240, "global": 30, "none": 5}
    fast_stats, slow_stats = fast_bundle.stats, slow_bundle.stats
    assert fast_stats.vectorised_rows == 270 and fast_stats.vectorised_stores == 6
    assert fast_stats.loads == 0 and fast_stats.linear_loads == 1  # no store file was read
    assert fast_stats.fallbacks == slow_stats.fallbacks == 1
    assert slow_stats.vectorised_rows == 0 and slow_stats.loads == 7  # 6 stores + global
    # the table is read once per opened bundle
    score_customers(profiles, fast_bundle, None, model_name="m")
    assert fast_stats.linear_loads == 1 and fast_stats.vectorised_rows == 540


def test_extreme_inputs_stay_exact(tmp_path: Path) -> None:
    """Saturated probabilities (|z| in the hundreds) match too, without overflow warnings."""
    rng = np.random.default_rng(5)
    x, y = _training(rng)
    model = make_customer_estimator().fit(x, y)
    model[-1].coef_ = model[-1].coef_ * 50.0
    folder = write_bundle(
        tmp_path / "b",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"s": model},
        global_model=None,
    )
    profiles = _profiles(rng, ["s"] * 400)
    profiles.loc[:99, "order_count"] = rng.integers(0, 5_000, 100)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        fast = score_customers(profiles, StoreModelBundle(folder), None, model_name="m")
    slow = score_customers(profiles, StoreModelBundle(folder, vectorise=False), None)
    _assert_same_scores(fast, slow)
    assert {0.0, 1.0} & set(_propensity(fast).round(12))  # some rows saturate


def test_mixed_bundle_scores_only_non_linear_stores_per_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = _training(rng)
    linear, tree, package = _fit("pipeline", x, y), _fit("tree", x, y), _fit("package", x, y)
    stores = {
        **{f"lin{i}": _perturbed(linear, rng) for i in range(5)},
        **{f"tree{i}": copy.deepcopy(tree) for i in range(3)},
        "pkg": package,  # linear, but on another input than most stores: stays off the table
    }
    folder = write_bundle(
        tmp_path / "b",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=stores,
        global_model=tree,  # a non-linear global model: fallbacks go through predict_proba
    )
    entry = json.loads((folder / "index.json").read_text())["linear"]
    assert entry["stores"] == 5 and entry["global"] is False and entry["other_input_stores"] == 1
    ids = [*stores, "unknown-1", "unknown-2"] * 20
    profiles = _profiles(rng, ids).sample(frac=1.0, random_state=1)
    bundle = StoreModelBundle(folder)
    fast = score_customers(profiles, bundle, None, model_name="m")
    slow = score_customers(profiles, StoreModelBundle(folder, vectorise=False), None)
    _assert_same_scores(fast, slow)
    stats = bundle.stats
    assert stats.vectorised_rows == 100 and stats.vectorised_stores == 5
    assert stats.misses == 4 and stats.hits == 0  # 3 trees + the package, each loaded once
    assert stats.fallbacks == 2 and stats.loads == 5  # + the global model
    assert Counter(_scopes(fast)) == {"store": 180, "global": 40}


def test_bundles_without_a_table_score_as_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x, y = _training(rng)
    models = {f"s{i}": _perturbed(_fit("pipeline", x, y), rng) for i in range(4)}
    profiles = _profiles(rng, [*models, "other"] * 10)
    reference = score_customers(
        profiles,
        StoreModelBundle(
            write_bundle(
                tmp_path / "new",
                kind="customer",
                features=CUSTOMER_FEATURES,
                store_models=models,
                global_model=models["s0"],
            )
        ),
        None,
    )
    # written without a table
    off = write_bundle(
        tmp_path / "off",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=models,
        global_model=models["s0"],
        linear=False,
    )
    assert json.loads((off / "index.json").read_text())["linear"] is None
    assert not (off / LINEAR_FILE).exists()
    # an old bundle: index.json from before the table existed
    old = write_bundle(
        tmp_path / "old",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=models,
        global_model=models["s0"],
    )
    index = json.loads((old / "index.json").read_text())
    del index["linear"]
    (old / "index.json").write_text(json.dumps(index))
    (old / LINEAR_FILE).unlink()
    for folder in (off, old):
        bundle = StoreModelBundle(folder)
        scored = score_customers(profiles, bundle, None)
        _assert_same_scores(reference, scored)
        assert bundle.linear_table() is None
        assert bundle.stats.vectorised_rows == 0 and bundle.stats.misses == 4
    # a product bundle never gets a table; non-linear or unknown objects have no affine head
    assert affine_head(_fit("tree", x, y), "customer") is None
    assert affine_head(_fit("pipeline", x, y), "product") is None


# --- the store-model bound with thousands of stores ----------------------------------------------
@pytest.mark.parametrize("linear", [True, False], ids=["with-table", "table-disabled"])
def test_cache_bound_holds_with_thousands_of_stores(tmp_path: Path, linear: bool) -> None:
    """3,000 stores (half linear, half trees) scored with room for 100 store models."""
    rng = np.random.default_rng(7)
    x, y = _training(rng)
    lr, tree = _fit("pipeline", x, y), _fit("tree", x, y)
    linear_ids = [f"lin-{i:04d}" for i in range(1_500)]
    tree_ids = [f"tree-{i:04d}" for i in range(1_500)]
    models: dict[str, Any] = {s: _perturbed(lr, rng) for s in linear_ids}
    models.update(dict.fromkeys(tree_ids, tree))  # identical content, one real file each
    root = tmp_path / "model"
    write_bundle(
        root / "artifacts" / "stores",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=models,
        global_model=lr,
        linear=linear,
    )
    cache = ModelCache(cache_size=100)
    bundle = cache.bundle(ModelHandle("m", "1", "champion", root.as_uri()))
    capacity = 100
    # stores in a known order: per-store models are looked up in order of first appearance
    order = [s for pair in zip(linear_ids, tree_ids, strict=True) for s in pair]
    unknown = [f"new-{i}" for i in range(50)]
    lookups = 0  # expected per-store lookups (stores scored by their own file)

    def score(ids: list[str]) -> pd.DataFrame:
        nonlocal lookups
        per_store = [s for s in dict.fromkeys(ids) if s in models and (s in tree_ids or not linear)]
        lookups += len(per_store)
        scored = score_customers(_profiles(rng, ids), bundle, None, model_name="m")
        assert bundle.loaded <= capacity and cache.stats()["store_models"] <= capacity
        return scored

    scored = score([*order, *order, *unknown])  # every store twice, and 50 fallbacks
    assert Counter(_scopes(scored)) == {"store": 6_000, "global": 50}
    stats = cache.stats()
    own_files = 1_500 if linear else 3_000
    assert stats["misses"] == own_files and stats["hits"] == 0
    assert stats["evictions"] == own_files - capacity and stats["store_models"] == capacity
    assert stats["vectorised_rows"] == (3_000 + 50 if linear else 0)
    assert stats["vectorised_stores"] == (1_500 if linear else 0)
    assert stats["fallbacks"] == 50
    # loads: one per miss, plus the global model when fallbacks go through predict_proba
    assert stats["loads"] == stats["misses"] + (0 if linear else 1)
    assert stats["linear_loads"] == (1 if linear else 0)

    # the 100 most recently used store models are in memory: scoring them again only hits
    recent = [s for s in order if s in tree_ids or not linear][-capacity:]
    score(recent)
    stats = cache.stats()
    assert stats["hits"] == capacity and stats["misses"] == own_files

    # a full pass in the same order evicts each model before it is used again (LRU worst case)
    score(order)
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == lookups
    assert stats["evictions"] == stats["misses"] - capacity
    assert stats["loads"] == stats["misses"] + (0 if linear else 1)
    assert stats["store_models"] == capacity and bundle.loaded == capacity
    if linear:
        assert stats["vectorised_rows"] == 3_050 + 1_500 and stats["vectorised_stores"] == 3_000

    bundle.release()
    assert bundle.loaded == 0 and cache.stats()["store_models"] == 0


def test_model_cache_can_turn_the_fast_path_off(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    x, y = _training(rng)
    root = tmp_path / "model"
    write_bundle(
        root / "artifacts" / "stores",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"a": _fit("pipeline", x, y)},
        global_model=None,
    )
    handle = ModelHandle("m", "1", None, root.as_uri())
    profiles = _profiles(rng, ["a"] * 10)
    on, off = ModelCache(), ModelCache(vectorise=False)
    _assert_same_scores(
        score_customers(profiles, on.bundle(handle), handle),
        score_customers(profiles, off.bundle(handle), handle),
    )
    assert on.stats()["vectorised_rows"] == 10 and on.stats()["loads"] == 0
    assert off.stats()["vectorised_rows"] == 0 and off.stats()["loads"] == 1


# --- integrity: digests recorded at registration, checked on load; the private download cache --
def _register_bundle(
    tmp_path: Path, tracking_uri: str, artifact_root: str, name: str, *, digest: bool = True
) -> Any:
    """A real registration on the MLflow store: log a two-store bundle, register it (with digest)."""
    from tests.registry import log_and_register

    rng = np.random.default_rng(5)
    x, y = _training(rng)
    model = LogisticRegression().fit(x, y)
    folder = write_bundle(
        tmp_path / name / "stores",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"s1": model, "s2": _perturbed(model, rng)},
        global_model=model,
    )
    return log_and_register(folder, tracking_uri, artifact_root, name, "champion", digest=digest)


def _remote(handle: Any, tracking_uri: str) -> Any:
    """The same version with its ``models:/`` source, which the cache downloads (not a folder)."""
    from storeml.connectors.mlflow_registry import get_client

    logged = str(get_client(tracking_uri).get_model_version(handle.name, handle.version).source)
    return ModelHandle(handle.name, handle.version, None, logged, digest=handle.digest)


def test_registration_records_the_digest_and_a_tampered_download_is_refused(
    tmp_path: Path, mlflow_uris: Any, unique: str
) -> None:
    from storeml.connectors.mlflow_registry import DIGEST_TAG, get_client, resolve_alias
    from storeml.errors import ModelError
    from storeml.models.bundle_integrity import file_sha256

    tracking = mlflow_uris.tracking_uri
    name = f"test-{unique}-digest"
    handle = _register_bundle(tmp_path, tracking, mlflow_uris.artifact_root, name)
    tags = get_client(tracking).get_model_version(name, handle.version).tags
    assert tags[DIGEST_TAG] == handle.digest and len(handle.digest) == 64
    resolved = resolve_alias(tracking, None, name, "champion")
    assert resolved is not None and resolved.digest == handle.digest

    remote = _remote(handle, tracking)
    cache = ModelCache(cache_dir=tmp_path / "cache")
    bundle = cache.bundle(remote, tracking)
    index = json.loads((bundle.folder / "index.json").read_text())
    assert file_sha256(bundle.folder / "index.json") == handle.digest
    for entry in [*index["stores"].values(), index["global"], index["linear"]]:
        assert entry["sha256"] == file_sha256(bundle.folder / entry["file"])
    assert bundle.model_for("s1")[1] == "store"  # the untouched download loads
    assert cache.stats()["unverified_versions"] == 0

    # another user of the host (or a bad disk) rewrites one downloaded store file
    victim = bundle.folder / index["stores"]["s2"]["file"]
    joblib_bytes = (bundle.folder / index["stores"]["s1"]["file"]).read_bytes()
    victim.write_bytes(joblib_bytes)  # a valid pickle, just not the one registered
    fresh = ModelCache(cache_dir=tmp_path / "cache")  # a new worker reuses the host's download
    opened = fresh.bundle(remote, tracking)
    assert opened.folder == bundle.folder
    assert opened.model_for("s1")[1] == "store"
    with pytest.raises(ModelError) as failed:
        opened.model_for("s2")
    message = str(failed.value)
    assert str(victim) in message and name in message and f"version {handle.version}" in message
    assert "SHA-256" in message

    # a rewritten index.json (to list the tampered file's digest) fails against the registry's tag
    index["stores"]["s2"]["sha256"] = file_sha256(victim)
    (bundle.folder / "index.json").write_text(json.dumps(index, sort_keys=True))
    with pytest.raises(ModelError, match="index.json has SHA-256"):
        ModelCache(cache_dir=tmp_path / "cache").bundle(remote, tracking)


def test_a_sealed_index_must_list_every_digest_and_unsealed_versions_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from storeml.errors import ModelError
    from storeml.models.bundle_integrity import bundle_digest

    rng = np.random.default_rng(9)
    x, y = _training(rng)
    root = write_bundle(
        tmp_path / "b" / "artifacts" / "stores",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models={"s1": LogisticRegression().fit(x, y)},
        global_model=None,
        linear=False,
    )
    index = json.loads((root / "index.json").read_text())
    del index["stores"]["s1"]["sha256"]
    (root / "index.json").write_text(json.dumps(index))
    sealed = StoreModelBundle(root, digest=bundle_digest(root), label="model m version 3")
    with pytest.raises(ModelError, match="model m version 3: index.json lists stores/s1.joblib"):
        sealed.model_for("s1")
    # a version registered before digests: loaded, warned about, counted
    cache = ModelCache()
    with caplog.at_level("WARNING", logger="storeml.models"):
        bundle = cache.bundle(ModelHandle("m", "3", None, (tmp_path / "b").as_uri()))
    assert bundle.model_for("s1")[1] == "store"
    assert cache.stats()["unverified_versions"] == 1
    assert any("has no recorded digest" in r.getMessage() for r in caplog.records)


def test_the_download_cache_is_private_and_a_foreign_or_open_folder_is_refused(
    tmp_path: Path, mlflow_uris: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    from storeml.errors import ConfigError
    from storeml.models.bundle_integrity import CACHE_DIR_ENV, default_cache_dir

    # the default is per user (XDG cache folder), never a shared temporary folder
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "storeml" / "models"
    assert ModelCache().cache_dir == default_cache_dir()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "configured"))
    assert ModelCache().cache_dir == tmp_path / "configured"

    tracking = mlflow_uris.tracking_uri
    name = f"test-{unique}-cache"
    remote = _remote(
        _register_bundle(tmp_path, tracking, mlflow_uris.artifact_root, name), tracking
    )
    fresh = tmp_path / "fresh" / "models"
    bundle = ModelCache(cache_dir=fresh).bundle(remote, tracking)
    assert bundle.folder.is_relative_to(fresh)
    info = fresh.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert stat.S_IMODE(bundle.folder.parent.stat().st_mode) == 0o700

    # pre-created by someone who left it open to the group / the world
    for mode in (0o777, 0o770):
        seeded = tmp_path / f"open-{mode:o}"
        seeded.mkdir()
        seeded.chmod(mode)
        with pytest.raises(ConfigError, match=f"writable by its group or by others .*{mode:o}"):
            ModelCache(cache_dir=seeded).bundle(remote, tracking)
        assert not any(seeded.iterdir()), "nothing may be downloaded into a refused folder"

    # pre-created by another local user (a chown needs root; the check itself does not)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    if os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(foreign, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534, not by this user"):
        ModelCache(cache_dir=foreign).bundle(remote, tracking)
    assert not any(foreign.iterdir())


def test_an_older_version_without_a_digest_is_sealed_once_with_the_command(
    tmp_path: Path, mlflow_uris: Any, unique: str
) -> None:
    from click.testing import CliRunner

    from storeml.cli import main
    from storeml.connectors.mlflow_registry import get_version
    from storeml.models.bundle_integrity import file_sha256

    tracking = mlflow_uris.tracking_uri
    name = f"test-{unique}-old"
    old = _register_bundle(tmp_path, tracking, mlflow_uris.artifact_root, name, digest=False)
    assert old.digest is None and get_version(tracking, None, name, old.version).digest is None

    def seal() -> Any:
        args = ["--home", str(tmp_path), "--mlflow-tracking-uri", tracking]
        return CliRunner().invoke(main, [*args, "models", "seal", name, "--version", old.version])

    result = seal()
    assert result.exit_code == 0, result.output
    sealed = get_version(tracking, None, name, old.version)
    index = tmp_path / name / "stores" / "index.json"  # what was logged
    assert sealed.digest == file_sha256(index) and sealed.digest in result.output
    cache = ModelCache()
    assert cache.bundle(sealed).model_for("s1")[1] == "store"
    assert cache.stats()["unverified_versions"] == 0
    again = seal()  # a recorded digest is never replaced
    assert again.exit_code != 0 and "already records digest" in again.output
