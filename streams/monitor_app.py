"""The monitor: a Faust app over the enriched and input topics (``storeml monitor run``).

State (tables with changelog topics, keys named by input partition, ``models/monitor_state.py``):

* ``orders-state``    drift histograms of the orders topic, per partition, store and window
* ``products-state``  the product input topic's clock and store activity
* ``customers-state`` drift of enriched customer profiles, pending propensities, AUC/Brier counts
* ``catalog-state``   drift of enriched product profiles, pending top-5 lists, hit@k counts
* ``monitor-meta``    evaluated windows and alert states (all in partition 0)

Agents only decode a batch and hand it to ``models/monitor_ingest.py``. One timer closes windows
(``models/monitor_eval.py``), writes results to Redis (``connectors/monitor_store.py``) and sends
alerts (``connectors/alert_sink.py``); another checks the pipeline's health. Evaluation reads every
partition of a table, so the monitor runs as ONE worker (it owns all partitions); the benchmark
(``bench/monitor_bench.py``) measures what one core keeps up with.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from storeml.connectors.faust_broker import (
    PartitionTable,
    faust_options,
    install_broker_quirks,
    install_flush_fix,
)
from storeml.errors import CodecError
from storeml.models.monitor_ingest import (
    IngestConfig,
    ingest_customers,
    ingest_drift,
    ingest_products,
)
from storeml.models.monitor_reference import customer_rows, order_rows, product_rows
from storeml.models.monitor_state import Record
from storeml.schemas.codec import get_codec
from storeml.streams.monitor_runtime import MonitorRuntime

__all__ = ["build_app", "BATCH", "BATCH_SECONDS"]

log = logging.getLogger(__name__)

#: Records per agent batch, and the longest a batch waits to fill.
BATCH = 2000
BATCH_SECONDS = 0.25


def _table(app: Any, name: str, partitions: int) -> Any:
    import faust

    table = PartitionTable(
        app,
        name=name,
        default=None,
        partitions=partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        beacon=app.tables.beacon,
    )
    return app.tables.add(table)


def _decode(
    events: list[Any], codec: Any, runtime: MonitorRuntime, topic: str
) -> dict[int, list[Record]]:
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for event in events:
        message = event.message
        try:
            value = codec.decode(message.value)
        except CodecError:
            runtime.undecodable += 1
            continue
        t = value.get("last_event_time", value.get("event_time"))
        by_partition[message.partition].append(
            Record(message.offset, int(t), str(value["store_id"]), value)
        )
        runtime.saw(topic, message.partition, message.offset, message.timestamp, value)
    for records in by_partition.values():
        records.sort(key=lambda r: r.offset)
    return by_partition


def build_app(
    settings: Any, runtime: MonitorRuntime | None = None, partitions: int | None = None
) -> Any:
    """The Faust app with its tables, agents, timers and /metrics page.

    ``partitions``: of the input topics (default ``settings.topic_partitions``); the state tables
    get as many.
    """
    import faust
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    install_broker_quirks(settings)
    install_flush_fix()
    app = faust.App(settings.monitor_app_id, **faust_options(settings))
    rt = runtime or MonitorRuntime(settings)
    rt.app = app
    parts = partitions or settings.topic_partitions
    rt.partitions = parts
    tables = {
        "orders": _table(app, "orders-state", parts),
        "products": _table(app, "products-state", parts),
        "customer": _table(app, "customers-state", parts),
        "product": _table(app, "catalog-state", parts),
    }
    meta = _table(app, "monitor-meta", parts)
    rt.attach(tables, meta)
    config = IngestConfig(
        window_ms=int(settings.monitor_window_seconds * 1000),
        grace_ms=int(settings.monitor_grace_seconds * 1000),
        horizon_ms=int(settings.monitor_horizon_days * 86_400_000),
    )

    def topic(name: str) -> Any:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=parts,
        )

    codecs = {
        k: get_codec(n)
        for k, n in (
            ("orders", "order_event"),
            ("products", "product_event"),
            ("customer", "customer_profile"),
            ("product", "product_profile"),
        )
    }
    cmodel, pmodel = settings.customer_model, settings.product_model

    def batches(kind: str, name: str, handle: Callable[[int, list[Record]], None]) -> None:
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(BATCH, within=BATCH_SECONDS):
                if not rt.ready:
                    await rt.wait_ready()
                started = time.perf_counter()
                try:
                    for partition, records in _decode(events, codecs[kind], rt, name).items():
                        handle(partition, records)
                except Exception:
                    # Faust acks a batch even when its handler raises; exit before the next
                    # commit, so a restart (by the supervisor) replays the batch, never skips it.
                    log.critical("monitor: a %s batch failed; exiting", kind, exc_info=True)
                    os._exit(70)
                rt.processed(kind, len(events), time.perf_counter() - started)

        agent.__name__ = f"monitor_{kind}"
        app.agent(topic(name), name=f"monitor-{kind}")(agent)

    def on_orders(p: int, records: list[Record]) -> None:
        ingest_drift(
            tables["orders"],
            p,
            records,
            order_rows,
            lambda v: rt.catalog.current(cmodel, "orders"),
            lambda v: None,
            config,
            rt.closed_before("orders"),
        )

    def on_products(p: int, records: list[Record]) -> None:
        from storeml.models.monitor_state import PartitionBatch

        batch = PartitionBatch(tables["products"], p, config.window_ms, config.grace_ms)
        for r in records:
            batch.admit(r)
        batch.commit()

    def on_customers(p: int, records: list[Record]) -> None:
        ingest_customers(
            tables["customer"],
            p,
            records,
            customer_rows,
            lambda v: (
                rt.catalog.monitor(cmodel, v, "customer") or rt.catalog.current(cmodel, "customer")
            ),
            config,
            rt.expiry,
            rt.closed_before("customer"),
        )

    def on_catalog(p: int, records: list[Record]) -> None:
        ingest_products(
            tables["product"],
            p,
            records,
            product_rows,
            lambda v: (
                rt.catalog.monitor(pmodel, v, "product") or rt.catalog.current(pmodel, "product")
            ),
            config,
            rt.closed_before("product"),
        )

    batches("orders", settings.topic_orders, on_orders)
    batches("products", settings.topic_products, on_products)
    batches("customer", settings.topic_customer_profiles, on_customers)
    batches("product", settings.topic_product_profiles, on_catalog)

    @app.agent(topic(settings.topic_dead_letter), name="monitor-dead-letters")
    async def dead_letters(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=BATCH_SECONDS):
            rt.dead_letters(len(events))

    @app.timer(interval=1.0)
    async def close_windows() -> None:
        if rt.ready:
            await rt.guarded("close windows", rt.evaluate)

    @app.timer(interval=min(5.0, max(1.0, settings.monitor_stale_seconds / 10)))
    async def check_health() -> None:
        if rt.ready:
            await rt.guarded("check health", rt.check_health)

    @app.timer(interval=15.0)
    async def refresh_catalog() -> None:
        await rt.refresh_catalog()

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.task
    async def start() -> None:
        await rt.start()

    return app
