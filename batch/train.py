"""Train every store's models from history and register them in MLflow as one version per kind.

For each model kind (customer propensity, product category) one training run:

* builds the training set with the stream's own fold and feature code (:mod:`storeml.models`);
* fits a model per store with enough examples and the global fallback;
* logs, in the experiment named after the registered model (artifacts under
  ``settings.artifact_root/<model name>``), the parameters, aggregate metrics, per-store metrics
  (``metrics/store_metrics.csv``), the train/test split (``metrics/splits.csv``) and the bundle as
  a pyfunc model (``bundle``);
* registers it as a new version of the registered model and points ``alias`` at it, which the
  running stream picks up at its next micro-batch.

Loading the pyfunc with ``mlflow.pyfunc.load_model`` needs the ``storeml`` package importable
(its wrapper class lives there); the stream never goes through pyfunc.

:func:`train_package` does the same for a model package (:mod:`storeml.models.package`): the
registered model and the experiment are named after ``model.name``; the bundle's ``index.json``
records the package (framework, hyper-parameters, features) and its prediction section
(``metadata.package``, ``metadata.prediction``); the package's Python files are copied into the
bundle's ``code/`` folder (for people: store files carry their code inside, see
:mod:`storeml.models.base`); and the run logs the package files under ``package/``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from storeml.connectors.mlflow_registry import (
    ModelHandle,
    configure,
    ensure_experiment,
    log_bundle_model,
    register_bundle,
)
from storeml.connectors.monitor_registry import MONITORS_ARTIFACT
from storeml.errors import ModelError
from storeml.models.bundle_integrity import bundle_digest
from storeml.models.features import CUSTOMER_FEATURES
from storeml.models.package import ModelPackage, load_package
from storeml.models.store_models import make_pyfunc_model, write_bundle
from storeml.models.training import (
    FitResult,
    customer_training_set,
    fit_customer_models,
    fit_package_models,
    fit_product_models,
    package_training_set,
    product_training_set,
    summarise_metrics,
)
from storeml.settings import Settings

__all__ = ["train_and_register", "train_package", "train_kind", "pip_requirements", "KINDS"]

#: Model kinds, as keys of :func:`train_and_register`'s result.
KINDS = ("customer", "product")


def pip_requirements() -> list[str]:
    """Pinned requirements of the bundle pyfunc (given explicitly: inferring them costs ~4 s)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "scikit-learn", "scipy", "pandas", "numpy", "joblib"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            out.append(package)
    return out


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def train_kind(
    settings: Settings,
    *,
    kind: str,
    name: str,
    training: pd.DataFrame,
    fit: Callable[..., FitResult],
    features: Iterable[str],
    key_column: str,
    cutoff_ms: int,
    alias: str | None,
    params: dict[str, Any],
    fit_options: dict[str, Any],
    package: ModelPackage | None = None,
    monitors: Callable[[Path], dict[str, Any]] | None = None,
) -> ModelHandle:
    """Fit, log and register one model kind; returns the new version's handle.

    With ``package``, the bundle and the run also record the package (see the module docstring).
    ``monitors`` gets the written bundle folder and returns the version's monitors (kind ->
    Monitor, ``batch/monitor_train.py``); they are logged in the same run under ``monitors/``,
    before the version is registered and its alias moved.
    """
    import mlflow

    started = time.perf_counter()
    result = fit(training, **fit_options)
    fit_seconds = time.perf_counter() - started
    if result.global_model is None and not result.models:
        raise ModelError(
            f"cannot train {name!r}: {len(training)} training examples before cutoff {cutoff_ms}"
            " hold fewer than two classes; use more history or a later cutoff"
        )
    examples = dict(zip(result.metrics["store_id"], result.metrics["examples"], strict=True))
    splits = result.splits.copy()
    splits[key_column] = training[key_column].reindex(splits["row"]).to_numpy()
    experiment_id = ensure_experiment(
        name, f"{settings.artifact_root.rstrip('/')}/{name}", tracking_uri=settings.tracking_uri
    )
    with tempfile.TemporaryDirectory(prefix="storeml-train-") as tmp:
        folder = write_bundle(
            Path(tmp) / "stores",
            kind=kind,
            features=features,
            store_models=result.models,
            global_model=result.global_model,
            examples=examples,
            global_examples=int((result.splits["split"] == "train").sum()),
            metadata=_bundle_metadata(name, cutoff_ms, package),
        )
        if package is not None and package.code.sources:
            package.code.write(folder / "code")
        digest = bundle_digest(folder)  # recorded on the version, checked on every load
        reports = Path(tmp) / "metrics"
        reports.mkdir()
        result.metrics.to_csv(reports / "store_metrics.csv", index=False)
        splits.to_csv(reports / "splits.csv", index=False)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{kind}-{cutoff_ms}") as run:
            mlflow.log_params(
                {
                    "kind": kind,
                    "cutoff_ms": cutoff_ms,
                    "examples": len(training),
                    **params,
                    **fit_options,
                }
            )
            metrics = summarise_metrics(result.metrics)
            metrics["fit_seconds"] = fit_seconds
            mlflow.log_metrics(_finite(metrics))
            mlflow.log_artifacts(str(reports), artifact_path="metrics")
            requirements = pip_requirements()
            if package is not None:
                files = Path(tmp) / "package"
                files.mkdir()
                for path in package.files():
                    shutil.copy2(path, files / path.name)
                mlflow.log_artifacts(str(files), artifact_path="package")
                requirements += [r for r in package.requirements if r not in requirements]
            if monitors is not None:
                fitted = monitors(folder)
                if fitted:
                    watch = Path(tmp) / "monitors"
                    watch.mkdir()
                    for monitor_kind, monitor in fitted.items():
                        monitor.save(watch / f"{monitor_kind}.joblib")
                    mlflow.log_artifacts(str(watch), artifact_path=MONITORS_ARTIFACT)
            info = log_bundle_model(
                folder,
                make_pyfunc_model(),
                requirements,
                metadata={"kind": kind, "stores_with_model": len(result.models)},
            )
            run_id = run.info.run_id
    tags = {"kind": kind, "cutoff_ms": str(cutoff_ms), "stores_with_model": str(len(result.models))}
    description = f"storeml per-store {kind} models: one file per store plus a global fallback"
    if package is not None:
        prediction = package.config.prediction
        tags.update(
            {
                "package": package.name,
                "service": prediction.service,
                "prediction_version": prediction.version,
            }
        )
        description = package.config.model.description or description
    return register_bundle(
        settings.tracking_uri,
        settings.registry_uri,
        name,
        info.model_uri,
        run_id=run_id,
        alias=alias,
        tags=tags,
        description=description,
        digest=digest,
    )


def _bundle_metadata(name: str, cutoff_ms: int, package: ModelPackage | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"model_name": name, "cutoff_ms": int(cutoff_ms)}
    if package is not None:
        metadata["package"] = package.describe()
        metadata["prediction"] = package.prediction_dict()
    return metadata


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{key}": value for key, value in values.items()}


def train_package(
    settings: Settings,
    package_dir: str | Path | ModelPackage,
    facts: pd.DataFrame,
    cutoff_ms: int,
    stores: Iterable[str] | None = None,
    alias: str | None = "challenger",
    **fit_options: Any,
) -> ModelHandle:
    """Validate the package, train one model per store from ``facts`` and register a version.

    The registered model (and the MLflow experiment) is named ``model.name`` of the package;
    ``alias`` (None: no alias) points at the new version. ``stores`` limits training to those
    stores (the global fallback then learns from them only); a store without history is an
    error, not silently skipped. ``fit_options`` override ``model.training`` (``min_examples``,
    ``seed``...).
    Raises :class:`~storeml.models.package.PackageError` for an invalid package and
    :class:`ModelError` when the history holds fewer than two classes.
    """
    package = package_dir if isinstance(package_dir, ModelPackage) else load_package(package_dir)
    configure(settings.tracking_uri, settings.registry_uri)
    if stores is not None:
        wanted = set(stores)
        present = set(facts["store_id"].astype(str).unique())
        unknown = sorted(wanted - present)
        if unknown:
            some = ", ".join(sorted(present)[:5]) + (", ..." if len(present) > 5 else "")
            raise ModelError(
                f"cannot train {package.name!r} for store(s) {', '.join(unknown)}: no history"
                f" for them ({len(present)} stores have history: {some}); check the store ids"
            )
        facts = facts[facts["store_id"].isin(wanted)]
    training_options = package.config.model.training.model_dump(exclude={"horizon_days"})
    options = {**training_options, **fit_options}
    model = package.config.model
    prediction = package.config.prediction
    framework = model.framework
    params: dict[str, Any] = {
        "package": package.name,
        "stores": int(facts["store_id"].nunique()),
        "framework": getattr(framework, "estimator", None)
        or f"{framework.file}:{framework.class_name}",  # type: ignore[union-attr]
        "features": ",".join(package.feature_names),
        "prediction_service": prediction.service,
        "prediction_version": prediction.version,
        "prediction_schedule": prediction.schedule or "",
        **_flat("hp.", dict(model.hyperparameters)),
        **_flat("global_hp.", dict(model.global_hyperparameters)),
    }
    return train_kind(
        settings,
        kind=package.kind,
        name=package.name,
        training=package_training_set(package, facts, cutoff_ms),
        fit=lambda training, **opts: fit_package_models(package, training, **opts),
        features=package.feature_names,
        key_column="customer_id" if package.kind == "customer" else "product_id",
        cutoff_ms=cutoff_ms,
        alias=alias,
        params=params,
        fit_options=options,
        package=package,
        monitors=_monitors(settings, package.kind, package.name, facts, cutoff_ms),
    )


def _monitors(
    settings: Settings, kind: str, name: str, facts: pd.DataFrame, cutoff_ms: int
) -> Callable[[Path], dict[str, Any]]:
    def fit(folder: Path) -> dict[str, Any]:
        from storeml.batch.monitor_train import fit_monitors, monitor_options

        return fit_monitors(
            kind,
            folder,
            facts,
            monitor_options(settings),
            model_name=name,
            reference_days=settings.monitor_reference_days,
        )

    return fit


def train_and_register(
    settings: Settings,
    facts: pd.DataFrame,
    cutoff_ms: int,
    stores: Iterable[str] | None = None,
    alias: str | None = "champion",
    *,
    kinds: Iterable[str] = KINDS,
    min_examples: int = 20,
    seed: int = 0,
) -> dict[str, ModelHandle]:
    """Train every store's models from ``facts`` before ``cutoff_ms`` and register them.

    ``stores`` limits training to those stores (default: every store in ``facts``). Returns the
    new version of each model kind, keyed ``"customer"`` (``settings.customer_model``) and
    ``"product"`` (``settings.product_model``); ``alias`` (None: no alias) points at them.
    Customers are labelled by whether they order again at or after the cutoff; products learn
    their category from facts before the cutoff.
    """
    configure(settings.tracking_uri, settings.registry_uri)
    if stores is not None:
        facts = facts[facts["store_id"].isin(set(stores))]
    fit_options = {"min_examples": min_examples, "seed": seed}
    params = {"stores": int(facts["store_id"].nunique())}
    handles: dict[str, ModelHandle] = {}
    for kind in kinds:
        if kind == "customer":
            handles[kind] = train_kind(
                settings,
                kind=kind,
                name=settings.customer_model,
                training=customer_training_set(facts, cutoff_ms),
                fit=fit_customer_models,
                features=CUSTOMER_FEATURES,
                key_column="customer_id",
                cutoff_ms=cutoff_ms,
                alias=alias,
                params=params,
                fit_options=fit_options,
                monitors=_monitors(settings, kind, settings.customer_model, facts, cutoff_ms),
            )
        elif kind == "product":
            handles[kind] = train_kind(
                settings,
                kind=kind,
                name=settings.product_model,
                training=product_training_set(facts, cutoff_ms),
                fit=fit_product_models,
                features=("title", "description"),
                key_column="product_id",
                cutoff_ms=cutoff_ms,
                alias=alias,
                params=params,
                fit_options=fit_options,
                monitors=_monitors(settings, kind, settings.product_model, facts, cutoff_ms),
            )
        else:
            raise ModelError(f"unknown model kind {kind!r}; use one of {KINDS}")
    return handles
