"""Writing a bundle folder: the per-store files, the global model, the linear table, ``index.json``.

A bundle is a folder written by :func:`write_bundle`::

    index.json             kind, feature list, trained_at, and per store: file, sha256, classes,
                           examples (every file the bundle holds is listed with its SHA-256)
    global.joblib          the fallback model trained on every store's examples (may be absent)
    stores/<quoted id>.joblib   one small fitted estimator per store that has enough examples
    linear.npz             optional: the affine heads of the customer models that are linear in
                           the scoring input, one row per store (see :mod:`storeml.models.linear`)

Reading it is :mod:`storeml.models.store_models` (which re-exports these names); the digests it
records are checked there (:mod:`storeml.models.bundle_integrity`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import joblib

from storeml.models.bundle_integrity import file_sha256
from storeml.models.linear import TableBuilder

__all__ = [
    "BUNDLE_FORMAT",
    "INDEX_FILE",
    "GLOBAL_FILE",
    "STORES_DIR",
    "store_file_name",
    "write_bundle",
]

BUNDLE_FORMAT = 1
INDEX_FILE = "index.json"
GLOBAL_FILE = "global.joblib"
STORES_DIR = "stores"

_MAX_NAME = 180


def store_file_name(store_id: str) -> str:
    """File name of a store's model: the URL-quoted id (hashed when too long for a file name)."""
    quoted = quote(store_id, safe="")
    if len(quoted) > _MAX_NAME or quoted in ("", ".", ".."):
        quoted = "h-" + hashlib.sha256(store_id.encode()).hexdigest()
    return f"{quoted}.joblib"


def _jsonable(values: Iterable[Any]) -> list[Any]:
    out = []
    for value in values:
        out.append(value.item() if hasattr(value, "item") else value)
    return out


def write_bundle(
    folder: str | Path,
    *,
    kind: str,
    features: Iterable[str],
    store_models: Mapping[str, Any],
    global_model: Any | None,
    examples: Mapping[str, int] | None = None,
    global_examples: int | None = None,
    trained_at_ms: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    linear: bool = True,
) -> Path:
    """Write a bundle folder (one joblib file per store, the global model, ``index.json``).

    ``examples`` counts each store's training examples (every store seen in training, including
    those without a model of their own). With ``linear`` (the default), customer models that are
    linear in the scoring input are also written to one table, ``linear.npz`` (see
    :mod:`storeml.models.linear`; ``index.json`` records it under ``linear``). Returns the folder.
    """
    root = Path(folder)
    (root / STORES_DIR).mkdir(parents=True, exist_ok=True)
    counts = dict(examples or {})
    stores: dict[str, dict[str, Any]] = {}
    table = TableBuilder(kind) if linear else None
    for store_id, estimator in store_models.items():
        relative = f"{STORES_DIR}/{store_file_name(store_id)}"
        joblib.dump(estimator, root / relative)
        if table is not None:
            table.add(str(store_id), estimator)
        stores[str(store_id)] = {
            "file": relative,
            "sha256": file_sha256(root / relative),
            "classes": _jsonable(getattr(estimator, "classes_", [])),
            "examples": int(counts.get(store_id, 0)),
        }
    global_entry = None
    if global_model is not None:
        joblib.dump(global_model, root / GLOBAL_FILE)
        if table is not None:
            table.add_global(global_model)
        global_entry = {
            "file": GLOBAL_FILE,
            "sha256": file_sha256(root / GLOBAL_FILE),
            "classes": _jsonable(getattr(global_model, "classes_", [])),
            "examples": int(
                global_examples if global_examples is not None else sum(counts.values())
            ),
        }
    linear_entry = table.write(root) if table is not None else None
    if linear_entry is not None:
        linear_entry["sha256"] = file_sha256(root / linear_entry["file"])
    index = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "features": list(features),
        "trained_at": int(trained_at_ms if trained_at_ms is not None else time.time() * 1000),
        "metadata": dict(metadata or {}),
        "global": global_entry,
        "stores": stores,
        "examples": {str(k): int(v) for k, v in counts.items()},
        "linear": linear_entry,
    }
    (root / INDEX_FILE).write_text(json.dumps(index, sort_keys=True))
    return root
