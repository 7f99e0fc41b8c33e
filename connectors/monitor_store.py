"""The monitor's results in Redis: drift and performance series, alerts and health, for the dashboard.

:class:`MonitorStore` writes (sync redis-py; the Faust app calls it from a worker thread) and can
read; :class:`MonitorReader` reads with the serving API's ``redis.asyncio`` client. Both run the
same read plans (:mod:`storeml.connectors.monitor_queries`), so the two never disagree.

Key layout. Every key is under ``P = <redis_prefix>:monitor``; ``<store>`` is a store id (no
``:`` or ``|`` can occur in one, docs/ids.md), ``*`` the figures over all stores; model names
come last in a key, so a ``:`` in one cannot make two keys meet::

    P:monitors                          set   monitor kinds that wrote drift ("orders", ...)
    P:models                            set   model names that wrote drift or performance
    P:model:<model>                     hash  champion | challenger | drift:<monitor>
                                              -> "<window_start>|{version, window_end}" (newest)
    P:drift:h:<monitor>:<store>         hash  <window_start> -> JSON row (StoreDrift + window)
    P:drift:z:<monitor>:<store>         zset  <window_start> scored by itself (retention index)
    P:latest:drift:<monitor>            hash  <store> -> "<window_start>|<JSON row>" (newest)
    P:perf:h:<role>:<store>:<model>     hash  <window_start> -> JSON row (StorePerformance + window)
    P:perf:z:<role>:<store>:<model>     zset  retention index, as for drift
    P:latest:perf:<role>:<model>        hash  <store> -> "<window_start>|<JSON row>" (newest)
    P:alerts                            hash  alert_id -> JSON alert record (the newest N kept)
    P:alerts:log                        zset  alert_id scored by window_end (trimmed to N)
    P:alerts:open                       hash  <store|monitor|statistic|column> -> JSON of the
                                              firing alert with no later resolved one
    P:alerts:state                      hash  <series> -> "<window_start>|<status>" (newest seen)
    P:health:h / P:health:z             hash + zset: at_ms -> JSON Health (retention as above)
    P:latest:health                     hash  "*" -> "<at_ms>|<JSON Health>"

The drift summary of a window (stores evaluated, stores alerting, rows) is the series of store
``*``. Row JSON is the dataclass's ``to_dict()`` plus ``monitor``/``model_name``/``model_version``/
``window_start``/``window_end`` (and ``role`` for performance).

Guarantees. Writes are idempotent and order-safe under at-least-once replay: each (series,
window) is one hash field, set by a Lua script that also adds the window to the series' zset, trims
the series to the newest ``retention_windows`` and updates the ``latest`` field only when the
window is not older than the one there. Writing a window twice, or an old window after a newer
one, leaves the same data. Alerts are keyed by their stable ``alert_id``; the open index follows
the newest window per series (a resolved and a firing record of the same window: resolved wins).
The overview reads one hash per monitor and per model role (pipelined), never one key per store.
Redis Cluster is not supported (a script touches keys of several slots).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime
from typing import Any

from storeml.connectors import monitor_queries as plans
from storeml.connectors.base import Sink
from storeml.connectors.monitor_queries import MonitorKeys, series_of
from storeml.connectors.monitor_scripts import ALERT, LATEST, SERIES
from storeml.connectors.redis_client import RedisTarget, redis_error
from storeml.errors import ConnectorError
from storeml.models.monitor_results import (
    ALL_STORES,
    DriftWindow,
    Health,
    PerformanceWindow,
    StoreDrift,
    json_number,
)

__all__ = ["MonitorStore", "MonitorReader", "MonitorKeys", "KEEP_ALERTS"]

#: Alert records kept (the newest by window end); open alerts are kept however old.
KEEP_ALERTS = 1000
_CHUNK = 1000  # commands per pipeline round trip when writing a large window


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _alert_record(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert as stored: times in epoch ms, floats JSON-safe, ``alert_id`` filled in."""
    record = dict(alert)
    for name in ("window_start", "window_end", "detected_at"):
        if record.get(name) is not None:
            record[name] = _millis(record[name])
    for name in ("value", "threshold"):
        record[name] = json_number(record.get(name))
    status = str(record.get("status", ""))
    if status not in ("firing", "resolved"):
        raise ConnectorError(f"alert status {status!r} is neither 'firing' nor 'resolved'")
    record["status"] = status
    if not record.get("alert_id"):
        record["alert_id"] = f"{series_of(record)}|{record['window_start']}|{status}"
    return record


class MonitorStore(Sink):
    """Writes (and reads) the monitor's results; connects on first use (``setup()``).

    ``retention_windows`` windows are kept per store, monitor or model role; ``keep_alerts``
    alert records (plus every open alert).
    """

    def __init__(
        self,
        target: RedisTarget,
        prefix: str,
        *,
        retention_windows: int = 288,
        keep_alerts: int = KEEP_ALERTS,
    ) -> None:
        if retention_windows < 1 or keep_alerts < 1:
            raise ValueError("retention_windows and keep_alerts must be at least 1")
        self.target = target
        self.keys = MonitorKeys(prefix)
        self.retention_windows = retention_windows
        self.keep_alerts = keep_alerts
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> MonitorStore:
        """The store of ``settings``: its Redis, ``redis_prefix`` and ``monitor_retention_windows``."""
        return cls(
            settings.redis,
            settings.redis_prefix,
            retention_windows=settings.monitor_retention_windows,
        )

    def setup(self) -> None:
        """Open the client (idempotent: a second call, or a write after it, reuses it)."""
        if self._client is not None:
            return
        self._client = self.target.connect(socket_timeout=10.0, socket_connect_timeout=5.0)
        self._ready = True
        for name, text in (("series", SERIES), ("latest", LATEST), ("alert", ALERT)):
            self._scripts[name] = self._client.register_script(text)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._ready = False

    # --- writes ---------------------------------------------------------------------------------
    def write_drift(self, window: DriftWindow) -> None:
        """Store every store's row of ``window``, its summary (store ``*``) and the model's version."""
        meta = {
            "monitor": window.monitor,
            "model_name": window.model_name,
            "model_version": window.model_version,
            "window_start": int(window.window_start),
            "window_end": int(window.window_end),
        }
        rows = [store.to_dict() | meta for store in window.stores]
        summary = StoreDrift(
            ALL_STORES, sum(s.rows for s in window.stores), any(s.alert for s in window.stores)
        ).to_dict()
        summary |= meta | {
            "stores": len(window.stores),
            "alerting": sum(1 for s in window.stores if s.alert),
        }
        rows.append(summary)
        k = self.keys

        def commands(pipe: Any) -> Generator[None, None, None]:
            pipe.sadd(k.monitors, window.monitor)
            pipe.sadd(k.models, window.model_name)
            self._latest(pipe, k.model(window.model_name), f"drift:{window.monitor}", meta)
            for row in rows:
                store = row["store_id"]
                self._series(
                    pipe,
                    (k.drift(window.monitor, store), k.drift_index(window.monitor, store)),
                    k.latest_drift(window.monitor),
                    store,
                    row,
                )
                yield

        self._run(f"write the {window.monitor} drift of window {window.window_start} to", commands)

    def write_performance(self, window: PerformanceWindow) -> None:
        """Store the role's overall row (store ``*``) and every store's row of ``window``."""
        meta = {
            "model_name": window.model_name,
            "role": window.role,
            "model_version": window.model_version,
            "window_start": int(window.window_start),
            "window_end": int(window.window_end),
        }
        rows = [window.overall.to_dict() | meta | {"store_id": ALL_STORES}]
        rows += [store.to_dict() | meta for store in window.stores]
        name, role, k = window.model_name, window.role, self.keys

        def commands(pipe: Any) -> Generator[None, None, None]:
            pipe.sadd(k.models, name)
            self._latest(pipe, k.model(name), role, meta)
            for row in rows:
                store = row["store_id"]
                self._series(
                    pipe,
                    (k.perf(role, store, name), k.perf_index(role, store, name)),
                    k.latest_perf(role, name),
                    store,
                    row,
                )
                yield

        self._run(f"write the {role} performance of {name} to", commands)

    def write_alert(self, alert: dict[str, Any]) -> None:
        """Store one alert record (the ``monitor_alert`` fields; ``alert_id`` is its key)."""
        record = _alert_record(alert)
        k = self.keys

        def commands(pipe: Any) -> Generator[None, None, None]:
            self._scripts["alert"](
                keys=[k.alerts, k.alerts_log, k.alerts_open, k.alerts_state],
                args=[
                    record["alert_id"],
                    _dumps(record),
                    int(record.get("window_end") or record["window_start"]),
                    self.keep_alerts,
                    series_of(record),
                    int(record["window_start"]),
                    record["status"],
                ],
                client=pipe,
            )
            yield

        self._run(f"write alert {record['alert_id']} to", commands)

    def write_health(self, health: Health) -> None:
        """Store a health snapshot (kept like a window: the newest ``retention_windows``)."""
        row = health.to_dict()
        row["window_start"] = row["at_ms"]
        k = self.keys

        def commands(pipe: Any) -> Generator[None, None, None]:
            self._series(pipe, (k.health, k.health_index), k.latest_health, ALL_STORES, row)
            yield

        self._run("write the health snapshot to", commands)

    def _series(
        self, pipe: Any, data: tuple[str, str], latest: str, field: str, row: dict[str, Any]
    ) -> None:
        self._scripts["series"](
            keys=[data[0], data[1], latest],
            args=[int(row["window_start"]), _dumps(row), self.retention_windows, field],
            client=pipe,
        )

    def _latest(self, pipe: Any, key: str, field: str, meta: dict[str, Any]) -> None:
        body = {"version": meta["model_version"], "window_end": meta["window_end"]}
        self._scripts["latest"](
            keys=[key], args=[field, int(meta["window_start"]), _dumps(body)], client=pipe
        )

    def _run(self, action: str, commands: Any) -> None:
        """Queue ``commands(pipe)`` (it yields after each unit) and send them in chunks."""
        import redis

        self.ensure_setup()
        try:
            pipe = self._client.pipeline(transaction=False)
            queued = 0
            for _ in commands(pipe):
                queued += 1
                if queued >= _CHUNK:
                    pipe.execute()
                    queued = 0
            pipe.execute()
        except redis.RedisError as exc:
            raise redis_error(action, self.target, exc) from exc

    # --- reads (the same plans as MonitorReader) ------------------------------------------------
    def _read(self, plan: Generator[list[tuple[Any, ...]], list[Any], Any]) -> Any:
        import redis

        self.ensure_setup()
        try:
            commands = next(plan)
            while True:
                pipe = self._client.pipeline(transaction=False)
                for name, *args in commands:
                    getattr(pipe, name)(*args)
                commands = plan.send(pipe.execute() if commands else [])
        except StopIteration as stop:
            return stop.value
        except redis.RedisError as exc:
            raise redis_error("read monitor results from", self.target, exc) from exc

    def drift_series(self, store_id: str, monitor: str | None = None) -> list[dict[str, Any]]:
        return self._read(plans.drift_series(self.keys, store_id, monitor))  # type: ignore[no-any-return]

    def latest_drift(self, monitor: str | None = None) -> list[dict[str, Any]]:
        return self._read(plans.latest_drift(self.keys, monitor))  # type: ignore[no-any-return]

    def performance_series(self, model_name: str, store_id: str = ALL_STORES) -> list[dict]:
        return self._read(plans.performance_series(self.keys, model_name, store_id))  # type: ignore[no-any-return]

    def store_performance_series(self, store_id: str) -> list[dict[str, Any]]:
        return self._read(plans.store_performance_series(self.keys, store_id))  # type: ignore[no-any-return]

    def latest_performance(self, model_name: str | None = None) -> list[dict[str, Any]]:
        return self._read(plans.latest_performance(self.keys, model_name))  # type: ignore[no-any-return]

    def alerts(
        self, status: str | None = None, limit: int = 200, store_id: str | None = None
    ) -> list[dict[str, Any]]:
        return self._read(plans.alerts(self.keys, status, limit, store_id))  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any] | None:
        return self._read(plans.health(self.keys))  # type: ignore[no-any-return]

    def health_series(self, limit: int = 288) -> list[dict[str, Any]]:
        return self._read(plans.health_series(self.keys, limit))  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        return self._read(plans.models(self.keys))  # type: ignore[no-any-return]


class MonitorReader:
    """Async reads for the dashboard; ``client`` is a ``redis.asyncio.Redis`` (bytes replies)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.keys = MonitorKeys(prefix)

    async def _read(self, plan: Generator[list[tuple[Any, ...]], list[Any], Any]) -> Any:
        import redis

        try:
            commands = next(plan)
            while True:
                results: list[Any] = []
                if commands:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for name, *args in commands:
                            getattr(pipe, name)(*args)
                        results = await pipe.execute()
                commands = plan.send(results)
        except StopIteration as stop:
            return stop.value
        except redis.RedisError as exc:
            raise ConnectorError(f"Redis read of the monitor results failed: {exc}") from exc

    async def drift_series(self, store_id: str, monitor: str | None = None) -> list[dict]:
        return await self._read(plans.drift_series(self.keys, store_id, monitor))  # type: ignore[no-any-return]

    async def latest_drift(self, monitor: str | None = None) -> list[dict[str, Any]]:
        return await self._read(plans.latest_drift(self.keys, monitor))  # type: ignore[no-any-return]

    async def performance_series(self, model_name: str, store_id: str = ALL_STORES) -> list[dict]:
        return await self._read(plans.performance_series(self.keys, model_name, store_id))  # type: ignore[no-any-return]

    async def store_performance_series(self, store_id: str) -> list[dict[str, Any]]:
        return await self._read(plans.store_performance_series(self.keys, store_id))  # type: ignore[no-any-return]

    async def latest_performance(self, model_name: str | None = None) -> list[dict[str, Any]]:
        return await self._read(plans.latest_performance(self.keys, model_name))  # type: ignore[no-any-return]

    async def alerts(
        self, status: str | None = None, limit: int = 200, store_id: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._read(plans.alerts(self.keys, status, limit, store_id))  # type: ignore[no-any-return]

    async def health(self) -> dict[str, Any] | None:
        return await self._read(plans.health(self.keys))  # type: ignore[no-any-return]

    async def health_series(self, limit: int = 288) -> list[dict[str, Any]]:
        return await self._read(plans.health_series(self.keys, limit))  # type: ignore[no-any-return]

    async def models(self) -> list[dict[str, Any]]:
        return await self._read(plans.models(self.keys))  # type: ignore[no-any-return]
