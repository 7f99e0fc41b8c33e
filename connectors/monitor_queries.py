"""The key names of the monitor's results and the read plans both readers run.

A *plan* is a generator: it yields a list of Redis commands (``("hgetall", key)``...), receives
their replies (one pipelined round trip), may yield again, and returns the parsed answer. The
sync :class:`~storeml.connectors.monitor_store.MonitorStore` and the async
:class:`~storeml.connectors.monitor_store.MonitorReader` drive the same plans, so the parsing is
written once and the round trips are visible here: every plan takes at most two.

The key layout is documented in :mod:`storeml.connectors.monitor_store`.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from storeml.models.monitor_results import ALL_STORES

__all__ = [
    "MonitorKeys",
    "series_of",
    "ROLES",
    "drift_series",
    "latest_drift",
    "performance_series",
    "store_performance_series",
    "latest_performance",
    "alerts",
    "health",
    "health_series",
    "models",
]

ROLES = ("champion", "challenger")
ALERT_STATUSES = (None, "open", "firing", "resolved")

Plan = Generator[list[tuple[Any, ...]], list[Any], Any]


@dataclass(frozen=True)
class MonitorKeys:
    """Key names under ``<prefix>:monitor``."""

    prefix: str

    @property
    def root(self) -> str:
        return f"{self.prefix}:monitor"

    @property
    def monitors(self) -> str:
        return f"{self.root}:monitors"

    @property
    def models(self) -> str:
        return f"{self.root}:models"

    def model(self, name: str) -> str:
        return f"{self.root}:model:{name}"

    def drift(self, monitor: str, store: str) -> str:
        return f"{self.root}:drift:h:{monitor}:{store}"

    def drift_index(self, monitor: str, store: str) -> str:
        return f"{self.root}:drift:z:{monitor}:{store}"

    def latest_drift(self, monitor: str) -> str:
        return f"{self.root}:latest:drift:{monitor}"

    def perf(self, role: str, store: str, model: str) -> str:
        return f"{self.root}:perf:h:{role}:{store}:{model}"

    def perf_index(self, role: str, store: str, model: str) -> str:
        return f"{self.root}:perf:z:{role}:{store}:{model}"

    def latest_perf(self, role: str, model: str) -> str:
        return f"{self.root}:latest:perf:{role}:{model}"

    @property
    def alerts(self) -> str:
        return f"{self.root}:alerts"

    @property
    def alerts_log(self) -> str:
        return f"{self.root}:alerts:log"

    @property
    def alerts_open(self) -> str:
        return f"{self.root}:alerts:open"

    @property
    def alerts_state(self) -> str:
        return f"{self.root}:alerts:state"

    @property
    def health(self) -> str:
        return f"{self.root}:health:h"

    @property
    def health_index(self) -> str:
        return f"{self.root}:health:z"

    @property
    def latest_health(self) -> str:
        return f"{self.root}:latest:health"


def series_of(alert: dict[str, Any]) -> str:
    """The series an alert belongs to: ``store|monitor|statistic|column`` (column may be empty)."""
    column = alert.get("column")
    return f"{alert['store_id']}|{alert['monitor']}|{alert['statistic']}|{column or ''}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rows(raw: dict[Any, Any] | None) -> list[dict[str, Any]]:
    """A series hash's rows, oldest window first."""
    rows = [json.loads(value) for value in (raw or {}).values()]
    return sorted(rows, key=lambda row: int(row.get("window_start", 0)))


def _latest_rows(raw: dict[Any, Any] | None) -> list[dict[str, Any]]:
    """A ``latest`` hash's rows (``"<window>|<JSON>"`` values), by store id."""
    out = []
    for _field, value in sorted((raw or {}).items(), key=lambda item: _text(item[0])):
        _, _, body = _text(value).partition("|")
        out.append(json.loads(body))
    return out


def _names(raw: Any) -> list[str]:
    return sorted(_text(name) for name in raw or ())


def _with_max_js(row: dict[str, Any]) -> dict[str, Any]:
    values = [c["js"] for c in row.get("columns", ()) if c.get("js") is not None]
    row["max_js"] = max(values) if values else None
    row["alert_columns"] = [c["column"] for c in row.get("columns", ()) if c.get("alert")]
    return row


def drift_series(keys: MonitorKeys, store_id: str, monitor: str | None = None) -> Plan:
    """Rows of ``store_id`` (``*``: the window summaries) for ``monitor`` (None: every monitor),
    oldest first, monitors in name order."""
    monitors = [monitor] if monitor else _names((yield [("smembers", keys.monitors)])[0])
    if not monitors:
        return []
    replies = yield [("hgetall", keys.drift(m, store_id)) for m in monitors]
    return [_with_max_js(row) for raw in replies for row in _rows(raw)]


def latest_drift(keys: MonitorKeys, monitor: str | None = None) -> Plan:
    """One row per store and monitor: the store's newest window (store ``*`` left out)."""
    monitors = [monitor] if monitor else _names((yield [("smembers", keys.monitors)])[0])
    if not monitors:
        return []
    replies = yield [("hgetall", keys.latest_drift(m)) for m in monitors]
    return [
        _with_max_js(row)
        for raw in replies
        for row in _latest_rows(raw)
        if row["store_id"] != ALL_STORES
    ]


def performance_series(keys: MonitorKeys, model_name: str, store_id: str = ALL_STORES) -> Plan:
    """Champion and challenger rows of ``model_name`` per window (overall, or one store's),
    ordered by window then role."""
    replies = yield [("hgetall", keys.perf(role, store_id, model_name)) for role in ROLES]
    rows = [row for raw in replies for row in _rows(raw)]
    return sorted(rows, key=lambda r: (int(r["window_start"]), ROLES.index(r["role"])))


def store_performance_series(keys: MonitorKeys, store_id: str) -> Plan:
    """Every model's champion and challenger rows of ``store_id``, by model, window and role."""
    names = _names((yield [("smembers", keys.models)])[0])
    if not names:
        return []
    pairs = [(name, role) for name in names for role in ROLES]
    replies = yield [("hgetall", keys.perf(role, store_id, name)) for name, role in pairs]
    rows = [row for raw in replies for row in _rows(raw)]
    return sorted(
        rows, key=lambda r: (r["model_name"], int(r["window_start"]), ROLES.index(r["role"]))
    )


def latest_performance(keys: MonitorKeys, model_name: str | None = None) -> Plan:
    """One row per store, model and role: its newest window (overall ``*`` rows included)."""
    names = [model_name] if model_name else _names((yield [("smembers", keys.models)])[0])
    if not names:
        return []
    replies = yield [("hgetall", keys.latest_perf(role, name)) for name in names for role in ROLES]
    return [row for raw in replies for row in _latest_rows(raw)]


def alerts(
    keys: MonitorKeys, status: str | None = None, limit: int = 200, store_id: str | None = None
) -> Plan:
    """Alert records, newest window first: all kept ones (``status`` None), the open ones
    (firing with no later resolved record of the same series; kept however old), or those of
    one status; optionally of one store only."""
    if status not in ALERT_STATUSES:
        raise ValueError(f"alert status {status!r}; choose open, firing, resolved or None")
    if status == "open":
        records = [json.loads(v) for v in ((yield [("hvals", keys.alerts_open)])[0] or ())]
    else:
        ids = (yield [("zrevrange", keys.alerts_log, 0, -1)])[0] or []
        raws = (yield [("hmget", keys.alerts, ids)])[0] if ids else []
        records = [json.loads(raw) for raw in raws if raw is not None]
        if status is not None:
            records = [r for r in records if r.get("status") == status]
    if store_id is not None:
        records = [r for r in records if r.get("store_id") == store_id]
    records.sort(key=lambda r: (int(r.get("window_end") or 0), r.get("alert_id", "")), reverse=True)
    return records[: max(0, limit)]


def health(keys: MonitorKeys) -> Plan:
    """The newest health snapshot, or None."""
    raw = (yield [("hget", keys.latest_health, ALL_STORES)])[0]
    if raw is None:
        return None
    return json.loads(_text(raw).partition("|")[2])


def health_series(keys: MonitorKeys, limit: int = 288) -> Plan:
    """Health snapshots, oldest first (the newest ``limit``)."""
    rows = _rows((yield [("hgetall", keys.health)])[0])
    return rows[-limit:] if limit > 0 else []


def models(keys: MonitorKeys) -> Plan:
    """Each model: its newest champion and challenger versions and its monitors' versions::

    {"name": ..., "champion": {"version", "window_start", "window_end"} | None,
     "challenger": ... | None, "monitors": {monitor: {...}}}
    """
    names = _names((yield [("smembers", keys.models)])[0])
    if not names:
        return []
    replies = yield [("hgetall", keys.model(name)) for name in names]
    out = []
    for name, raw in zip(names, replies, strict=True):
        entry: dict[str, Any] = {"name": name, "champion": None, "challenger": None, "monitors": {}}
        for field, value in (raw or {}).items():
            window, _, body = _text(value).partition("|")
            info = json.loads(body) | {"window_start": int(window)}
            field = _text(field)
            if field in ROLES:
                entry[field] = info
            elif field.startswith("drift:"):
                entry["monitors"][field.removeprefix("drift:")] = info
        out.append(entry)
    return out
