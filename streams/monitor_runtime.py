"""The monitor's driver side: start-up after recovery, closing windows, health, and its I/O.

Every blocking call (MLflow, Redis, the alerts producer and webhook) runs in one worker thread,
so the agents keep consuming while results are written. The order of a window's close is what
makes a crash harmless: results and alerts are written first (idempotent: same keys, stable alert
ids), then the alert states and the "evaluated" mark in the ``monitor-meta`` table, then the
producer is flushed, and only then are the window's counts dropped from the state tables. A crash
anywhere re-evaluates the same window from the same counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections import defaultdict, deque
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from storeml.connectors.alert_sink import AlertSink
from storeml.connectors.monitor_registry import MonitorCatalog
from storeml.connectors.monitor_store import MonitorStore
from storeml.models.alerting import AlertState
from storeml.models.monitor_eval import (
    alert_messages,
    closable,
    drift_window,
    gather,
    health_alert,
    known_windows,
    performance_windows,
)
from storeml.models.monitor_ingest import ExpiryIndex
from storeml.models.monitor_results import Health
from storeml.models.monitor_state import Clock, drop_windows

__all__ = ["MonitorRuntime", "DRIFT_KINDS"]

log = logging.getLogger(__name__)

#: Monitor kind -> the accumulator letter of its drift state (all "w").
DRIFT_KINDS = ("orders", "customer", "product")

RECORDS = Counter("storeml_monitor_records_total", "Records the monitor consumed.", ["topic"])
BATCH_SECONDS = Histogram(
    "storeml_monitor_batch_seconds",
    "Time to process one agent batch.",
    ["topic"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WINDOWS = Counter("storeml_monitor_windows_total", "Windows evaluated.", ["monitor"])
LATE = Gauge(
    "storeml_monitor_late_records", "Records that came after their window closed.", ["topic"]
)
STALENESS = Gauge(
    "storeml_monitor_newest_enriched_age_seconds", "Age of the newest enriched record.", ["topic"]
)
LAG = Gauge("storeml_monitor_stream_lag_records", "Input records the stream has not yet published.")
OPEN_ALERTS = Gauge("storeml_monitor_open_alerts", "Alerts firing now.")
ERRORS = Counter(
    "storeml_monitor_errors_total", "Timer runs that failed (logged; retried next run).", ["task"]
)


def _state_value(state: AlertState) -> dict[str, Any]:
    return dataclasses.asdict(state)


def _state_of(value: Any) -> AlertState:
    return AlertState(**value) if value else AlertState()


class MonitorRuntime:
    """Shared state of the app's agents and timers (one per worker)."""

    def __init__(
        self, settings: Any, *, catalog: Any = None, store: Any = None, sink: Any = None
    ) -> None:
        self.settings = settings
        self.catalog = catalog or MonitorCatalog(settings)
        self.store = store or MonitorStore.from_settings(settings)
        self.sink = sink or AlertSink(settings)
        self.expiry = ExpiryIndex()
        self.window_ms = int(settings.monitor_window_seconds * 1000)
        self.grace_ms = int(settings.monitor_grace_seconds * 1000)
        self.horizon_ms = int(settings.monitor_horizon_days * 86_400_000)
        self.evaluated: dict[str, int] = {}
        self.ready = False
        self.partitions = settings.topic_partitions
        self._ready = asyncio.Event()
        self.app: Any = None
        self.tables: dict[str, Any] = {}
        self.meta: Any = None
        self.undecodable = 0
        self.windows_evaluated = 0
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="monitor-io")
        self._newest: dict[str, float] = {}
        self._started = time.time()
        self._scanned: dict[str, int] = {}
        self._silent: tuple[int | None, list[str]] = (None, [])
        self._last_seen: dict[tuple[str, int], float] = {}
        self._input_high: dict[tuple[str, int], int] = {}
        self._published: dict[tuple[str, int], int] = {}
        self._rates: deque[tuple[float, int, int]] = deque(maxlen=600)
        self._inputs = 0
        self._dead = 0
        self._health_states: dict[str, bool] = {}

    # --- wiring ---------------------------------------------------------------------------------
    def attach(self, tables: dict[str, Any], meta: Any) -> None:
        self.tables = tables
        self.meta = meta

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def start(self) -> None:
        """After the tables recovered: load marks and monitors, connect the sinks, then go."""
        recovery = self.app.tables.recovery
        while not recovery.completed.is_set():
            await asyncio.sleep(0.1)
        for kind in (*DRIFT_KINDS,):
            value = self.meta.get(f"0|eval|{kind}")
            if value is not None:
                self.evaluated[kind] = int(value)
        self.expiry.rebuild(self.tables["customer"], self.horizon_ms)
        await self._call(self.store.setup)
        await self._call(self.sink.ensure_setup)
        await self.refresh_catalog()
        self.ready = True
        self._ready.set()
        log.info("monitor ready: evaluated through %s", self.evaluated)

    async def refresh_catalog(self) -> None:
        try:
            await self._call(self.catalog.refresh)
        except Exception as exc:  # the registry is down: keep the monitors loaded last
            log.warning("monitor: cannot refresh the model catalog: %s", exc)

    async def guarded(self, task: str, run: Any) -> None:
        """Run a timer's work; a failure is logged and counted, and the next run tries again
        (a window is closed only once all of its writes succeeded, so nothing is half done)."""
        try:
            await run()
        except Exception:
            ERRORS.labels(task).inc()
            log.exception("monitor: %s failed; retrying on the next run", task)

    def closed_before(self, kind: str) -> int | None:
        return self.evaluated.get(kind)

    # --- bookkeeping from the agents ------------------------------------------------------------
    def saw(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: float | None,
        value: dict[str, Any],
    ) -> None:
        now = time.time()
        key = (topic, partition)
        self._last_seen[key] = now
        if topic in (self.settings.topic_orders, self.settings.topic_products):
            self._input_high[key] = max(self._input_high.get(key, -1), offset)
            self._inputs += 1
        else:
            if timestamp:
                self._newest[topic] = max(self._newest.get(topic, 0.0), float(timestamp))
            for src in value.get("source") or ():
                k = (src["topic"], int(src["partition"]))
                self._published[k] = max(self._published.get(k, -1), int(src["last_offset"]))

    def processed(self, kind: str, records: int, seconds: float) -> None:
        RECORDS.labels(kind).inc(records)
        BATCH_SECONDS.labels(kind).observe(seconds)
        self._rates.append((time.monotonic(), records, 0))

    def dead_letters(self, count: int) -> None:
        self._dead += count

    # --- closing windows -------------------------------------------------------------------------
    def _clocks(self, table: Any) -> dict[int, Clock]:
        return {p: Clock.from_value(table.get(f"{p}|clock")) for p in range(self.partitions)}

    def _idle(self, topic: str) -> list[int]:
        """Partitions of ``topic`` that delivered nothing for ``monitor_idle_seconds`` (counting
        from the worker's start for those that delivered nothing at all)."""
        cutoff = time.time() - self.settings.monitor_idle_seconds
        return [
            p
            for p in range(self.partitions)
            if self._last_seen.get((topic, p), self._started) < cutoff
        ]

    def _topic(self, kind: str) -> str:
        s = self.settings
        return {
            "orders": s.topic_orders,
            "customer": s.topic_customer_profiles,
            "product": s.topic_product_profiles,
        }[kind]

    def _model(self, kind: str) -> str:
        return self.settings.product_model if kind == "product" else self.settings.customer_model

    async def evaluate(self) -> int:
        """Close every window that may close; returns how many (monitor, window) were closed."""
        closed = 0
        for kind in DRIFT_KINDS:
            table = self.tables[kind]
            clocks = self._clocks(table)
            LATE.labels(kind).set(sum(c.late for c in clocks.values()))
            perf = {"customer": "q", "product": "k"}.get(kind)
            idle = self._idle(self._topic(kind))
            # Scanning the table for its windows costs O(keys): do it only when the watermark
            # that decides closing has moved into a new window since the last scan.
            marks = [c.watermark for p, c in clocks.items() if p not in idle]
            if not marks or any(m is None for m in marks):
                continue
            boundary = (min(m for m in marks if m is not None) - self.grace_ms) // self.window_ms
            if self._scanned.get(kind) == boundary:
                continue
            known = known_windows(table, "w") | (known_windows(table, perf) if perf else set())
            self._scanned[kind] = boundary
            windows = closable(
                clocks,
                idle,
                self.window_ms,
                self.grace_ms,
                self.evaluated.get(kind),
                known,
            )
            if not windows:
                continue
            drift = gather(table, "w", windows)
            perf_counts = gather(table, perf, windows) if perf else {}
            before = windows[-1] + self.window_ms
            previous = self.evaluated.get(kind)
            self.evaluated[kind] = before  # agents now treat these windows as closed
            try:
                await self._close(kind, drift, perf_counts, perf)
            except BaseException:
                self._scanned.pop(kind, None)  # retry on the next tick
                if previous is None:
                    self.evaluated.pop(kind, None)
                else:
                    self.evaluated[kind] = previous
                raise
            # the state written so far first, then the mark, then the drops
            await self.app.producer.flush()
            self.meta["0|eval|" + kind] = before
            await self.app.producer.flush()
            drop_windows(table, "w", before)
            if perf:
                drop_windows(table, perf, before)
            closed += len(windows)
            self.windows_evaluated += len(windows)
            WINDOWS.labels(kind).inc(len(windows))
        return closed

    async def _close(
        self, kind: str, drift: dict[str, Any], perf_counts: dict[str, Any], perf: str | None
    ) -> None:
        model = self._model(kind)
        results = []
        for slot in sorted(drift, key=lambda s: int(s.split("|", 1)[0])):
            ws_text, version = slot.split("|", 1)
            monitor = self.catalog.monitor(model, version, kind)
            if monitor is None:
                try:
                    monitor = (await self._call(self.catalog.load_version, model, version)).get(
                        kind
                    )
                except Exception as exc:
                    log.warning(
                        "monitor: no %s monitor for %s version %s: %s", kind, model, version, exc
                    )
            if monitor is None:
                continue
            results.append(drift_window(monitor, kind, int(ws_text), self.window_ms, drift[slot]))
        performance = performance_windows(model, perf, perf_counts, self.window_ms) if perf else []
        states = {k: _state_of(v) for k, v in list(self.meta.items()) if k.startswith("0|alert|")}
        messages: list[dict[str, Any]] = []
        changed: dict[str, AlertState] = {}
        link = self.settings.monitor_dashboard_url
        now_ms = int(time.time() * 1000)
        for window in results:
            sent, new = alert_messages(
                window,
                {**states, **changed},
                cooldown_ms=int(self.settings.monitor_cooldown_seconds * 1000),
                link=link,
                detected_at=now_ms,
            )
            messages.extend(sent)
            changed.update(new)

        def write() -> None:
            for window in results:
                self.store.write_drift(window)
            for pw in performance:
                self.store.write_performance(pw)
            for message in messages:
                self.sink.send(message)
                self.store.write_alert(message)
            self.sink.flush()

        await self._call(write)
        for key, state in changed.items():
            self.meta[key] = _state_value(state)
        OPEN_ALERTS.set(sum(1 for s in {**states, **changed}.values() if s.firing))

    # --- health ------------------------------------------------------------------------------------
    async def check_health(self) -> Health:
        s = self.settings
        now = time.time()
        ages: dict[str, float | None] = {}
        for topic in (s.topic_customer_profiles, s.topic_product_profiles):
            newest = self._newest.get(topic)
            ages[topic] = None
            if newest is not None:
                ages[topic] = age = max(0.0, now - newest)
                STALENESS.labels(topic).set(age)
        lags: dict[str, int | None] = {}
        for topic in (s.topic_orders, s.topic_products):
            parts = [(t, p) for (t, p) in self._input_high if t == topic]
            lags[topic] = (
                sum(max(0, self._input_high[k] - self._published.get(k, -1)) for k in parts)
                if parts
                else None
            )
        total_lag = sum(v for v in lags.values() if v is not None)
        LAG.set(total_lag)
        ratio = self._dead / self._inputs if self._inputs else None
        silent = self._silent_stores()
        rate = self._rate()
        health = Health(
            at_ms=int(now * 1000),
            newest_enriched_age_s=ages,
            input_lag_records=lags,
            dead_letter_ratio=ratio,
            silent_stores=tuple(silent),
            windows_evaluated=self.windows_evaluated,
            events_per_second=rate,
        )
        checks = [
            (
                "staleness_seconds",
                max((a for a in ages.values() if a is not None), default=None),
                s.monitor_stale_seconds,
                "the newest enriched record is {v:.0f} s old (threshold {t:.0f} s): the stream may have stopped",
            ),
            (
                "input_lag_records",
                total_lag if lags else None,
                s.monitor_lag_records,
                "the stream is {v:.0f} input records behind (threshold {t:.0f})",
            ),
            (
                "dead_letter_ratio",
                ratio,
                s.monitor_dead_letter_ratio,
                "dead letters are {v:.1%} of the input (threshold {t:.1%})",
            ),
            (
                "silent_stores",
                float(len(silent)),
                0.5,
                "{v:.0f} stores sent no events for "
                f"{s.monitor_silent_windows} windows: " + ", ".join(silent[:10]),
            ),
        ]
        alerts = []
        for statistic, value, threshold, text in checks:
            if value is None:
                continue
            firing = value > threshold
            was = self._health_states.get(statistic, bool(self.meta.get(f"0|health|{statistic}")))
            if firing != was:
                status = "firing" if firing else "resolved"
                alerts.append(
                    health_alert(
                        statistic,
                        value,
                        threshold,
                        at_ms=health.at_ms,
                        link=s.monitor_dashboard_url,
                        status=status,
                        message=text.format(v=value, t=threshold),
                    )
                )
                self._health_states[statistic] = firing
                self.meta[f"0|health|{statistic}"] = firing

        def write() -> None:
            self.store.write_health(health)
            for alert in alerts:
                self.sink.send(alert)
                self.store.write_alert(alert)
            if alerts:
                self.sink.flush()

        await self._call(write)
        return health

    def _rate(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n, _ in self._rates if now - t <= 10.0]
        return sum(n for _, n in recent) / 10.0 if recent else 0.0

    def _silent_stores(self) -> list[str]:
        """Stores whose newest input event is N windows behind the orders topic's watermark
        (recomputed, with a table scan, only when that watermark enters a new window)."""
        table = self.tables["orders"]
        marks = [c.watermark for c in self._clocks(table).values() if c.watermark is not None]
        if not marks:
            return []
        boundary = max(marks) // self.window_ms
        if self._silent[0] == boundary:
            return self._silent[1]
        limit = max(marks) - self.settings.monitor_silent_windows * self.window_ms
        newest: dict[str, int] = defaultdict(int)
        for key, value in list(table.items()):
            parts = key.split("|")
            if len(parts) == 3 and parts[1] == "w" and value:
                newest[parts[2]] = max(newest[parts[2]], int(value[1]))
        silent = sorted(st for st, t in newest.items() if t < limit)
        self._silent = (boundary, silent)
        return silent
