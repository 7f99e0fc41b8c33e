"""Monitors in the MLflow registry: logged in the run of their model version, loaded by alias.

Training logs each version's monitors (``models/monitor.py``) as ``monitors/<kind>.joblib`` in the
same MLflow run as the version's bundle, so promoting a version (moving its alias) brings its
monitors along. :class:`MonitorCatalog` resolves the served and shadow aliases of the customer and
product models, downloads the monitors of each version once per process and keeps them by
``(model name, version)``; the monitor app refreshes it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storeml.connectors.mlflow_registry import ModelHandle, get_version, resolve_alias
from storeml.errors import ConnectorError, ModelError

__all__ = ["MONITORS_ARTIFACT", "load_monitors", "MonitorCatalog", "Served"]

log = logging.getLogger(__name__)

#: Artifact folder of a run holding ``<kind>.joblib`` per monitor.
MONITORS_ARTIFACT = "monitors"


def load_monitors(tracking_uri: str, handle: ModelHandle) -> dict[str, Any]:
    """The monitors logged with version ``handle`` (kind -> Monitor); empty when it has none."""
    import mlflow

    from storeml.models.monitor import Monitor

    if handle.run_id is None:
        return {}
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=handle.run_id, artifact_path=MONITORS_ARTIFACT, tracking_uri=tracking_uri
        )
    except (mlflow.exceptions.MlflowException, OSError):
        return {}  # a version trained before monitors existed, or registered by hand
    out: dict[str, Any] = {}
    for path in sorted(Path(local).glob("*.joblib")):
        try:
            monitor = Monitor.load(path)
        except ModelError as exc:
            log.warning(
                "%s version %s: cannot load monitor %s: %s",
                handle.name,
                handle.version,
                path.name,
                exc,
            )
            continue
        monitor.model_name = handle.name
        monitor.version = str(handle.version)
        out[path.stem] = monitor
    return out


@dataclass(frozen=True)
class Served:
    """What one registered model serves now: champion and challenger versions (None: unset)."""

    name: str
    champion: str | None
    challenger: str | None


class MonitorCatalog:
    """Monitors of the versions the stream serves, by model name and version (thread safe)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._monitors: dict[tuple[str, str], dict[str, Any]] = {}
        self._served: dict[str, Served] = {}
        self.errors = 0

    @property
    def model_names(self) -> tuple[str, str]:
        return (self.settings.customer_model, self.settings.product_model)

    def refresh(self) -> None:
        """Resolve the aliases and load monitors of new versions (blocking: run in a thread)."""
        s = self.settings
        for name in self.model_names:
            versions: list[str | None] = []
            for alias in (s.serving_alias, s.shadow_alias):
                handle = None
                if alias:
                    try:
                        handle = resolve_alias(s.tracking_uri, s.registry_uri, name, alias)
                    except ConnectorError as exc:
                        self.errors += 1
                        log.warning("monitor: %s", exc)
                        served = self._served.get(name)
                        versions.append(
                            None
                            if served is None
                            else getattr(
                                served, "champion" if alias == s.serving_alias else "challenger"
                            )
                        )
                        continue
                versions.append(None if handle is None else str(handle.version))
                if handle is not None:
                    self._ensure(handle)
            with self._lock:
                self._served[name] = Served(name, versions[0], versions[1])

    def _ensure(self, handle: ModelHandle) -> dict[str, Any]:
        key = (handle.name, str(handle.version))
        with self._lock:
            if key in self._monitors:
                return self._monitors[key]
        monitors = load_monitors(self.settings.tracking_uri, handle)
        with self._lock:
            self._monitors[key] = monitors
        return monitors

    def load_version(self, name: str, version: str) -> dict[str, Any]:
        """Monitors of ``name`` version ``version`` (blocking the first time)."""
        with self._lock:
            found = self._monitors.get((name, version))
        if found is not None:
            return found
        s = self.settings
        return self._ensure(get_version(s.tracking_uri, s.registry_uri, name, version))

    def served(self, name: str) -> Served:
        with self._lock:
            return self._served.get(name, Served(name, None, None))

    def monitor(self, name: str, version: str | None, kind: str) -> Any | None:
        """The ``kind`` monitor of ``name`` version ``version`` if loaded (never blocks)."""
        if version is None:
            return None
        with self._lock:
            return self._monitors.get((name, version), {}).get(kind)

    def current(self, name: str, kind: str) -> Any | None:
        """The ``kind`` monitor of the served (champion) version of ``name``, if loaded."""
        return self.monitor(name, self.served(name).champion, kind)
