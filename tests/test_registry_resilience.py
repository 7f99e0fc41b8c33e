"""Alias resolution under a misspelt alias, a removed alias and a registry outage (real MLflow).

The registry is real each time: the session's SQLite store, a private SQLite store that another
connection locks (what a long write or a stuck tool does to SQLite), a real ``mlflow server``
that is stopped mid-run, and a port where nothing listens. The stream's driver side is driven
directly through :meth:`EnrichBatch.resolve_models`, the call every micro-batch makes first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from storeml.connectors.mlflow_registry import (
    ModelHandle,
    get_client,
)
from storeml.connectors.registry_aliases import AliasResolver
from storeml.errors import ConnectorError, ModelError
from storeml.models.store_models import ModelCache, write_bundle
from storeml.settings import Settings
from storeml.stack import free_port, init_mlflow
from storeml.streams.enrich import EnrichBatch, job_context
from tests.registry import log_and_register


def _register(
    tmp: Path, tracking_uri: str, artifact_root: str, name: str, alias: str | None
) -> Any:
    """Log a one-store customer bundle in a run and register it as a new version of ``name``."""
    rng = np.random.default_rng(len(name))
    x = rng.normal(size=(200, 7))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype("int64"))
    folder = write_bundle(
        tmp / f"{name}-{time.monotonic_ns()}" / "stores",
        kind="customer",
        features=["order_count"],
        store_models={"s1": model},
        global_model=model,
    )
    return log_and_register(folder, tracking_uri, artifact_root, name, alias)


def _both(tmp: Path, settings: Settings, alias: str | None = "champion") -> dict[str, Any]:
    root = settings.artifact_root
    return {
        "customer": _register(tmp, settings.tracking_uri, root, settings.customer_model, alias),
        "product": _register(tmp, settings.tracking_uri, root, settings.product_model, alias),
    }


def _batch(settings: Settings, **changes: Any) -> EnrichBatch:
    return EnrichBatch(dataclasses.replace(job_context(settings), **changes))


def _versions(handles: dict[str, ModelHandle | None]) -> dict[str, str | None]:
    return {kind: h.version if h else None for kind, h in handles.items()}


def test_a_missing_or_misspelt_alias_at_start_is_an_error_naming_model_and_alias(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _both(tmp_path, settings)
    batch = _batch(settings, serving_alias="champoin")
    with pytest.raises(ModelError) as failed:
        batch.resolve_models()
    message = str(failed.value)
    assert repr(settings.customer_model) in message and "'champoin'" in message
    assert "did you mean 'champion'?" in message and "champion -> 1" in message

    with pytest.raises(ModelError, match="no such registered model"):
        _batch(settings, customer_model=settings.customer_model + "x").resolve_models()

    # the shadow alias is optional: missing at start is a warning (once), no shadow scoring
    batch = _batch(settings)
    with caplog.at_level(logging.WARNING, logger="storeml.registry"):
        assert _versions(batch.resolve_models()) == {"customer": "1", "product": "1"}
        assert batch.resolve_models("challenger") == {"customer": None, "product": None}
        assert batch.resolve_models("challenger") == {"customer": None, "product": None}
    warned = [r for r in caplog.records if "no alias 'challenger'" in r.getMessage()]
    assert len(warned) == 2  # one per model, not one per batch
    # an empty alias asks nothing: shadow scoring (or serving) disabled on purpose
    assert batch.resolve_models("") == {"customer": None, "product": None}
    assert _batch(settings, serving_alias="").resolve_models() == {
        "customer": None,
        "product": None,
    }


def test_an_alias_deleted_mid_run_keeps_the_last_version_logged_once_and_counted(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _both(tmp_path, settings)
    shadow = _register(
        tmp_path, settings.tracking_uri, settings.artifact_root, settings.customer_model, None
    )
    client = get_client(settings.tracking_uri)
    client.set_registered_model_alias(settings.customer_model, "challenger", shadow.version)
    batch = _batch(settings)
    assert batch.resolve_models() == first
    assert batch.resolve_models("challenger")["customer"].version == shadow.version
    batch._aliases.take_counts()

    client.delete_registered_model_alias(settings.customer_model, "champion")
    client.delete_registered_model_alias(settings.customer_model, "challenger")
    with caplog.at_level(logging.WARNING, logger="storeml.registry"):
        for _ in range(3):
            served = batch.resolve_models()
            assert served["customer"] == first["customer"]  # kept, not "no model"
            assert served["product"] == first["product"]
            assert batch.resolve_models("challenger")["customer"] is None  # shadow ends
            counts = batch._aliases.take_counts()
            assert counts["missing"] == 1 and counts["failures"] == 0
    kept = [
        r for r in caplog.records if "no longer exists: still serving version" in r.getMessage()
    ]
    assert len(kept) == 1 and settings.customer_model in kept[0].getMessage()
    assert sum("shadow alias" in r.getMessage() for r in caplog.records) == 1

    # the alias comes back (at another version): served from the next call on
    client.set_registered_model_alias(settings.customer_model, "champion", shadow.version)
    assert batch.resolve_models()["customer"] == dataclasses.replace(shadow, alias="champion")
    assert batch._aliases.take_counts()["missing"] == 0


def test_a_locked_sqlite_registry_mid_run_keeps_serving_within_the_time_bound(
    settings: Settings, tmp_path: Path
) -> None:
    """Another connection holds SQLite's write lock: MLflow's reads wait ~20 s, the batch 1 s."""
    db = tmp_path / "registry.db"
    tracking = f"sqlite:///{db}"
    root = (tmp_path / "artifacts").as_uri()
    init_mlflow(tracking, root)
    private = settings.model_copy(
        update={"mlflow_tracking_uri": tracking, "mlflow_artifact_root": root}
    )
    first = _both(tmp_path, private)
    batch = _batch(private, registry_timeout_s=1.0)
    assert batch.resolve_models() == first
    batch._aliases.take_counts()

    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        assert batch.resolve_models() == first  # the registry is stuck: the last versions
        waited = time.monotonic() - started
        assert 0.9 <= waited < 3.0, f"a batch waited {waited:.1f}s for a stuck registry"
        started = time.monotonic()
        for _ in range(5):  # later batches do not queue behind the stuck call
            assert batch.resolve_models() == first
            assert batch.resolve_models("challenger") == {"customer": None, "product": None}
        assert time.monotonic() - started < 0.5
        counts = batch._aliases.take_counts()
        assert counts["failures"] == 11 and counts["stale"] == 12
        assert 0.9 <= counts["seconds"] < 3.5
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    # the registry answers again: a version promoted meanwhile is served without a restart
    second = _register(tmp_path, tracking, root, private.customer_model, "champion")
    deadline = time.monotonic() + 90
    while batch.resolve_models()["customer"] != second:
        assert time.monotonic() < deadline, "the resolver never asked the registry again"
        time.sleep(0.5)
    counts = batch._aliases.take_counts()
    assert batch._aliases.totals.failures >= 11


def _mlflow_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    db = tmp / "server.db"
    init_mlflow(f"sqlite:///{db}", (tmp / "server-artifacts").as_uri())
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            (tmp / "server-artifacts").as_uri(),
            "--no-serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    from urllib.request import urlopen

    deadline = time.monotonic() + 300  # 10-14 s on a quiet machine, minutes on a loaded one
    while True:
        try:
            with urlopen(f"{uri}/health", timeout=2) as response:  # noqa: S310 - local test server
                if response.status == 200:
                    return process, uri
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server on {uri} did not start (exit {process.poll()})")
        time.sleep(0.5)


@pytest.mark.slow  # an `mlflow server` takes 10 s to minutes to start here
def test_an_mlflow_server_stopped_mid_run_keeps_serving_the_last_versions(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process, uri = _mlflow_server(tmp_path)
    try:
        remote = settings.model_copy(
            update={
                "mlflow_tracking_uri": uri,
                "mlflow_artifact_root": (tmp_path / "server-artifacts").as_uri(),
            }
        )
        first = _both(tmp_path, remote)
        batch = _batch(remote, registry_timeout_s=1.0)
        assert batch.resolve_models() == first
        assert first["customer"].digest
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    with caplog.at_level(logging.WARNING, logger="storeml.registry"):
        started = time.monotonic()
        for _ in range(4):
            assert batch.resolve_models() == first
        assert time.monotonic() - started < 3.0, "MLflow's HTTP retries held a batch"
    counts = batch._aliases.take_counts()
    assert counts["failures"] == 4 and counts["stale"] == 8
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # not per batch
    # what it keeps serving still opens and scores on the executors (a local artifact store)
    bundle = ModelCache().bundle(first["customer"])
    assert bundle.model_for("s1")[1] == "store"


def test_a_registry_down_at_start_fails_fast_with_a_clear_error(settings: Settings) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    resolver = AliasResolver(uri, None, timeout_s=1.0, first_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as failed:
        resolver.resolve({"customer": settings.customer_model}, "champion", required=True)
    assert time.monotonic() - started < 4.0
    message = str(failed.value)
    assert uri in message and f"{settings.customer_model}@champion" in message
    assert "nothing to serve" in message
    # the optional shadow alias never stops a start
    assert resolver.resolve({"customer": "m"}, "challenger", required=False) == {"customer": None}
