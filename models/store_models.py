"""The per-store "model of models": a bundle folder, its lazy loader, and the per-process cache.

A bundle is a folder written by :func:`write_bundle` (:mod:`storeml.models.bundle_writer`, whose
names are re-exported here)::

    index.json             kind, feature list, trained_at, and per store: file, sha256, classes,
                           examples (every file the bundle holds is listed with its SHA-256)
    global.joblib          the fallback model trained on every store's examples (may be absent)
    stores/<quoted id>.joblib   one small fitted estimator per store that has enough examples
    linear.npz             optional: the affine heads of the customer models that are linear in
                           the scoring input, one row per store (see :mod:`storeml.models.linear`)

It is what a registered model version holds (``<model root>/artifacts/stores``, see
:mod:`storeml.connectors.mlflow_registry`). :class:`StoreModelBundle` reads ``index.json`` when
opened and a store's file only when that store is first scored; :class:`ModelCache` (one per
process, :func:`get_model_cache`) maps a :class:`ModelHandle` to an opened bundle, downloading a
version's files once per host, and bounds the store models kept in memory (least recently used
are dropped). Spark executors reach the cache through the module-level :func:`get_model_cache`,
so nothing unpicklable is ever captured in a closure.

The linear table, when the bundle has one, is read once per opened bundle (all of it: a few tens
of MB for 100,000 stores) and is not counted in the store-model bound; scoring uses it for every
store on it (:meth:`StoreModelBundle.linear_rows`) and loads the store files only of the others.
Every store still has its own file, so readers that ignore the table (older storeml versions, the
MLflow pyfunc's callers of :meth:`StoreModelBundle.model_for`) see the same models.

Files are checked against their digests as they are read (:mod:`storeml.models.bundle_integrity`):
``index.json`` against the digest the model version recorded at registration
(:attr:`ModelHandle.digest`), every other file against ``index.json``. A mismatch is a
:class:`ModelError` naming the file, the model and the version; nothing unverified is unpickled.

Estimators only need ``predict_proba`` and ``classes_`` (scikit-learn API). Loading a bundle never
imports MLflow unless the version has to be downloaded from a remote artifact store. The MLflow
pyfunc wrapper, ``StoreBundleModel``, is built on first attribute access (it subclasses an MLflow
class), so it is left out of ``__all__``; :func:`make_pyfunc_model` returns an instance.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

import joblib
import numpy as np
import pandas as pd  # module level: MLflow resolves predict's type hints in this namespace

from storeml.errors import ArtifactUnavailableError, ModelError
from storeml.models.bundle_integrity import (
    default_cache_dir,
    private_dir,
    read_verified,
)
from storeml.models.bundle_writer import (
    BUNDLE_FORMAT,
    GLOBAL_FILE,
    INDEX_FILE,
    store_file_name,
    write_bundle,
)
from storeml.models.linear import LinearTable

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle

log = logging.getLogger("storeml.models")

__all__ = [
    "BUNDLE_FORMAT",
    "INDEX_FILE",
    "GLOBAL_FILE",
    "Scope",
    "CacheStats",
    "StoreModelBundle",
    "ModelCache",
    "get_model_cache",
    "store_file_name",
    "write_bundle",
    "make_pyfunc_model",
]

STORES_DIR_KEY = "stores"  # the pyfunc artifacts key (mlflow_registry.BUNDLE_STORES_KEY)

#: Which model scored a row: the store's own, the global fallback, or none (unscored).
Scope = Literal["store", "global", "none"]


@dataclass
class CacheStats:
    """Counters of one process's model loading (see :meth:`ModelCache.stats`).

    ``hits``/``misses``: store-model lookups answered from memory / from a file (``loads`` files
    read in ``load_seconds``); ``fallbacks``: lookups of stores without a model of their own (per
    scoring call and store); ``evictions``: store models dropped by the LRU bound; ``bundle_*``:
    version lookups and downloads. ``vectorised_rows``/``vectorised_stores``: rows scored by a
    linear table, and own-model stores among them (per scoring call; they are no lookups);
    ``linear_loads``: linear tables read in ``linear_load_seconds``. ``unverified_versions``:
    versions opened without a recorded digest (registered before storeml recorded them).
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    fallbacks: int = 0
    evictions: int = 0
    bundle_hits: int = 0
    bundle_misses: int = 0
    downloads: int = 0
    download_seconds: float = 0.0
    vectorised_rows: int = 0
    vectorised_stores: int = 0
    linear_loads: int = 0
    linear_load_seconds: float = 0.0
    unverified_versions: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(asdict(self))


class _StoreLRU:
    """Least-recently-used store models, possibly shared by several bundles of one process."""

    def __init__(self, capacity: int, stats: CacheStats) -> None:
        self.capacity = capacity
        self.stats = stats
        self.items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key: tuple[str, str]) -> Any | None:
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key: tuple[str, str], value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)
            self.stats.evictions += 1

    def drop_bundle(self, bundle_key: str) -> None:
        for key in [k for k in self.items if k[0] == bundle_key]:
            del self.items[key]

    def __len__(self) -> int:
        return len(self.items)


class StoreModelBundle:
    """An opened bundle folder: ``index.json`` read now, store models loaded on first use.

    At most ``cache_size`` store models stay in memory (least recently used dropped; the global
    model is always kept). Bundles opened by a :class:`ModelCache` share its bound. With
    ``vectorise`` (default) scoring uses the bundle's linear table when it has one; False scores
    every store with its own file (the per-store ``predict_proba`` path; may be set later).

    ``digest`` (the version's tag ``storeml.bundle_sha256``, :attr:`ModelHandle.digest`) is checked
    against ``index.json``; every file is then checked against its digest in the index, and one
    the index lists without a digest is refused. Without ``digest`` (a version registered before
    digests, or a folder opened by hand) files are checked against the digests the index lists,
    which catches damage but not a rewritten index. ``label`` names the version in errors.
    """

    def __init__(
        self,
        folder: str | Path,
        cache_size: int = 2048,
        *,
        vectorise: bool = True,
        digest: str | None = None,
        label: str | None = None,
        _lru: _StoreLRU | None = None,
        _key: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.label = label or f"model bundle {self.folder}"
        self.sealed = digest is not None
        if not (self.folder / INDEX_FILE).is_file():
            raise ModelError(
                f"{self.folder} is not a model bundle (no {INDEX_FILE}); it should be the"
                " artifacts/stores folder of a storeml model version"
            )
        raw = read_verified(self.folder / INDEX_FILE, digest, self.label)
        try:
            self.index: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise ModelError(
                f"{self.folder} is not a model bundle ({INDEX_FILE} unreadable: {exc}); it should"
                " be the artifacts/stores folder of a storeml model version"
            ) from exc
        if self.index.get("format") != BUNDLE_FORMAT:
            raise ModelError(
                f"{self.folder}: bundle format {self.index.get('format')!r} is not"
                f" {BUNDLE_FORMAT}; retrain with this storeml version"
            )
        self._stores: dict[str, dict[str, Any]] = self.index.get("stores", {})
        self._key = _key or uuid.uuid4().hex
        self._lru = _lru if _lru is not None else _StoreLRU(cache_size, CacheStats())
        self._global: Any | None = None
        self._global_loaded = False
        self.vectorise = vectorise
        self._table: LinearTable | None = None
        self._table_loaded = False
        self._own: pd.Index | None = None

    # --- description -----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.index.get("kind", ""))

    @property
    def features(self) -> list[str]:
        return list(self.index.get("features", []))

    @property
    def stores(self) -> list[str]:
        """Stores with a model of their own."""
        return list(self._stores)

    @property
    def has_global(self) -> bool:
        return self.index.get("global") is not None

    @property
    def stats(self) -> CacheStats:
        return self._lru.stats

    @property
    def loaded(self) -> int:
        """Store models of this bundle currently in memory."""
        with self._lru.lock:
            return sum(1 for key in self._lru.items if key[0] == self._key)

    def __contains__(self, store_id: object) -> bool:
        return store_id in self._stores

    def __repr__(self) -> str:
        folder, stores = str(self.folder), len(self._stores)
        return f"StoreModelBundle({folder!r}, kind={self.kind!r}, stores={stores})"

    # --- loading ---------------------------------------------------------------------------
    def _expected(self, entry: Mapping[str, Any]) -> str | None:
        """The digest ``entry``'s file must have (None: unchecked, only in unsealed bundles)."""
        expected = entry.get("sha256")
        if expected is None and self.sealed:
            raise ModelError(
                f"{self.label}: {INDEX_FILE} lists {entry['file']} without a SHA-256 although the"
                " version recorded a digest; the bundle is not one storeml wrote: do not serve it"
            )
        return None if expected is None else str(expected)

    def _load(self, entry: Mapping[str, Any]) -> Any:
        path = self.folder / entry["file"]
        started = time.perf_counter()
        data = read_verified(path, self._expected(entry), self.label)
        try:
            model = joblib.load(io.BytesIO(data))  # the bytes just checked, not the file again
        except Exception as exc:  # unpickling can raise anything
            raise ModelError(
                f"{self.label}: cannot load model file {path}: {exc}; the bundle is incomplete or was written"
                " with incompatible library versions"
            ) from exc
        stats = self._lru.stats
        stats.loads += 1
        stats.load_seconds += time.perf_counter() - started
        return model

    def global_model(self) -> Any | None:
        """The fallback model trained on every store, or None when the bundle has none."""
        if not self._global_loaded:
            with self._lru.lock:
                if not self._global_loaded:
                    entry = self.index.get("global")
                    self._global = self._load(entry) if entry else None
                    self._global_loaded = True
        return self._global

    def model_for(self, store_id: str) -> tuple[Any | None, Scope]:
        """The model that scores ``store_id``, and its scope.

        ("store" model, "store") when the store has its own model; (global model, "global") when
        it has not; (None, "none") when the bundle has no model for it at all.
        """
        entry = self._stores.get(store_id)
        lru = self._lru
        if entry is None:
            lru.stats.fallbacks += 1
            fallback = self.global_model()
            return (fallback, "global") if fallback is not None else (None, "none")
        key = (self._key, store_id)
        with lru.lock:
            model = lru.get(key)
            if model is not None:
                lru.stats.hits += 1
                return model, "store"
            lru.stats.misses += 1
            model = self._load(entry)
            lru.put(key, model)
        return model, "store"

    def linear_table(self) -> LinearTable | None:
        """The bundle's linear table (read on first call), or None when it has none."""
        if not self._table_loaded:
            with self._lru.lock:
                if not self._table_loaded:
                    entry = self.index.get("linear")
                    if entry:
                        started = time.perf_counter()
                        # checked, then read by numpy without pickles (data only, never code)
                        read_verified(
                            self.folder / entry["file"], self._expected(entry), self.label
                        )
                        self._table = LinearTable.load(self.folder / entry["file"], entry)
                        stats = self._lru.stats
                        stats.linear_loads += 1
                        stats.linear_load_seconds += time.perf_counter() - started
                    self._table_loaded = True
        return self._table

    def linear_rows(self, store_ids: np.ndarray) -> tuple[LinearTable, np.ndarray] | None:
        """The linear table and, for each row's store id, the table row that scores it.

        A store on the table gets its own row; a store without a model of its own gets the
        global model's row when the global model is on the table (scope "global"); -1 marks rows
        left to :meth:`model_for`: stores whose model is not linear, fallbacks to a global
        model that is not, and null ids (which scoring never scores). None when ``vectorise`` is
        off or the bundle has no table. Counts ``vectorised_rows``, ``vectorised_stores`` and the
        ``fallbacks`` it resolves.
        """
        table = self.linear_table() if self.vectorise else None
        if table is None:
            return None
        codes, distinct = pd.factorize(np.asarray(store_ids, dtype=object))  # nulls: -1
        rows = table.positions(distinct)
        if table.global_row is not None:
            if self._own is None:
                self._own = pd.Index(list(self._stores), dtype=object)
            fallback = (rows < 0) & (self._own.get_indexer(distinct) < 0)
            rows[fallback] = table.global_row
            self._lru.stats.fallbacks += int(fallback.sum())
        position = np.where(codes >= 0, rows[codes], -1) if len(rows) else codes
        stats = self._lru.stats
        stats.vectorised_rows += int((position >= 0).sum())
        stats.vectorised_stores += int(((rows >= 0) & (rows < table.n_stores)).sum())
        return table, position

    def release(self) -> None:
        """Drop this bundle's store models and linear table from memory (they reload on use)."""
        with self._lru.lock:
            self._lru.drop_bundle(self._key)
            self._table, self._table_loaded = None, False
        self._global, self._global_loaded = None, False


def _local_folder(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or plain path; None for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


class ModelCache:
    """Opened bundles of the last ``max_versions`` model versions used by this process.

    Use the process's instance, :func:`get_model_cache`. Versions on a local artifact store
    (``file://``) are opened in place; others are downloaded once per host into ``cache_dir``
    (shared by the processes of a host; a download lands under a temporary name and is renamed,
    so concurrent workers never see half a bundle). Downloaded folders are not deleted when a
    version is dropped from memory: another process of the host may still use them.
    ``vectorise`` is given to the bundles it opens (see :class:`StoreModelBundle`).

    ``cache_dir`` defaults to :func:`~storeml.models.bundle_integrity.default_cache_dir` (per
    user); it is created 0700 on the first download and refused when another user owns it or
    others may write to it (:func:`~storeml.models.bundle_integrity.private_dir`). Every bundle
    is opened with its version's digest (:attr:`ModelHandle.digest`); a version without one is
    opened with a warning (once per version and process) and counted in ``unverified_versions``.
    """

    def __init__(
        self,
        cache_size: int = 2048,
        *,
        max_versions: int = 4,
        cache_dir: str | Path | None = None,
        vectorise: bool = True,
    ) -> None:
        self.counters = CacheStats()
        self.vectorise = vectorise
        self._lru = _StoreLRU(cache_size, self.counters)
        self.max_versions = max_versions
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._checked_dir: Path | None = None
        self._bundles: OrderedDict[tuple[str, str, str], StoreModelBundle] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def cache_size(self) -> int:
        return self._lru.capacity

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        with self._lru.lock:
            self._lru.capacity = value
            self._lru.trim()

    def bundle(
        self,
        handle: ModelHandle,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
    ) -> StoreModelBundle:
        """The opened bundle of ``handle``'s version (opened or downloaded on first request)."""
        key = (handle.name, handle.version, handle.source)
        with self._lock:
            bundle = self._bundles.get(key)
            if bundle is not None:
                self._bundles.move_to_end(key)
                self.counters.bundle_hits += 1
                return bundle
            self.counters.bundle_misses += 1
            folder = self._folder(handle, tracking_uri, registry_uri)
            digest = getattr(handle, "digest", None)
            if digest is None:
                self.counters.unverified_versions += 1
                log.warning(
                    "model %s version %s has no recorded digest (tag storeml.bundle_sha256): its files are checked"
                    " only against its own index.json, which whoever can write the artifact store"
                    " can rewrite; retrain it, or record its digest with `storeml models seal`",
                    handle.name,
                    handle.version,
                )
            bundle = StoreModelBundle(
                folder,
                vectorise=self.vectorise,
                digest=digest,
                label=f"model {handle.name} version {handle.version}",
                _lru=self._lru,
            )
            self._bundles[key] = bundle
            while len(self._bundles) > self.max_versions:
                _, old = self._bundles.popitem(last=False)
                old.release()
            return bundle

    def _folder(
        self, handle: ModelHandle, tracking_uri: str | None, registry_uri: str | None
    ) -> Path:
        local = _local_folder(handle.stores_uri)
        if local is not None:
            if not (local / INDEX_FILE).exists():
                raise ArtifactUnavailableError(
                    f"model {handle.name} version {handle.version}: no bundle at {local}; the"
                    " artifact store must be reachable from every executor (use a shared"
                    " filesystem or a remote artifact store)"
                )
            return local
        if self._checked_dir is None:  # once per cache: refuse a folder others could seed
            self._checked_dir = private_dir(self.cache_dir)
        digest = hashlib.sha256(handle.source.encode()).hexdigest()[:12]
        target = self._checked_dir / quote(handle.name, safe="") / f"{handle.version}-{digest}"
        if (target / INDEX_FILE).exists():
            return target
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        started = time.perf_counter()
        try:
            import mlflow

            # models:/ URIs take no sub-path: fetch the whole (small) pyfunc model then.
            whole = urlparse(handle.source).scheme == "models"
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=handle.source if whole else handle.stores_uri,
                dst_path=str(staging),
                tracking_uri=tracking_uri,
                registry_uri=registry_uri,
            )
            if whole:
                path = str(Path(path) / "artifacts" / STORES_DIR_KEY)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactUnavailableError(
                f"cannot download model {handle.name} version {handle.version} from"
                f" {handle.source}: {exc}; check the artifact store and its credentials"
            ) from exc
        self.counters.downloads += 1
        self.counters.download_seconds += time.perf_counter() - started
        try:
            os.rename(path, target)
        except OSError as exc:  # another process of this host may have won the race
            if not (target / INDEX_FILE).exists():
                raise ModelError(
                    f"cannot move the download of {handle.name} version {handle.version} to"
                    f" {target}: {exc}; check that the folder is writable"
                ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def stats(self) -> dict[str, float]:
        """Counters (see :class:`CacheStats`) plus ``store_models`` and ``versions`` in memory."""
        out = self.counters.as_dict()
        out["store_models"] = len(self._lru)
        out["versions"] = len(self._bundles)
        return out

    def clear(self) -> None:
        """Forget every opened bundle and loaded model (counters are kept)."""
        with self._lock:
            for bundle in self._bundles.values():
                bundle.release()
            self._bundles.clear()


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def get_model_cache(cache_size: int | None = None) -> ModelCache:
    """The process's :class:`ModelCache` (created on first call; ``cache_size`` updates its bound).

    Call it inside the function that runs on the executor, never capture the cache itself.
    """
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = ModelCache(cache_size or 2048)
    if cache_size is not None and cache_size != _cache.cache_size:
        _cache.cache_size = cache_size
    return _cache


# --- the MLflow pyfunc face of a bundle ------------------------------------------------------
# The class subclasses mlflow.pyfunc.PythonModel, so defining it imports MLflow (1.5 s). It is
# built on first access (module __getattr__), which keeps `import storeml.models.store_models`
# cheap on executors while pickle still finds it as storeml.models.store_models.StoreBundleModel.
_pyfunc_class: type | None = None


def _build_pyfunc_class() -> type:
    import mlflow.pyfunc

    class StoreBundleModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """``mlflow.pyfunc`` face of a bundle: ``predict(frame with store_id) -> frame``.

        Input: profile rows as produced by ``models.profiles`` (customers: the profile columns,
        or the feature columns themselves; products: ``title``/``description``/``category``).
        Output: one row per input row, customers ``propensity`` and ``scope``; products
        ``predicted_categories`` and ``scope``.
        """

        def load_context(self, context: Any) -> None:
            self.bundle = StoreModelBundle(context.artifacts["stores"])

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            from storeml.models.scoring import score_customers, score_products

            frame = pd.DataFrame(model_input).reset_index(drop=True)
            if self.bundle.kind == "product":
                scored = score_products(frame, self.bundle, None)
                columns = ["predicted_categories"]
            else:
                scored = score_customers(frame, self.bundle, None)
                columns = ["propensity"]
            out = scored[columns].copy()
            out["scope"] = [ref["scope"] for ref in scored["model"]]
            return out

    StoreBundleModel.__module__ = __name__
    StoreBundleModel.__qualname__ = "StoreBundleModel"
    return StoreBundleModel


def __getattr__(name: str) -> Any:
    global _pyfunc_class
    if name == "StoreBundleModel":
        if _pyfunc_class is None:
            _pyfunc_class = _build_pyfunc_class()
        return _pyfunc_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_pyfunc_model() -> Any:
    """An instance of the pyfunc wrapper to pass to ``mlflow.pyfunc.log_model``."""
    return __getattr__("StoreBundleModel")()
