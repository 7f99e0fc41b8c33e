"""Registering a bundle folder the way training does, for tests that need a hand-made version."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def log_and_register(
    folder: Path,
    tracking_uri: str,
    artifact_root: str,
    name: str,
    alias: str | None,
    *,
    digest: str | None | bool = True,
) -> Any:
    """Log ``folder`` (a bundle named ``stores``) in a run and register it as a version of ``name``.

    ``digest``: True records the folder's digest as training does, False none (an old version),
    a string that value (a folder changed after its digest was taken).
    """
    import mlflow

    from storeml.connectors.mlflow_registry import (
        configure,
        ensure_experiment,
        log_bundle_model,
        register_bundle,
    )
    from storeml.models.bundle_integrity import bundle_digest
    from storeml.models.store_models import make_pyfunc_model

    recorded = bundle_digest(folder) if digest is True else (digest or None)
    configure(tracking_uri)
    experiment = ensure_experiment(name, f"{artifact_root}/{name}", tracking_uri=tracking_uri)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_bundle_model(folder, make_pyfunc_model(), ["storeml"])
    return register_bundle(
        tracking_uri,
        None,
        name,
        info.model_uri,
        run_id=run.info.run_id,
        alias=alias,
        digest=recorded,
    )
