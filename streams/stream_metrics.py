"""Prometheus metrics of the Spark streaming queries, fed by a ``StreamingQueryListener``.

:func:`start_metrics` registers a :class:`StreamMetricsListener` on the session and serves the
default prometheus_client registry on ``/metrics``; ``storeml stream run`` calls it when
``stream_metrics_port`` > 0. The listener runs on the driver (Spark calls it back from its
listener bus thread through py4j) and only sets metrics, so it never slows a batch down.

Every metric is labelled by the query's name only (``storeml_enrich`` for the enrichment stream,
``unnamed`` for a query without one): the label set stays bounded, with no store label ever.

==============================================  =========  ============================================
``storeml_stream_input_rows_per_second``        gauge      arrival rate over the last trigger
``storeml_stream_processed_rows_per_second``    gauge      processing rate of the last batch
``storeml_stream_batch_duration_seconds``       histogram  wall time of each micro-batch
``storeml_stream_batch_rows``                   gauge      input rows of the last batch
``storeml_stream_input_rows_total``             counter    input rows of every batch
``storeml_stream_batches_total``                counter    micro-batches completed
``storeml_stream_source_lag_records``           gauge      records in the sources past the batch's end
``storeml_stream_last_progress_timestamp_seconds``  gauge  when the query last reported (progress or idle)
``storeml_stream_query_active``                 gauge      1 while the query runs, 0 once terminated
==============================================  =========  ============================================

Lag: a source whose progress carries ``latestOffset`` and ``endOffset`` as JSON offset maps
(``{"topic": {"partition": offset}}``, as our Kafka source and Spark's report them, or a flat
``{"partition": offset}``) gives ``sum(latest - end)`` over its partitions; the gauge is the sum over
the query's sources. When no source reports comparable offsets (the rate source, a file source) the
gauge is left as it was (never set, for such a query).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from pyspark.sql.streaming import StreamingQueryListener

__all__ = [
    "MetricsServer",
    "StreamMetricsListener",
    "metrics_payload",
    "serve_metrics",
    "source_lag",
    "start_metrics",
]

log = logging.getLogger(__name__)

_LABELS = ["query"]

INPUT_RATE = Gauge(
    "storeml_stream_input_rows_per_second",
    "Rows per second arriving at the query's sources over the last trigger.",
    _LABELS,
)
PROCESSED_RATE = Gauge(
    "storeml_stream_processed_rows_per_second",
    "Rows per second the query processed in its last micro-batch.",
    _LABELS,
)
BATCH_DURATION = Histogram(
    "storeml_stream_batch_duration_seconds",
    "Wall time of each micro-batch (Spark's batchDuration).",
    _LABELS,
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0),
)
BATCH_ROWS = Gauge(
    "storeml_stream_batch_rows", "Input rows of the query's last micro-batch.", _LABELS
)
INPUT_ROWS = Counter(
    "storeml_stream_input_rows", "Input rows of every micro-batch of the query.", _LABELS
)
BATCHES = Counter("storeml_stream_batches", "Micro-batches the query completed.", _LABELS)
SOURCE_LAG = Gauge(
    "storeml_stream_source_lag_records",
    "Records in the query's sources beyond the end of its last batch (latest - end offset).",
    _LABELS,
)
LAST_PROGRESS = Gauge(
    "storeml_stream_last_progress_timestamp_seconds",
    "Unix time of the query's last progress or idle report.",
    _LABELS,
)
ACTIVE = Gauge(
    "storeml_stream_query_active", "1 while the query runs, 0 once it terminated.", _LABELS
)


def _query_label(name: str | None) -> str:
    return name or "unnamed"


def _epoch(timestamp: str | None) -> float | None:
    """Spark's progress timestamp (``2026-12-01T10:00:00.123Z``) as Unix seconds."""
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _offsets(text: Any) -> dict[str, int] | None:
    """An offset JSON as ``{"topic/partition": offset}``; None when it is not an offset map."""
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except ValueError:
            return None
    if not isinstance(text, dict) or not text:
        return None
    flat: dict[str, int] = {}
    for key, value in text.items():
        if isinstance(value, dict):
            for partition, offset in value.items():
                if not isinstance(offset, int) or isinstance(offset, bool):
                    return None
                flat[f"{key}/{partition}"] = offset
        elif isinstance(value, int) and not isinstance(value, bool):
            flat[str(key)] = value
        else:
            return None
    return flat


def source_lag(latest_offset: Any, end_offset: Any) -> int | None:
    """Records between a source's end offsets and its latest ones, summed over partitions.

    Both are offset maps (JSON text or dicts); a partition missing from ``latest_offset`` counts
    0, and a negative difference (the latest offsets read before the batch's end) counts 0. None
    when either is not an offset map (a plain number, ``null``).
    """
    latest, end = _offsets(latest_offset), _offsets(end_offset)
    if latest is None or end is None:
        return None
    return sum(max(0, latest.get(key, offset) - offset) for key, offset in end.items())


class StreamMetricsListener(StreamingQueryListener):
    """Sets the module's Prometheus metrics from every query's events (driver side)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # query id -> label (terminated events carry no name)
        self._lock = threading.Lock()

    def _label(self, query_id: Any, name: str | None = None) -> str:
        with self._lock:
            if name is not None or str(query_id) not in self._names:
                self._names[str(query_id)] = _query_label(name)
            return self._names[str(query_id)]

    def onQueryStarted(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        label = self._label(event.id, event.name)
        ACTIVE.labels(label).set(1)

    def onQueryProgress(self, event: Any) -> None:  # noqa: N802
        try:
            self.record(event.progress)
        except Exception:  # a metrics bug must never disturb the query's listener bus
            log.exception("stream metrics: cannot record a progress event")

    def record(self, progress: Any) -> None:
        """Update the metrics from one ``StreamingQueryProgress``."""
        label = self._label(progress.id, progress.name)
        rows = int(progress.numInputRows or 0)
        INPUT_RATE.labels(label).set(float(progress.inputRowsPerSecond or 0.0))
        PROCESSED_RATE.labels(label).set(float(progress.processedRowsPerSecond or 0.0))
        BATCH_DURATION.labels(label).observe(max(0.0, float(progress.batchDuration or 0)) / 1000)
        BATCH_ROWS.labels(label).set(rows)
        INPUT_ROWS.labels(label).inc(rows)
        BATCHES.labels(label).inc()
        lags = [source_lag(s.latestOffset, s.endOffset) for s in progress.sources]
        known = [lag for lag in lags if lag is not None]
        if known:
            SOURCE_LAG.labels(label).set(sum(known))
        at = _epoch(progress.timestamp)
        if at is not None:
            LAST_PROGRESS.labels(label).set(at)
        ACTIVE.labels(label).set(1)

    def onQueryIdle(self, event: Any) -> None:  # noqa: N802
        """No new data: nothing arrives nor is processed; the query is alive and caught up."""
        label = self._label(event.id)
        INPUT_RATE.labels(label).set(0.0)
        PROCESSED_RATE.labels(label).set(0.0)
        at = _epoch(event.timestamp)
        if at is not None:
            LAST_PROGRESS.labels(label).set(at)

    def onQueryTerminated(self, event: Any) -> None:  # noqa: N802
        label = self._label(event.id)
        ACTIVE.labels(label).set(0)
        INPUT_RATE.labels(label).set(0.0)
        PROCESSED_RATE.labels(label).set(0.0)


def metrics_payload() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, and its content type.

    For a web framework's own ``/metrics`` route (the Faust monitor's web server) instead of a
    separate port.
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, addr: str = "0.0.0.0") -> tuple[Any, threading.Thread]:
    """Serve the default registry on ``http://addr:port/metrics`` in a daemon thread.

    ``port`` 0 picks a free port (read it from ``server.server_port``). Returns prometheus_client's
    ``(server, thread)``.
    """
    server, thread = start_http_server(port, addr=addr)
    return server, thread


@dataclass
class MetricsServer:
    """A running metrics endpoint and the listener that feeds it; :meth:`stop` ends both."""

    server: Any
    thread: threading.Thread
    listener: StreamMetricsListener
    spark: Any

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        """Unregister the listener and stop serving (best effort; safe to call twice)."""
        try:
            self.spark.streams.removeListener(self.listener)
        except Exception:  # the session may already be stopped
            log.debug("stream metrics: listener not removed", exc_info=True)
        self.server.shutdown()
        self.server.server_close()


def start_metrics(spark: Any, port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Register a :class:`StreamMetricsListener` on ``spark`` and serve ``/metrics`` on ``port``.

    Call it before starting the queries, so their start is seen too. ``port`` 0 picks a free port
    (:attr:`MetricsServer.port`).
    """
    listener = StreamMetricsListener()
    spark.streams.addListener(listener)
    try:
        server, thread = serve_metrics(port, addr)
    except OSError:
        spark.streams.removeListener(listener)
        raise
    return MetricsServer(server, thread, listener, spark)
