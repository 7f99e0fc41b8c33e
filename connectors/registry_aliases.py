"""Alias resolution for a running job: last resolved versions, bounded time on a failing registry.

The stream resolves its aliases on the driver before every micro-batch
(:meth:`storeml.streams.enrich.EnrichBatch.resolve_models`). :class:`AliasResolver` decides what a
batch serves when the answer is not a version (``required``: the served alias; otherwise the
optional shadow alias):

* no such alias (or model), never resolved: served, :class:`ModelError` naming the model, the
  alias and the aliases that exist; shadow, a warning (once) and no shadow scoring;
* no such alias, resolved before: served, the version resolved last, logged once and counted
  ``missing``; shadow, shadow scoring stops (logged once), as removing the challenger is how an
  experiment ends;
* no answer (server down, SQLite locked, a timeout), resolved before: the versions resolved
  last, logged (first failure, then at most once a minute, and the recovery) and counted
  ``failures`` and ``stale``;
* no answer, never resolved: served, :class:`ConnectorError` at once (nothing to serve: fail
  fast); shadow, none.

Time is bounded: a registry pass runs in a daemon thread and the batch waits at most
``timeout_s`` for it (the first pass of a process gets ``first_timeout_s``, by default
``max(3 * timeout_s, 20 s)``, as it also imports MLflow and opens its store). A pass that did not
return is left running in the background (at most three at a time, so a hung registry never piles
up threads); after a failure the registry is not asked again for a backoff that doubles from 1 s
up to ``max_backoff_s``, so a dead registry costs at most one timeout per backoff period, never a
stall per batch, and never a crash loop. MLflow's own HTTP retries (minutes with the defaults)
therefore never hold a batch, nor delay noticing that the registry is back by more than one
backoff period.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import Any

from storeml.connectors.mlflow_registry import ModelHandle, get_model_info, resolve_alias
from storeml.errors import ConnectorError, ModelError

__all__ = ["AliasResolver", "RegistryCounts"]

log = logging.getLogger("storeml.registry")

#: Log a continuing outage at most this often (the first failure and the recovery always).
_REMIND_S = 60.0
#: Registry passes left running after their deadline, at most (then no new pass starts).
_MAX_STUCK = 3


@dataclass
class RegistryCounts:
    """What alias resolution did (per batch: :meth:`AliasResolver.take_counts`).

    ``failures``: resolve calls the registry failed or did not answer in time (or that were not
    tried: backing off, or earlier calls still running); ``stale``: models served (or shadowed)
    with the version resolved last because of that; ``missing``: served models whose alias no
    longer exists, kept at their last version; ``seconds``: time spent waiting for the registry.
    """

    failures: int = 0
    stale: int = 0
    missing: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(asdict(self))


class _Unavailable(Exception):
    """The registry gave no answer this time (the reason is the message)."""


def _in_thread(fn: Callable[[], Any]) -> Future[Any]:
    """Run ``fn`` in a daemon thread (a hung registry call must never block the process's exit)."""
    future: Future[Any] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the waiting batch
            future.set_exception(exc)

    threading.Thread(target=run, name="storeml-registry", daemon=True).start()
    return future


class AliasResolver:
    """Resolves ``name@alias`` per model kind for one job (driver side, one thread).

    See the module docstring for what each registry answer gives.
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None,
        timeout_s: float = 5.0,
        *,
        first_timeout_s: float | None = None,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.timeout_s = timeout_s
        self.first_timeout_s = (
            first_timeout_s if first_timeout_s is not None else max(3 * timeout_s, 20.0)
        )
        self.max_backoff_s = max_backoff_s
        self.counts = RegistryCounts()
        self.totals = RegistryCounts()
        self._last: dict[tuple[str, str], ModelHandle] = {}
        self._missing: set[tuple[str, str]] = set()  # aliases warned about as missing
        self._answered = False  # has the registry ever answered this process
        self._stuck: list[Future[Any]] = []  # passes past their deadline, still running
        self._retry_at = 0.0
        self._backoff = 0.0
        self._failing_since: float | None = None
        self._failed_calls = 0
        self._reminded_at = 0.0

    @property
    def where(self) -> str:
        return self.registry_uri or self.tracking_uri

    def take_counts(self) -> dict[str, float]:
        """This batch's counts (:class:`RegistryCounts`), reset for the next batch."""
        out = self.counts.as_dict()
        self.counts = RegistryCounts()
        return out

    def last(self, name: str, alias: str) -> ModelHandle | None:
        """The version ``name@alias`` resolved to last in this process, if ever."""
        return self._last.get((name, alias))

    # --- one call --------------------------------------------------------------------------
    def resolve(
        self, models: Mapping[str, str], alias: str, *, required: bool
    ) -> dict[str, ModelHandle | None]:
        """The version each model (``{kind: registered name}``) serves under ``alias``.

        ``required``: the served alias (errors and keep-last rules of the module docstring);
        otherwise the optional shadow alias. An empty alias resolves to no model.
        """
        if not alias:
            return dict.fromkeys(models)
        started = time.perf_counter()
        try:
            answers = self._ask(list(models.values()), alias)
        except _Unavailable as exc:
            return self._unavailable(models, alias, str(exc), required=required)
        finally:
            elapsed = time.perf_counter() - started
            self.counts.seconds += elapsed
            self.totals.seconds += elapsed
        out: dict[str, ModelHandle | None] = {}
        for kind, name in models.items():
            out[kind] = self._answered_with(name, alias, answers[name], required=required)
        return out

    def _ask(self, names: list[str], alias: str) -> dict[str, ModelHandle | None]:
        """One registry pass for ``names``, within the deadline, or :class:`_Unavailable`."""
        now = time.monotonic()
        if now < self._retry_at:
            raise _Unavailable(f"not asked again for {self._retry_at - now:.0f}s after a failure")
        self._stuck = [future for future in self._stuck if not future.done()]
        if len(self._stuck) >= _MAX_STUCK:
            self._failed(f"{len(self._stuck)} registry calls have not returned")
            raise _Unavailable(f"{len(self._stuck)} earlier registry calls have not returned yet")

        def lookup() -> dict[str, ModelHandle | None]:
            return {
                name: resolve_alias(self.tracking_uri, self.registry_uri, name, alias)
                for name in names
            }

        future = _in_thread(lookup)
        deadline = self.timeout_s if self._answered else self.first_timeout_s
        try:
            answers: dict[str, ModelHandle | None] = future.result(timeout=deadline)
        except FutureTimeout:
            self._stuck.append(future)
            self._failed(f"no answer within {deadline:g}s")
            raise _Unavailable(f"no answer within {deadline:g}s") from None
        except ConnectorError as exc:
            self._failed(str(exc))
            raise _Unavailable(str(exc)) from exc
        self._recovered()
        return answers

    # --- outcomes --------------------------------------------------------------------------
    def _answered_with(
        self, name: str, alias: str, handle: ModelHandle | None, *, required: bool
    ) -> ModelHandle | None:
        key = (name, alias)
        if handle is not None:
            if key in self._missing:
                self._missing.discard(key)
                log.warning("alias %s@%s exists again: version %s", name, alias, handle.version)
            self._last[key] = handle
            return handle
        last = self._last.get(key)
        if not required:
            if key not in self._missing:
                self._missing.add(key)
                if last is not None:
                    log.warning(
                        "shadow alias %s@%s was removed: shadow scoring of %s stops (it was"
                        " version %s)",
                        name,
                        alias,
                        name,
                        last.version,
                    )
                else:
                    log.warning(
                        "model %r has no alias %r: no shadow scoring for it until the alias is"
                        " set (or set shadow_alias to '' to turn shadow scoring off)",
                        name,
                        alias,
                    )
            self._last.pop(key, None)
            return None
        if last is None:
            raise self._missing_error(name, alias)
        self.counts.missing += 1
        self.totals.missing += 1
        if key not in self._missing:
            self._missing.add(key)
            log.error(
                "alias %s@%s no longer exists: still serving version %s, resolved last, until it"
                " is set again (`storeml models promote %s --version V --alias %s`)",
                name,
                alias,
                last.version,
                name,
                alias,
            )
        return last

    def _missing_error(self, name: str, alias: str) -> ModelError:
        """The start error for ``name@alias``, naming what the registry has instead."""
        try:
            info = get_model_info(self.tracking_uri, self.registry_uri, name)
        except ConnectorError:
            info = None
            what = "(the registry could not list it)"
        else:
            what = f"({info.describe()})" if info is not None else "(no such registered model)"
        hint = ""
        if info is not None:
            close = difflib.get_close_matches(alias, list(info.aliases), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
        return ModelError(
            f"model {name!r} has no alias {alias!r} in {self.where} {what}; {hint}the stream will"
            f" not publish unscored profiles: point the alias at a version with `storeml models"
            f" promote {name} --version V --alias {alias}`, train one (`storeml train`), fix the"
            " model name or alias setting, or set serving_alias to '' to serve no model"
        )

    def _unavailable(
        self, models: Mapping[str, str], alias: str, reason: str, *, required: bool
    ) -> dict[str, ModelHandle | None]:
        self.counts.failures += 1
        self.totals.failures += 1
        out: dict[str, ModelHandle | None] = {}
        for kind, name in models.items():
            last = self._last.get((name, alias))
            if last is None and required:
                raise ConnectorError(
                    f"cannot resolve {name}@{alias}: the MLflow registry {self.where} is"
                    f" unavailable ({reason}) and no version was resolved before, so there is"
                    " nothing to serve; start the tracking server or fix"
                    " STOREML_MLFLOW_TRACKING_URI / _REGISTRY_URI"
                )
            if last is not None:
                self.counts.stale += 1
                self.totals.stale += 1
            out[kind] = last
        served = ", ".join(
            f"{name}@{alias} -> {h.version if h else 'none'}"
            for name, h in zip(models.values(), out.values(), strict=True)
        )
        now = time.monotonic()
        first = self._failing_since is not None and self._reminded_at < self._failing_since
        if first or now - self._reminded_at >= _REMIND_S:
            self._reminded_at = now
            since = now - (self._failing_since or now)
            log.error(
                "MLflow registry %s unavailable (%s; %d failed calls over %.0fs): serving %s",
                self.where,
                reason,
                self._failed_calls,
                since,
                served,
            )
        return out

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failed_calls += 1
        self._backoff = min(self.max_backoff_s, max(1.0, self._backoff * 2))
        self._retry_at = now + self._backoff

    def _recovered(self) -> None:
        self._answered = True
        if self._failing_since is not None:
            log.warning(
                "MLflow registry %s answers again after %d failed calls over %.0fs",
                self.where,
                self._failed_calls,
                time.monotonic() - self._failing_since,
            )
        self._failing_since = None
        self._failed_calls = 0
        self._backoff = 0.0
        self._retry_at = 0.0
