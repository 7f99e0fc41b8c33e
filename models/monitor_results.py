"""What the monitor found, as plain frozen values: drift and performance windows, pipeline health.

The monitor app (``streams/``) builds these from a window's evaluation, the Redis connector
(:mod:`storeml.connectors.monitor_store`) stores their ``to_dict()`` as JSON, and the dashboard
renders the dicts it reads back. ``to_dict()`` is JSON-safe: a NaN or infinite float becomes None
(JSON has neither), tuples become lists. ``from_dict()`` accepts what ``to_dict()`` gave (and
ignores unknown keys, so older readers survive newer writers); a None where a plain float is
declared comes back as NaN, so ``from_dict(to_dict(x))`` equals ``x`` up to NaN.

Times are epoch milliseconds; a window is named by its start (``window_start``), ``window_end``
is exclusive. A ``store_id`` of ``"*"`` stands for all stores (a performance window's overall
figures, pipeline-wide health).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ALL_STORES",
    "ColumnStat",
    "StoreDrift",
    "DriftWindow",
    "StorePerformance",
    "PerformanceWindow",
    "Health",
    "json_number",
]

#: The ``store_id`` of figures over every store.
ALL_STORES = "*"

Role = Literal["champion", "challenger"]


def json_number(value: Any) -> float | None:
    """``value`` as a float, None for None, NaN and infinities (JSON-safe)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else json_number(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class ColumnStat:
    """One column's drift test in one store's window (see ``models/monitor.py``)."""

    column: str
    js: float
    psi: float
    p_value: float
    alpha: float
    alert: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "js": json_number(self.js),
            "psi": json_number(self.psi),
            "p_value": json_number(self.p_value),
            "alpha": json_number(self.alpha),
            "alert": bool(self.alert),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnStat:
        return cls(
            column=str(data["column"]),
            js=_float(data.get("js")),
            psi=_float(data.get("psi")),
            p_value=_float(data.get("p_value")),
            alpha=_float(data.get("alpha")),
            alert=bool(data.get("alert", False)),
        )


@dataclass(frozen=True)
class StoreDrift:
    """One store's drift in one window: its rows and every monitored column's test."""

    store_id: str
    rows: int
    alert: bool
    columns: tuple[ColumnStat, ...] = ()

    @property
    def max_js(self) -> float | None:
        """The largest finite JS distance over the columns (None without one)."""
        values = [c.js for c in self.columns if math.isfinite(c.js)]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "store_id": self.store_id,
            "rows": int(self.rows),
            "alert": bool(self.alert),
            "columns": [column.to_dict() for column in self.columns],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreDrift:
        return cls(
            store_id=str(data["store_id"]),
            rows=int(data.get("rows", 0)),
            alert=bool(data.get("alert", False)),
            columns=tuple(ColumnStat.from_dict(c) for c in data.get("columns", ())),
        )


@dataclass(frozen=True)
class DriftWindow:
    """A monitor's evaluation of one window: every store that had rows in it."""

    monitor: str
    model_name: str
    model_version: str | None
    window_start: int
    window_end: int
    stores: tuple[StoreDrift, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_start": int(self.window_start),
            "window_end": int(self.window_end),
            "stores": [store.to_dict() for store in self.stores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftWindow:
        return cls(
            monitor=str(data["monitor"]),
            model_name=str(data["model_name"]),
            model_version=None if data.get("model_version") is None else str(data["model_version"]),
            window_start=int(data["window_start"]),
            window_end=int(data["window_end"]),
            stores=tuple(StoreDrift.from_dict(s) for s in data.get("stores", ())),
        )


_METRICS = ("auc", "brier", "precision", "recall", "hit1", "hit5")


@dataclass(frozen=True)
class StorePerformance:
    """Live metrics of one store (``"*"``: all) from the labels that arrived in one window.

    Binary models fill ``auc``, ``brier``, ``precision`` and ``recall``; ranking (category)
    models fill ``hit1`` and ``hit5``; a metric that cannot be computed (no labels, one class
    only) is None.
    """

    store_id: str
    n: int
    positives: int
    auc: float | None = None
    brier: float | None = None
    precision: float | None = None
    recall: float | None = None
    hit1: float | None = None
    hit5: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "store_id": self.store_id,
            "n": int(self.n),
            "positives": int(self.positives),
        }
        for name in _METRICS:
            out[name] = json_number(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StorePerformance:
        return cls(
            store_id=str(data["store_id"]),
            n=int(data.get("n", 0)),
            positives=int(data.get("positives", 0)),
            **{name: _opt_float(data.get(name)) for name in _METRICS},
        )


@dataclass(frozen=True)
class PerformanceWindow:
    """One model role's live performance over the labels that arrived in one window."""

    model_name: str
    role: Role
    model_version: str | None
    window_start: int
    window_end: int
    overall: StorePerformance
    stores: tuple[StorePerformance, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "role": self.role,
            "model_version": self.model_version,
            "window_start": int(self.window_start),
            "window_end": int(self.window_end),
            "overall": self.overall.to_dict(),
            "stores": [store.to_dict() for store in self.stores],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformanceWindow:
        role = str(data["role"])
        if role not in ("champion", "challenger"):
            raise ValueError(f"role {role!r} is neither 'champion' nor 'challenger'")
        return cls(
            model_name=str(data["model_name"]),
            role=role,  # type: ignore[arg-type]
            model_version=None if data.get("model_version") is None else str(data["model_version"]),
            window_start=int(data["window_start"]),
            window_end=int(data["window_end"]),
            overall=StorePerformance.from_dict(data["overall"]),
            stores=tuple(StorePerformance.from_dict(s) for s in data.get("stores", ())),
        )


@dataclass(frozen=True)
class Health:
    """The pipeline's health at ``at_ms`` (wall clock).

    ``newest_enriched_age_s``: per enriched topic, seconds since its newest record (None: none
    seen yet). ``input_lag_records``: per input topic, how many records the stream's output is
    behind (None: unknown). ``silent_stores``: stores that had events and sent none for
    ``monitor_silent_windows`` windows.
    """

    at_ms: int
    newest_enriched_age_s: dict[str, float | None]
    input_lag_records: dict[str, int | None]
    dead_letter_ratio: float | None
    silent_stores: tuple[str, ...]
    windows_evaluated: int
    events_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_ms": int(self.at_ms),
            "newest_enriched_age_s": {
                str(k): json_number(v) for k, v in self.newest_enriched_age_s.items()
            },
            "input_lag_records": {str(k): _opt_int(v) for k, v in self.input_lag_records.items()},
            "dead_letter_ratio": json_number(self.dead_letter_ratio),
            "silent_stores": [str(s) for s in self.silent_stores],
            "windows_evaluated": int(self.windows_evaluated),
            "events_per_second": json_number(self.events_per_second),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Health:
        return cls(
            at_ms=int(data["at_ms"]),
            newest_enriched_age_s={
                str(k): _opt_float(v) for k, v in (data.get("newest_enriched_age_s") or {}).items()
            },
            input_lag_records={
                str(k): _opt_int(v) for k, v in (data.get("input_lag_records") or {}).items()
            },
            dead_letter_ratio=_opt_float(data.get("dead_letter_ratio")),
            silent_stores=tuple(str(s) for s in data.get("silent_stores", ())),
            windows_evaluated=int(data.get("windows_evaluated", 0)),
            events_per_second=_float(data.get("events_per_second")),
        )
