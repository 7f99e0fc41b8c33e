"""The monitor benchmark's two kinds of run: a pre-produced backlog, and a paced drift.

* :func:`backlog_run`: one world of ``stores``; the live events and the enriched records the
  stream would make of them are produced first, then a pinned ``storeml monitor run`` worker is
  started and timed until its ``storeml_monitor_records_total`` counters reach what was produced.
  Its peak RSS (worker and children, sampled every 0.2 s) is taken over the same run.
* :func:`drift_run`: a world with an injected price drift in its biggest store; the live input
  events are produced in event-time order, paced so that event time runs at ``speed`` x wall
  time, to a worker that is already running; the first firing orders alert of that store is
  read from the alerts topic and timed from the ``produce()`` of the first drifted order.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from bench.monitor_procs import AlertReader, Producer, Worker, ensure, run_settings
from bench.monitor_world import World, build_reference, live_batches, register_monitors

__all__ = ["backlog_run", "drift_run", "KINDS"]

#: Monitor agent (metric label) of each input topic attribute.
KINDS = {
    "topic_orders": "orders",
    "topic_products": "products",
    "topic_customer_profiles": "customer",
    "topic_product_profiles": "product",
}


def _topics(settings: Any) -> list[str]:
    return [getattr(settings, a) for a in KINDS] + [
        settings.topic_dead_letter,
        settings.topic_alerts,
    ]


def backlog_run(
    services: Any,
    args: Any,
    stores: int,
    history: int,
    live: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Produce a backlog for ``stores`` stores, then time a pinned worker consuming it."""
    window_s = args.window_seconds
    total = max(history + live, int(stores * args.min_store_events * 1.25))
    scale = total / (history + live)
    history, live = int(history * scale), total - int(history * scale)
    world = World(
        stores,
        history,
        live,
        seed=args.seed,
        events_per_second=live / (args.backlog_windows * window_s),  # spans N windows
        min_store_events=args.min_store_events,
    )
    settings = run_settings(
        services,
        f"backlog{stores}",
        monitor_window_seconds=window_s,
        max_records_per_batch=args.stream_batch,
    )
    ensure(settings, _topics(settings))
    out: dict[str, Any] = {"stores": stores, "history_events": history, "live_events": live}
    say(f"{stores:,} stores: folding {history:,} history events for the monitors' reference")
    reference, stream = build_reference(world, settings)
    out["reference_s"] = reference.seconds
    out["reference_rows"] = {k: len(f) for k, f in reference.frames.items()}
    reg = register_monitors(settings, reference)
    out["monitors"] = {k: v for k, v in reg.items() if k != "monitors"}
    say(
        f"{stores:,} stores: folding and producing {live:,} live events"
        f" (batches of {args.stream_batch:,})"
    )
    started = time.perf_counter()
    producer = Producer(settings.kafka_config())
    events = customers = products = 0
    seen: set[str] = set()
    first_ms = last_ms = None
    named = args.customer_version == "named"
    batches = live_batches(
        stream, reference, settings, reg["versions"], args.stream_batch, customer_version=named
    )
    for batch in batches:
        for topic, partition, key, value in batch.inputs:
            producer.send(topic, key, value, partition)
        for topic, key, value, headers in batch.enriched:
            producer.send(topic, key, value, headers=headers)
        producer.poll()
        events += batch.events
        customers += batch.customers
        products += batch.products
        seen |= batch.stores
        first_ms = batch.first_ms if first_ms is None else min(first_ms, batch.first_ms)
        last_ms = batch.last_ms if last_ms is None else max(last_ms, batch.last_ms)
    producer.flush()
    expected = {kind: producer.sent.get(getattr(settings, a), 0) for a, kind in KINDS.items()}
    out.update(
        produce_s=time.perf_counter() - started,
        produced=expected,
        live_stores=len(seen),
        enriched_per_input_event=(customers + products) / events if events else None,
        customer_profiles_per_event=customers / events if events else None,
        product_profiles_per_event=products / events if events else None,
        event_time_span_s=((last_ms or 0) - (first_ms or 0)) / 1000.0,
        windows_spanned=((last_ms or 0) - (first_ms or 0)) / 1000.0 / window_s,
    )
    del reference, stream
    out.update(_consume(settings, args, expected, say, services))
    return out


def _consume(
    settings: Any,
    args: Any,
    expected: dict[str, int],
    say: Callable[[str], None],
    services: Any,
) -> dict[str, Any]:
    import psutil

    total = sum(expected.values())
    worker = Worker(
        settings, args.workdir_path / f"{settings.monitor_app_id}.log", args.worker_cpus
    )
    broker = psutil.Process(services.broker.pid) if services.broker.pid else None
    broker_cpu0 = sum(broker.cpu_times()[:2]) if broker else 0.0
    say(f"starting the monitor pinned to CPU {sorted(args.worker_cpus or [])}; {total:,} records")
    worker.start()
    samples: list[tuple[float, dict[str, float]]] = []
    done_at: dict[str, float] = {}
    first = None
    cpu_first = 0.0
    deadline = time.perf_counter() + args.timeout
    try:
        while time.perf_counter() < deadline:
            if not worker.alive() or worker.crashed():
                raise RuntimeError(f"the monitor exited or crashed:\n{worker.tail(60)}")
            counts = worker.metrics().get("storeml_monitor_records", {})
            now = time.perf_counter()
            if counts and sum(counts.values()) > 0:
                if first is None:
                    first, cpu_first = now, worker.cpu_seconds()
                samples.append((now, dict(counts)))
                for kind, n in expected.items():
                    if kind not in done_at and counts.get(kind, 0) >= n:
                        done_at[kind] = now
                if len(done_at) == len(expected):
                    break
            time.sleep(args.poll)
        cpu = worker.cpu_seconds() - cpu_first
        windows = windows_at_drain = worker.metrics().get("storeml_monitor_windows", {})
        linger_end = time.perf_counter() + args.linger
        while time.perf_counter() < linger_end:  # windows the timer closes after the drain
            time.sleep(args.poll)
            windows = worker.metrics().get("storeml_monitor_windows", {})
        rss_now = worker.rss()
        crashed = worker.crashed()
    finally:
        worker.stop()
    end = samples[-1][0] if samples else time.perf_counter()
    final = samples[-1][1] if samples else {}
    drained = len(done_at) == len(expected)
    span = (end - first) if first else None
    consumed = sum(final.values())
    out: dict[str, Any] = {
        "drained": drained,
        "crashed": crashed,
        "consumed": final,
        "seconds": span,
        "records_per_s": consumed / span if span else None,
        "per_topic": {
            kind: {
                "records": final.get(kind, 0),
                "seconds": (done_at.get(kind, end) - first) if first else None,
                "records_per_s": (
                    final.get(kind, 0) / (done_at.get(kind, end) - first)
                    if first and done_at.get(kind, end) > first
                    else None
                ),
            }
            for kind in expected
        },
        "steady_records_per_s": _steady(samples, total),
        "worker_cpu_share": cpu / span if span else None,
        "broker_cpu_share": (
            (sum(broker.cpu_times()[:2]) - broker_cpu0) / span if broker and span else None
        ),
        "windows_evaluated": windows,
        "windows_evaluated_at_drain": windows_at_drain,
        "peak_rss_bytes": worker.peak_rss,
        "rss_at_end_bytes": rss_now,
    }
    if crashed:
        say(f"  the monitor's app CRASHED (log {worker.log}):\n{worker.tail(12)}")
    say(
        f"  consumed {consumed:,.0f}/{total:,} in {span or 0:.1f}s:"
        f" {out['records_per_s'] or 0:,.0f} records/s, peak RSS {worker.peak_rss / 2**20:,.0f} MiB"
    )
    return out


def _steady(samples: list[tuple[float, dict[str, float]]], total: int) -> float | None:
    """Records/s between 10% and 90% of the backlog consumed (start-up and tail left out)."""
    points = [(t, sum(c.values())) for t, c in samples]
    lo = next(((t, n) for t, n in points if n >= 0.1 * total), None)
    hi = next(((t, n) for t, n in points if n >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def drift_run(
    services: Any, args: Any, say: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paced drift run; returns its results and what the Evidently comparison needs."""
    from storeml.connectors.monitor_store import MonitorStore
    from storeml.connectors.synthetic import generate
    from storeml.models.monitor_reference import order_rows
    from storeml.models.monitor_state import window_start

    window_s = args.drift_window_seconds
    window_ms = int(window_s * 1000)
    live = int(args.drift_rate * window_s * args.drift_windows)
    base = World(
        args.drift_stores,
        args.drift_history,
        live,
        seed=args.seed + 1,
        events_per_second=args.drift_rate,
        min_store_events=args.min_store_events,
    )
    settings = run_settings(
        services,
        "drift",
        monitor_window_seconds=window_s,
        monitor_grace_seconds=args.drift_grace_seconds,
        monitor_idle_seconds=max(10.0, 2 * args.drift_grace_seconds),
        monitor_stale_seconds=3600.0,
        monitor_cooldown_seconds=3600.0,
    )
    ensure(settings, _topics(settings))
    say(f"drift: {args.drift_stores:,} stores, folding {args.drift_history:,} history events")
    reference, _ = build_reference(base, settings)
    reg = register_monitors(settings, reference)
    store = max(reference.order_rows_by_store, key=lambda s: reference.order_rows_by_store[s])
    first_window = window_start(base.live_start_ms, window_ms) + window_ms
    drift_from = first_window + int((args.drift_after_windows + 0.5) * window_ms)
    world = World(
        base.stores,
        base.history_events,
        base.live_events,
        seed=base.seed,
        events_per_second=base.events_per_second,
        min_store_events=base.min_store_events,
        drift_store=store,
        drift_from_ms=drift_from,
        drift_price_factor=args.drift_factor,
    )
    events = itertools.islice(generate(world.config()), base.history_events, None)
    messages, orders = [], []
    for e in events:
        if e.malformed is not None:
            continue
        t = int(e.record["event_time"])
        topic = settings.topic_orders if e.topic_kind == "orders" else settings.topic_products
        drifted = e.topic_kind == "orders" and e.record["store_id"] == store and t >= drift_from
        messages.append((t, topic, e.key, e.value, drifted))
        if e.topic_kind == "orders":
            orders.append(e.record)
    messages.sort(key=lambda m: m[0])
    log = args.workdir_path / "drift-monitor.log"
    worker = Worker(settings, log, args.worker_cpus, args.worker_loglevel)
    worker.start()
    ready_s = worker.wait_ready()
    reader = AlertReader(settings).start()
    producer = Producer(settings.kafka_config())
    say(
        f"drift: producing {len(messages):,} events at {args.drift_rate:,.0f}/s"
        f" ({len(messages) / args.drift_rate / args.drift_speed:.0f}s); store {store} x"
        f"{args.drift_factor} from window {args.drift_after_windows + 1} + half"
    )
    t0_wall, t0_event = time.perf_counter(), messages[0][0]
    first_drift_at = None
    found = None
    try:
        for i, (t, topic, key, value, drifted) in enumerate(messages):
            due = t0_wall + (t - t0_event) / 1000.0 / args.drift_speed
            ahead = due - time.perf_counter()
            if ahead > 0.002:
                producer.poll()
                time.sleep(ahead)
            producer.send(topic, key, value)
            if drifted and first_drift_at is None:
                first_drift_at = time.time()
            if i % 500 == 0:
                producer.poll()
        producer.flush()
        deadline = time.perf_counter() + window_s + args.drift_grace_seconds + 30
        while time.perf_counter() < deadline:
            found = reader.first(store_id=store, monitor="orders", status="firing")
            if found:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        results = MonitorStore.from_settings(settings)
        results.setup()
        try:
            stores = sorted({r["store_id"] for r in orders})
            verdicts = {
                (s, int(r["window_start"])): r
                for s in stores
                for r in results.drift_series(s, "orders")
            }
        finally:
            results.close()
    finally:
        reader.stop()
        worker.stop()
    firing = [a for _, a in reader.alerts if a["monitor"] == "orders" and a["status"] == "firing"]
    out: dict[str, Any] = {
        "stores": args.drift_stores,
        "drift_store": store,
        "window_s": window_s,
        "grace_s": args.drift_grace_seconds,
        "rate": args.drift_rate,
        "speed": args.drift_speed,
        "live_events": len(messages),
        "worker_ready_s": ready_s,
        "drift_from_ms": drift_from,
        "alerted": found is not None,
        "false_alerts": sorted(
            {(a["store_id"], a["window_start"]) for a in firing if a["store_id"] != store}
        ),
        "windows_evaluated": len({w for _, w in verdicts}),
        "store_windows_evaluated": len(verdicts),
    }
    if found is not None and first_drift_at is not None:
        at, alert = found
        ws = int(alert["window_start"])
        out.update(
            alert_window_start=ws,
            alert_column=alert["column"],
            windows_after_drift_window=(ws - window_start(drift_from, window_ms)) // window_ms,
            event_time_to_close_windows=(ws + window_ms - drift_from) / window_ms,
            seconds=at - first_drift_at,
            seconds_to_detected_at=alert["detected_at"] / 1000.0 - first_drift_at,
        )
    rows = order_rows(orders)
    rows["window_start"] = rows["event_time"] - rows["event_time"] % window_ms
    context = {
        "monitor": reg["monitors"]["orders"],
        "reference": reference.frames["orders"],
        "live": rows,
        "verdicts": verdicts,
        "drift_store": store,
        "drift_window": window_start(drift_from, window_ms),
        "window_ms": window_ms,
    }
    return out, context


def storeml_window_seconds(monitor: Any, live: Any, windows: list[int]) -> dict[str, Any]:
    """In-process cost of the monitor on each window: ``counts`` over its rows + ``predict``."""
    import pandas as pd

    out = {}
    for w in windows:
        rows = live[live["window_start"] == w]
        t0 = time.perf_counter()
        stores, counts = monitor.counts(rows)
        frame = pd.DataFrame({"store_id": stores, "counts": list(counts)})
        stats = monitor.predict(frame)
        seconds = time.perf_counter() - t0
        out[str(w)] = {
            "seconds": seconds,
            "stores": len(stores),
            "rows": len(rows),
            "alerts": int(stats.groupby("store_id")["alert"].any().sum()),
        }
    return out


def pick_pairs(context: dict[str, Any], windows: int, max_stores: int, min_rows: int) -> Any:
    """(store, window) pairs for the peer: ``windows`` evaluated windows ending just after the
    drift window, the ``max_stores`` stores with most rows in each (the drifted store always)."""
    verdicts = context["verdicts"]
    evaluated = sorted({w for _, w in verdicts})
    drift_w = context["drift_window"]
    after = [w for w in evaluated if w > drift_w][:1]
    chosen = [w for w in evaluated if w <= drift_w][-max(1, windows - len(after)) :] + after
    pairs = []
    for w in chosen:
        cands = [
            (s, r) for (s, ww), r in verdicts.items() if ww == w and int(r["rows"]) >= min_rows
        ]
        cands.sort(key=lambda x: (-int(x[1]["rows"]), x[0]))
        keep = [s for s, _ in cands[:max_stores]]
        if context["drift_store"] not in keep and any(
            s == context["drift_store"] for s, _ in cands
        ):
            keep[-1:] = [context["drift_store"]]
        pairs += [(s, w) for s in keep]
    return chosen, pairs
