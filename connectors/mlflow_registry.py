"""MLflow tracking and model registry: experiments, bundle registration and alias resolution.

storeml keeps ONE registered model per model kind (``settings.customer_model``,
``settings.product_model``); a version's artifact is a pyfunc model whose ``artifacts/stores``
folder holds one small model file per store plus a global fallback (see
:mod:`storeml.models.store_models`). The alias ``settings.serving_alias`` ("champion") names the
version the stream serves.

The model lifecycle (``storeml models promote / compare / list``) reads the registry through
:func:`get_version`, :func:`promote`, :func:`list_models` and :func:`read_run_table` (a run's
CSV artifact, such as the per-store metrics every training logs at
:data:`STORE_METRICS_ARTIFACT`); they raise :class:`ModelError` naming the model, version or alias
that does not exist and what does.

Every version storeml registers records the SHA-256 of its bundle's ``index.json`` as the tag
:data:`DIGEST_TAG` (``storeml.bundle_sha256``); handles carry it to the executors, which check the
files against it before unpickling them. :func:`record_digest` adds it to a version registered
without one (``storeml models seal``).

The stream resolves its aliases through :class:`storeml.connectors.registry_aliases.AliasResolver`
(which calls :func:`resolve_alias` with a deadline and remembers the last versions) on the driver
once per micro-batch (one registry call per alias, a few milliseconds) and ships the small,
picklable :class:`ModelHandle` to executors, which open
the bundle through the per-process :func:`storeml.models.store_models.get_model_cache`; so a moved
alias is served from the next micro-batch on, and executors never talk to the registry.

``import mlflow`` costs 1.5-1.8 s, so it happens inside the functions that need it; importing this
module is cheap. Clients are created on first use and kept per (tracking, registry) URI pair.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storeml.errors import ConnectorError, ModelError
from storeml.redaction import redact_url

if TYPE_CHECKING:
    import pandas as pd
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
    "record_digest",
    "RegisteredModelInfo",
    "get_model_info",
    "list_models",
    "get_version",
    "resolve_version",
    "promote",
    "read_run_table",
    "BUNDLE_ARTIFACT_PATH",
    "DIGEST_TAG",
    "BUNDLE_STORES_KEY",
    "STORE_METRICS_ARTIFACT",
    "SPLITS_ARTIFACT",
]

#: ``name`` given to ``mlflow.pyfunc.log_model`` for the bundle of a run.
BUNDLE_ARTIFACT_PATH = "bundle"
#: Key of the per-store folder in the pyfunc's ``artifacts``; it lands at
#: ``<model root>/artifacts/<BUNDLE_STORES_KEY>``.
BUNDLE_STORES_KEY = "stores"
#: Run artifact with one row of test metrics per store (written by every training).
STORE_METRICS_ARTIFACT = "metrics/store_metrics.csv"
#: Run artifact with the train/test split of every training row.
SPLITS_ARTIFACT = "metrics/splits.csv"
#: Model-version tag with the SHA-256 (hex) of the bundle's ``index.json``, which lists the
#: SHA-256 of every other file (:mod:`storeml.models.bundle_integrity`).
DIGEST_TAG = "storeml.bundle_sha256"

_clients: dict[tuple[str, str], MlflowClient] = {}
_download_uris: dict[tuple[str, str, str], str] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelHandle:
    """One registered model version, resolved on the driver and shipped to executors.

    ``source`` is where the version's artifacts can be downloaded from (for a local artifact store
    a ``file://`` URI of the pyfunc model root, usable as a folder as is). ``digest`` is the
    SHA-256 of the bundle's ``index.json`` recorded at registration (None: the version has none).
    Small and picklable.
    """

    name: str
    version: str
    alias: str | None
    source: str
    run_id: str | None = None
    digest: str | None = None

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
                        redact_url(
                            f"cannot open MLflow at tracking_uri={key[0]!r},"
                            f" registry_uri={key[1]!r}: {exc}; check"
                            " STOREML_MLFLOW_TRACKING_URI / _REGISTRY_URI"
                        )
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
    digest: str | None = None,
) -> ModelHandle:
    """Register ``model_uri`` (a logged model) as a new version of ``name``, optionally aliased.

    The registered model is created on first use. ``digest``
    (:func:`~storeml.models.bundle_integrity.bundle_digest` of the bundle folder that was logged)
    is recorded as the version's tag :data:`DIGEST_TAG`; executors refuse files that do
    not match it. Returns the handle of the new version.
    """
    import mlflow

    tags = {**(tags or {}), **({DIGEST_TAG: digest} if digest else {})}
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
        name=name,
        version=str(version.version),
        alias=alias,
        source=source,
        run_id=run_id,
        digest=digest or None,
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
    changes, so it is looked up once per version and process. Any other failure (server down,
    SQLite locked, a timeout) raises :class:`ConnectorError`, so "no such alias" and "the registry
    did not answer" are never confused.
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
            f" {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # connection and database errors MLflow lets through
        raise ConnectorError(
            f"cannot resolve {name}@{alias} in the MLflow registry {registry_uri or tracking_uri}:"
            f" {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    key = (registry_uri or tracking_uri, name, str(version.version))
    source = _download_uris.get(key)
    if source is None:
        try:
            source = client.get_model_version_download_uri(name, version.version)
        except Exception as exc:  # MlflowException, or a connection error
            raise ConnectorError(
                f"cannot find the artifacts of {name} version {version.version}: {_first_line(exc)}"
            ) from exc
        _download_uris[key] = source
    return ModelHandle(
        name=name,
        version=str(version.version),
        alias=alias,
        source=source,
        run_id=version.run_id,
        digest=(version.tags or {}).get(DIGEST_TAG),
    )


def _first_line(exc: BaseException) -> str:
    """The first line of an error (MLflow's database errors carry the whole SQL statement)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def record_digest(
    tracking_uri: str, registry_uri: str | None, name: str, version: str | int
) -> ModelHandle:
    """Record the digest of a version registered without one; returns its handle with it.

    The digest is computed from the ``index.json`` now in the artifact store, so it blesses the
    files as they are: run it only for versions whose artifacts you trust (e.g. registered by an
    older storeml). A version that already has a digest keeps it (:class:`ModelError`).
    """
    import tempfile

    import mlflow

    handle = get_version(tracking_uri, registry_uri, name, version)
    if handle.digest:
        raise ModelError(
            f"model {name!r} version {handle.version} already records digest {handle.digest};"
            " a recorded digest is never replaced (register a new version instead)"
        )
    with tempfile.TemporaryDirectory(prefix="storeml-digest-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{handle.stores_uri}/index.json",
                dst_path=tmp,
                tracking_uri=tracking_uri,
                registry_uri=registry_uri,
            )
        except Exception as exc:
            raise ConnectorError(
                f"cannot download index.json of {name} version {handle.version} from"
                f" {handle.stores_uri}: {_first_line(exc)}"
            ) from exc
        digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    try:
        get_client(tracking_uri, registry_uri).set_model_version_tag(
            name, handle.version, DIGEST_TAG, digest
        )
    except mlflow.exceptions.MlflowException as exc:
        raise ConnectorError(
            f"cannot tag {name} version {handle.version} with its digest: {_first_line(exc)}"
        ) from exc
    return ModelHandle(
        name=name,
        version=handle.version,
        alias=None,
        source=handle.source,
        run_id=handle.run_id,
        digest=digest,
    )


# --- lifecycle: list, look up, promote, read run artifacts -------------------------------------
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@dataclass(frozen=True)
class RegisteredModelInfo:
    """A registered model as ``storeml models list`` shows it.

    ``aliases`` maps alias -> version; ``versions`` are the version numbers, oldest first.
    """

    name: str
    description: str
    aliases: dict[str, str]
    versions: tuple[str, ...]

    @property
    def latest(self) -> str | None:
        return self.versions[-1] if self.versions else None

    def describe(self) -> str:
        """``versions 1-3; aliases champion -> 1, challenger -> 3`` (for messages)."""
        versions = ", ".join(self.versions) or "none"
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(self.aliases.items())) or "none"
        return f"versions: {versions}; aliases: {aliases}"


def _info(client: MlflowClient, model: Any) -> RegisteredModelInfo:
    versions = client.search_model_versions(f"name='{model.name}'")
    numbers = sorted((str(v.version) for v in versions), key=int)
    aliases = {str(alias): str(version) for alias, version in (model.aliases or {}).items()}
    return RegisteredModelInfo(model.name, model.description or "", aliases, tuple(numbers))


def get_model_info(
    tracking_uri: str, registry_uri: str | None, name: str
) -> RegisteredModelInfo | None:
    """Model ``name`` with its aliases and versions, or None when it is not registered."""
    import mlflow

    client = get_client(tracking_uri, registry_uri)
    try:
        return _info(client, client.get_registered_model(name))
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) in _MISSING:
            return None
        raise ConnectorError(
            f"cannot read model {name!r} from the MLflow registry"
            f" {registry_uri or tracking_uri}: {exc}"
        ) from exc


def list_models(
    tracking_uri: str, registry_uri: str | None, contains: str = ""
) -> list[RegisteredModelInfo]:
    """Every registered model whose name contains ``contains``, sorted by name.

    One registry call for the models and one per model for its versions.
    """
    import mlflow

    client = get_client(tracking_uri, registry_uri)
    try:
        models: list[Any] = []
        token = None
        while True:
            page = client.search_registered_models(max_results=200, page_token=token)
            models.extend(m for m in page if contains.lower() in m.name.lower())
            token = page.token
            if not token:
                break
        return sorted((_info(client, m) for m in models), key=lambda m: m.name)
    except mlflow.exceptions.MlflowException as exc:
        raise ConnectorError(
            f"cannot list models in the MLflow registry {registry_uri or tracking_uri}: {exc}"
        ) from exc


def _not_registered(tracking_uri: str, registry_uri: str | None, name: str) -> ModelError:
    known = [m.name for m in list_models(tracking_uri, registry_uri)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ModelError(
        f"no registered model {name!r} in {registry_uri or tracking_uri}; {hint}registered:"
        f" {', '.join(known) or 'none'} (train one with `storeml models train PACKAGE`)"
    )


def get_version(
    tracking_uri: str, registry_uri: str | None, name: str, version: str | int
) -> ModelHandle:
    """Version ``version`` of model ``name``; :class:`ModelError` names what exists instead."""
    import mlflow

    client = get_client(tracking_uri, registry_uri)
    try:
        found = client.get_model_version(name, str(version))
        source = client.get_model_version_download_uri(name, found.version)
        digest = (found.tags or {}).get(DIGEST_TAG)
    except mlflow.exceptions.MlflowException as exc:
        if _error_code(exc) not in (*_MISSING, "INVALID_PARAMETER_VALUE"):
            raise ConnectorError(f"cannot read {name} version {version}: {exc}") from exc
        info = get_model_info(tracking_uri, registry_uri, name)
        if info is None:
            raise _not_registered(tracking_uri, registry_uri, name) from exc
        raise ModelError(
            f"model {name!r} has no version {version!r} ({info.describe()}); pick one of its"
            " versions"
        ) from exc
    return ModelHandle(
        name=name,
        version=str(found.version),
        alias=None,
        source=source,
        run_id=found.run_id,
        digest=digest,
    )


def resolve_version(
    tracking_uri: str, registry_uri: str | None, name: str, ref: str
) -> ModelHandle:
    """``ref`` of model ``name``: a version number (``"3"``) or an alias (``"champion"``).

    Unlike :func:`resolve_alias` (which the stream calls and which returns None), a missing
    model, version or alias raises :class:`ModelError` listing the model's versions and aliases.
    """
    if ref.isdigit():
        return get_version(tracking_uri, registry_uri, name, ref)
    handle = resolve_alias(tracking_uri, registry_uri, name, ref)
    if handle is not None:
        return handle
    info = get_model_info(tracking_uri, registry_uri, name)
    if info is None:
        raise _not_registered(tracking_uri, registry_uri, name)
    raise ModelError(
        f"model {name!r} has no alias {ref!r} ({info.describe()}); point it at a version with"
        f" `storeml models promote {name} --version V --alias {ref}` or train one with"
        f" `storeml models train PACKAGE --alias {ref}`"
    )


def promote(
    tracking_uri: str, registry_uri: str | None, name: str, version: str | int, alias: str
) -> tuple[ModelHandle | None, ModelHandle]:
    """Point ``alias`` of ``name`` at ``version``; returns (the version it left or None, the new).

    The version must exist (:class:`ModelError` lists the model's versions otherwise). A stream
    serving ``alias`` serves the new version from its next micro-batch.
    """
    target = get_version(tracking_uri, registry_uri, name, version)
    previous = resolve_alias(tracking_uri, registry_uri, name, alias)
    set_alias(tracking_uri, registry_uri, name, alias, target.version)
    return previous, ModelHandle(
        name=name,
        version=target.version,
        alias=alias,
        source=target.source,
        run_id=target.run_id,
        digest=target.digest,
    )


def read_run_table(
    tracking_uri: str,
    run_id: str,
    artifact_path: str = STORE_METRICS_ARTIFACT,
    *,
    text_columns: Sequence[str] = ("store_id",),
) -> pd.DataFrame:
    """The CSV artifact ``artifact_path`` of run ``run_id`` as a DataFrame.

    ``text_columns`` are read as strings (store ids such as ``"007"`` stay as written).
    :class:`ModelError` when the run has no such artifact (e.g. a version registered by hand).
    """
    import mlflow
    import pandas as pd

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, tracking_uri=tracking_uri
        )
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise ModelError(
            f"run {run_id} has no artifact {artifact_path!r} ({exc}); only versions trained by"
            " storeml (`storeml models train`, `storeml train`) log it"
        ) from exc
    return pd.read_csv(local, dtype=dict.fromkeys(text_columns, str))
