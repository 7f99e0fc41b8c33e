"""Real-time prediction: the registry's store models, scored with the stream's own code.

:class:`Predictor` holds, per model kind (customer, product) and alias (``serving_alias``, the
champion, and ``shadow_alias``, the challenger), the version the alias points at and its opened
bundle. A background task re-resolves the aliases every ``serve_alias_refresh_seconds`` with the
stream's :class:`~storeml.connectors.registry_aliases.AliasResolver` (same outcomes: a removed
champion keeps its last version, a registry that does not answer keeps the versions resolved
last, bounded waits and backoff), and opens a new version's bundle from the per-process
:func:`~storeml.models.store_models.get_model_cache` before it is served. All of that runs in one
worker thread: a request never waits for the registry or for a download. A promotion is therefore
served at most ``serve_alias_refresh_seconds`` (plus the new version's download) after the alias
moved; until a version is opened the previous one keeps answering.

Scoring is :func:`storeml.models.serving.score_kind` with a :class:`~storeml.models.serving.Scorer`,
as in ``streams/publish.py``, with a faults list: a store whose model raises falls back to the
global model (scope ``global``), and only its rows do. Its output therefore equals the stream's for
the same profile. Requests score one store, so a request whose store reads no file (the store is
on the bundle's linear table, or has no model of its own and gets the global model, which is
loaded when the version is opened) is scored on the event loop; the others, whose store model may
have to be read from disk first, are scored in a thread.

When there is nothing to score with, a request gets 503 ``unavailable`` with the reason: the
alias does not exist (and never did in this process), the registry never answered, the version is
not opened yet, or it cannot be opened (a bundle that fails its digest). (Not 404: that status
means a missing profile or a store the key may not see.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from storeml.errors import ArtifactUnavailableError, CodecError, ConnectorError, ModelError
from storeml.models.serving import SCORED_FIELD, Fault, Scorer, score_kind
from storeml.schemas.rules import id_problem
from storeml.schemas.typed import ID_FIELDS, from_json
from storeml.serving.errors import problem

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle
    from storeml.connectors.registry_aliases import AliasResolver
    from storeml.models.store_models import ModelCache, StoreModelBundle
    from storeml.settings import Settings

__all__ = ["Predictor", "ProfileSource", "KINDS"]

log = logging.getLogger("storeml.serve.predict")

#: Model kinds the API predicts for.
KINDS = ("customer", "product")

#: Distinct model faults logged per process (each at its first occurrence; all are counted).
_MAX_LOGGED_FAULTS = 1000


class ProfileSource(Protocol):
    """Where stored profiles come from (:class:`storeml.connectors.profile_reader.ProfileReader`)."""

    async def get_many(
        self, kind: str, store: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | None]: ...


@dataclass(frozen=True)
class _Served:
    """What one (kind, alias) answers with now: an opened version, or why there is none."""

    handle: ModelHandle | None
    scorer: Scorer | None = None
    reason: str = ""  # why there is no scorer (a 503's message)


class Predictor:
    """The serving API's store models (see the module docstring).

    ``cache`` defaults to the process's model cache, ``resolver`` to an
    :class:`AliasResolver` on the settings' registry with ``mlflow_timeout_seconds``;
    ``refresh_s`` to ``serve_alias_refresh_seconds``.
    """

    def __init__(
        self,
        settings: Settings,
        profiles: ProfileSource,
        *,
        cache: ModelCache | None = None,
        resolver: AliasResolver | None = None,
        refresh_s: float | None = None,
    ) -> None:
        from storeml.connectors.registry_aliases import AliasResolver
        from storeml.models.store_models import get_model_cache

        self.settings = settings
        self.profiles = profiles
        self.cache = cache if cache is not None else get_model_cache(settings.model_cache_size)
        self.resolver = resolver or AliasResolver(
            settings.tracking_uri, settings.registry_uri, settings.mlflow_timeout_seconds
        )
        self.refresh_s = (
            refresh_s if refresh_s is not None else settings.serve_alias_refresh_seconds
        )
        self.models = {"customer": settings.customer_model, "product": settings.product_model}
        self.aliases = tuple(
            dict.fromkeys(a for a in (settings.serving_alias, settings.shadow_alias) if a)
        )
        self._served: dict[tuple[str, str], _Served] = {}
        self._problem: str | None = "the model registry has not been asked yet"
        self._passes = 0
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._logged: set[tuple[Any, ...]] = set()
        self.faults = 0  # model faults while scoring, since start

    @classmethod
    def from_settings(cls, settings: Settings, profiles_reader: ProfileSource) -> Predictor:
        """The predictor of the API built from ``settings`` (``create_app`` calls it)."""
        return cls(settings, profiles_reader)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background resolution (the first pass runs at once; this does not wait)."""
        import os

        os.environ.update(self.settings.mlflow_env())  # MLflow's client reads its credentials
        if self._task is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storeml-predictor")
            self._task = asyncio.create_task(self._run(), name="storeml-alias-refresh")

    async def close(self) -> None:
        """Stop the background resolution (a pass still running in its thread is abandoned)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any one pass
                self._problem = f"resolving the model aliases failed: {type(exc).__name__}: {exc}"
                log.exception(
                    "resolving the model aliases failed; retried in %.1fs", self.refresh_s
                )
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        """One resolution pass (in the worker thread); the answers replace the served ones."""
        loop = asyncio.get_running_loop()
        served, trouble = await loop.run_in_executor(self._pool, self._pass)
        self._served = served
        self._problem = trouble
        self._passes += 1

    # --- what /readyz and /metrics read ----------------------------------------------------
    def ready(self) -> str | None:
        """None when the registry answered on the last pass, else why not (for ``/readyz``)."""
        return self._problem

    def stats(self) -> dict[str, float]:
        """The model cache's counters (:meth:`ModelCache.stats`, :class:`CacheStats`)."""
        return self.cache.stats()

    def registry_stats(self) -> dict[str, float]:
        """Alias resolution since start (:class:`RegistryCounts`), passes and model faults."""
        out = self.resolver.totals.as_dict()
        out["passes"] = self._passes
        out["model_faults"] = self.faults
        return out

    def served(self) -> dict[str, str | None]:
        """``{"customer@champion": "3", ...}``: the version each kind and alias answers with."""
        return {
            f"{kind}@{alias}": (s.handle.version if s.scorer is not None and s.handle else None)
            for (kind, alias), s in sorted(self._served.items())
        }

    # --- the resolution pass (worker thread) ---------------------------------------------
    def _pass(self) -> tuple[dict[tuple[str, str], _Served], str | None]:
        """Resolve every (kind, alias), then open the versions not opened yet."""
        handles: dict[tuple[str, str], ModelHandle | _Served] = {}
        for alias in self.aliases:
            required = alias == self.settings.serving_alias
            for kind, name in self.models.items():
                handles[(kind, alias)] = self._resolve(kind, name, alias, required=required)
        counts = self.resolver.take_counts()
        trouble = None
        if counts["failures"]:
            trouble = (
                f"the MLflow registry {self.resolver.where} does not answer; predictions use the"
                " versions resolved last"
            )
        # versions opened before first, new ones last: the cache's LRU then drops stale ones
        order = sorted(
            handles.items(),
            key=lambda item: not isinstance(item[1], _Served) and self._opened(item[1]) is None,
        )
        served: dict[tuple[str, str], _Served] = {}
        for key, handle in order:
            served[key] = handle if isinstance(handle, _Served) else self._open(key, handle)
        return served, trouble

    def _resolve(
        self, kind: str, name: str, alias: str, *, required: bool
    ) -> ModelHandle | _Served:
        failures = self.resolver.counts.failures
        try:
            handle = self.resolver.resolve({kind: name}, alias, required=required)[kind]
        except ModelError:  # the served alias does not exist and never did in this process
            handle = None
        except ConnectorError as exc:  # the registry never answered this process
            return _Served(None, reason=str(exc))
        if handle is None and self.resolver.counts.failures > failures:  # a shadow alias
            return _Served(
                None,
                reason=f"cannot resolve {name}@{alias}: the MLflow registry"
                f" {self.resolver.where} is unavailable and no version was resolved before",
            )
        if handle is None:
            return _Served(
                None,
                reason=f"model {name!r} has no alias {alias!r} in the registry; point it at a"
                f" version with `storeml models promote {name} --version V --alias {alias}`",
            )
        return handle

    def _opened(self, handle: ModelHandle) -> _Served | None:
        """The served entry already holding ``handle``'s version, if any."""
        for served in self._served.values():
            if served.scorer is not None and served.handle == handle:
                return served
        return None

    def _open(self, key: tuple[str, str], handle: ModelHandle) -> _Served:
        """``handle``'s version opened (its global model and linear table read), or why not.

        An artifact store that does not answer keeps the previous version of ``key`` serving
        (retried next pass); a version that cannot be opened at all answers 503.
        """
        kind, alias = key
        try:
            bundle = self.cache.bundle(
                handle, self.settings.tracking_uri, self.settings.registry_uri
            )
        except ArtifactUnavailableError as exc:
            previous = self._served.get(key)
            self._log_once(("open", handle), "%s; retried in %.1fs", exc, self.refresh_s)
            if previous is not None and previous.scorer is not None:
                return previous
            return _Served(handle, reason=f"{exc}; retrying")
        except Exception as exc:  # a broken version must not stop the others
            self._log_once(
                ("open", handle), "cannot open %s version %s: %s", handle.name, handle.version, exc
            )
            return _Served(
                handle,
                reason=f"model {handle.name} version {handle.version} (@{alias}) cannot be"
                f" opened: {type(exc).__name__}: {exc}"[:500],
            )
        previous = self._opened(handle)
        if (
            previous is not None
            and previous.scorer is not None
            and previous.scorer.bundle is bundle
        ):
            return previous
        try:  # what every request may need, read now rather than in a request
            bundle.global_model()
            if kind == "customer":
                bundle.linear_table()
        except Exception as exc:  # scoring records it as a fault, as the stream does
            self._log_once(("warm", handle), "%s version %s: %s", handle.name, handle.version, exc)
        if previous is None:
            log.info("serving %s version %s as %s@%s", handle.name, handle.version, kind, alias)
        return _Served(handle, Scorer(bundle, handle))

    def _log_once(self, key: tuple[Any, ...], message: str, *args: Any) -> None:
        if key in self._logged or len(self._logged) >= _MAX_LOGGED_FAULTS:
            return
        self._logged.add(key)
        log.warning(message, *args)

    # --- requests --------------------------------------------------------------------------
    def _current(self, kind: str, alias: str | None) -> tuple[str, _Served]:
        if kind not in KINDS:
            raise problem(422, f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        alias = alias or self.settings.serving_alias
        if alias not in self.aliases:
            allowed = ", ".join(repr(a) for a in self.aliases) or "none (serving_alias is empty)"
            raise problem(422, f"alias {alias!r}: expected one of {allowed}")
        served = self._served.get((kind, alias))
        if served is None:
            raise problem(503, f"the {kind} model @{alias} is not resolved yet; retry shortly")
        if served.scorer is None:
            raise problem(503, served.reason)
        return alias, served

    async def predict(
        self,
        kind: str,
        store: str,
        *,
        ids: Sequence[str] | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
        alias: str | None = None,
    ) -> dict[str, Any]:
        """Score stored profiles (``ids``) or posted rows (``rows``) of ``store``.

        Returns ``{"model": {"name", "version", "alias"}, "predictions": [{"id", <scored
        field>, "model"}], "missing": [ids without a profile]}``, predictions in request order.
        """
        if (ids is None) == (rows is None):
            raise problem(422, "give either ids or rows")
        alias, served = self._current(kind, alias)
        scorer = served.scorer
        assert scorer is not None and scorer.handle is not None
        id_field = ID_FIELDS[kind]
        missing: list[str] = []
        if ids is not None:
            records: list[dict[str, Any]] = []
            for entity, record in zip(
                ids, await self.profiles.get_many(kind, store, ids), strict=True
            ):
                if record is None:
                    missing.append(entity)
                else:
                    records.append(record)
        else:
            records = [_posted_row(kind, store, i, row) for i, row in enumerate(rows or ())]
        field = SCORED_FIELD[kind]
        predictions: list[dict[str, Any]] = []
        if records:
            frame = pd.DataFrame.from_records(records)
            frame["store_id"] = store  # the row's store is the path's
            try:
                scored = await self._score(kind, store, frame, scorer)
            except Exception as exc:
                if rows is None:  # stored profiles: a server fault (500, logged)
                    raise
                # the types were checked, not nested values or ranges (top_categories: [1])
                raise problem(
                    422,
                    f"rows: a value does not fit its field ({type(exc).__name__}: {exc})"[:500]
                    + "; send the fields and types of Profile.fields",
                ) from exc
            predictions = [
                {"id": entity, field: value, "model": ref}
                for entity, value, ref in zip(
                    [r[id_field] for r in records],  # not the frame's: None would be NaN
                    scored[field].tolist(),
                    scored["model"].tolist(),
                    strict=True,
                )
            ]
        handle = scorer.handle
        return {
            "model": {"name": handle.name, "version": handle.version, "alias": alias},
            "predictions": predictions,
            "missing": missing,
        }

    async def _score(
        self, kind: str, store: str, frame: pd.DataFrame, scorer: Scorer
    ) -> pd.DataFrame:
        faults: list[Fault] = []
        model_name = self.models[kind]

        def run() -> pd.DataFrame:
            return score_kind(kind, frame, scorer, None, model_name=model_name, faults=faults)

        bundle = scorer.bundle
        if bundle is not None and _in_memory(kind, bundle, store):
            scored = run()
        else:
            scored = await asyncio.to_thread(run)
        for fault in faults:
            self.faults += 1
            f = fault.fault
            self._log_once(
                ("fault", f.model, f.version, f.store_id, f.error),
                "%s model %s:%s failed for %s: %s; its rows served by the fallback",
                kind,
                f.model,
                f.version,
                f"store {f.store_id!r}" if f.store_id is not None else "every store",
                f.error,
            )
        return scored


def _in_memory(kind: str, bundle: StoreModelBundle, store: str) -> bool:
    """Whether scoring ``store``'s rows reads no file: the store has no model of its own (the
    global model was read when the version was opened) or it is on the linear table."""
    if store not in bundle:
        return True
    if kind != "customer" or not bundle.vectorise:
        return False
    table = bundle.linear_table()  # read when the version was opened
    return table is not None and bool(table.positions(np.asarray([store], dtype=object))[0] >= 0)


def _posted_row(kind: str, store: str, index: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """A posted row as a record of ``store`` (422 naming the row and field when it is not one).

    The entity id may be given as ``id`` or as the kind's id field (``customer_id``); it is
    optional (a what-if row names no entity).
    """
    id_field = ID_FIELDS[kind]
    fields = dict(row)
    entity = fields.pop("id", None)
    if entity is not None and fields.get(id_field) not in (None, entity):
        raise problem(
            422, f"rows[{index}]: id {entity!r} and {id_field} {fields[id_field]!r} differ"
        )
    if entity is not None:
        fields[id_field] = entity
    try:
        record = from_json(kind, fields)
    except CodecError as exc:
        raise problem(422, f"rows[{index}]: {exc}") from exc
    if record["store_id"] not in (None, store):
        raise problem(
            422,
            f"rows[{index}].store_id is {record['store_id']!r}, not {store!r}: a row is scored"
            " as a profile of the path's store (leave store_id out)",
        )
    entity = record[id_field]
    if entity is not None:
        trouble = id_problem(id_field, entity)
        if trouble is not None:
            raise problem(422, f"rows[{index}]: {trouble}")
    record["store_id"] = store
    return record
