"""MLflow tracking and model registry: experiments, bundle registration and alias resolution.

storeml keeps ONE registered model per model kind (``settings.customer_model``,
``settings.product_model``); a version's artifact is a pyfunc model whose ``artifacts/stores``
folder holds one small model file per store plus a global fallback (see
:mod:`storeml.models.store_models`). The alias ``settings.serving_alias`` ("champion") names the
version the stream serves.

The stream calls :func:`resolve_alias` on the driver once per micro-batch (one registry call,
a few milliseconds) and ships the small, picklable :class:`ModelHandle` to executors, which open
the bundle through the per-process :func:`storeml.models.store_models.get_model_cache`; so a moved
alias is served from the next micro-batch on, and executors never talk to the registry.

``import mlflow`` costs 1.5-1.8 s, so it happens inside the functions that need it; importing this
module is cheap. Clients are created on first use and kept per (tracking, registry) URI pair.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storeml.errors import ConnectorError, ModelError

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "ModelHandle",
    "configure",
    "get_client",
    "ensure_experiment",
    "log_bundle_model",
    "register_bundle",
    "set_alias",
    "resolve_alias",
    "BUNDLE_ARTIFACT_PATH",
    "BUNDLE_STORES_KEY",
]

#: ``name`` given to ``mlflow.pyfunc.log_model`` for the bundle of a run.
BUNDLE_ARTIFACT_PATH = "bundle"
#: Key of the per-store folder in the pyfunc's ``artifacts``; it lands at
#: ``<model root>/artifacts/<BUNDLE_STORES_KEY>``.
BUNDLE_STORES_KEY = "stores"

_clients: dict[tuple[str, str], MlflowClient] = {}
_download_uris: dict[tuple[str, str, str], str] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelHandle:
    """One registered model version, resolved on the driver and shipped to executors.

    ``source`` is where the version's artifacts can be downloaded from (for a local artifact store
    a ``file://`` URI of the pyfunc model root, usable as a folder as is). Small and picklable.
    """

    name: str
    version: str
    alias: str | None
    source: str
    run_id: str | None = None

    @property
    def stores_uri(self) -> str:
        """URI of the version's per-store bundle folder (``<source>/artifacts/stores``)."""
        return f"{self.source.rstrip('/')}/artifacts/{BUNDLE_STORES_KEY}"


def configure(tracking_uri: str, registry_uri: str | None = None) -> None:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``...) at these stores."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)


def get_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """The process's ``MlflowClient`` for these URIs (created once; opening SQLite is not free)."""
    key = (tracking_uri, registry_uri or tracking_uri)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                from mlflow import MlflowClient

                try:
                    client = MlflowClient(tracking_uri=key[0], registry_uri=key[1])
                except Exception as exc:  # MLflow raises many types for unusable stores
                    raise ConnectorError(
                        f"cannot open MLflow at tracking_uri={key[0]!r}, registry_uri={key[1]!r}:"
                        f" {exc}; check STOREML_MLFLOW_TRACKING_URI / _REGISTRY_URI"
                    ) from exc
                _clients[key] = client
    return client


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def ensure_experiment(name: str, artifact_location: str, *, tracking_uri: str | None = None) -> str:
    """Id of experiment ``name``, created with ``artifact_location`` when it does not exist.

    Passing the location explicitly keeps artifacts out of ``./mlruns`` of the working folder.
    An existing experiment keeps the location it was created with; a deleted one is restored.
    """
    import mlflow

    client = get_client(tracking_uri or mlflow.get_tracking_uri())
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":  # names stay taken until purged
                client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) == "RESOURCE_ALREADY_EXISTS":  # created concurrently
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return str(experiment.experiment_id)
        raise ConnectorError(
            f"cannot get or create MLflow experiment {name!r} at {artifact_location!r}: {exc}"
        ) from exc


def log_bundle_model(
    folder: str | Path,
    python_model: Any,
    pip_requirements: Sequence[str],
    *,
    name: str = BUNDLE_ARTIFACT_PATH,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """Log a bundle folder as a pyfunc model in the active run; returns MLflow's ``ModelInfo``.

    ``pip_requirements`` must be given: without it MLflow infers requirements in a subprocess,
    which costs ~4 s per model.
    """
    import mlflow

    # Known, harmless warnings: the wrapper is cloudpickled by reference to storeml, and the
    # input (any profile frame) has no fixed signature.
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts={BUNDLE_STORES_KEY: str(folder)},
            pip_requirements=list(pip_requirements),
            metadata=dict(metadata) if metadata else None,
        )
    except Exception as exc:
        raise ConnectorError(f"cannot log the model bundle in {folder}: {exc}") from exc
    finally:
        quiet.setLevel(level)


def register_bundle(
    tracking_uri: str,
    registry_uri: str | None,
    name: str,
    model_uri: str,
    *,
    run_id: str | None = None,
    alias: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> ModelHandle:
    """Register ``model_uri`` (a logged model) as a new version of ``name``, optionally aliased.

    The registered model is created on first use. Returns the handle of the new version.
    """
    import mlflow

    client = get_client(tracking_uri, registry_uri)
    try:
        try:
            client.create_registered_model(name, description=description)
        except mlflow.exceptions.MlflowException as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        logged = model_uri.startswith("models:/m-")
        model_id = model_uri.removeprefix("models:/") if logged else None
        version = client.create_model_version(
            name, source=model_uri, run_id=run_id, tags=dict(tags or {}), model_id=model_id
        )
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
        source = client.get_model_version_download_uri(name, version.version)
    except mlflow.exceptions.MlflowException as exc:
        raise ConnectorError(
            f"cannot register {model_uri!r} as a version of model {name!r} in {registry_uri}: {exc}"
        ) from exc
    return ModelHandle(
        name=name, version=str(version.version), alias=alias, source=source, run_id=run_id
    )


def set_alias(
    tracking_uri: str, registry_uri: str | None, name: str, alias: str, version: str | int
) -> None:
    """Point ``alias`` of model ``name`` at ``version`` (the stream follows within one batch)."""
    import mlflow

    try:
        get_client(tracking_uri, registry_uri).set_registered_model_alias(name, alias, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(
            f"cannot set alias {alias!r} of model {name!r} to version {version}: {exc};"
            " check that the model and version exist"
        ) from exc


def resolve_alias(
    tracking_uri: str, registry_uri: str | None, name: str, alias: str
) -> ModelHandle | None:
    """The version ``name@alias`` points at, or None when the model or the alias does not exist.

    One registry call (2-6 ms on SQLite) per call; the artifact location of a version never
    changes, so it is looked up once per version and process. Other registry failures raise
    :class:`ConnectorError`.
    """
    import mlflow

    client = get_client(tracking_uri, registry_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise ConnectorError(
            f"cannot resolve {name}@{alias} in the MLflow registry {registry_uri or tracking_uri}:"
            f" {exc}"
        ) from exc
    key = (registry_uri or tracking_uri, name, str(version.version))
    source = _download_uris.get(key)
    if source is None:
        try:
            source = client.get_model_version_download_uri(name, version.version)
        except mlflow.exceptions.MlflowException as exc:
            raise ConnectorError(
                f"cannot find the artifacts of {name} version {version.version}: {exc}"
            ) from exc
        _download_uris[key] = source
    return ModelHandle(
        name=name,
        version=str(version.version),
        alias=alias,
        source=source,
        run_id=version.run_id,
    )
