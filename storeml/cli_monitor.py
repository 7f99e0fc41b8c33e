"""``storeml monitor``: run the Faust monitor (drift, live performance, alerts, health)."""

from __future__ import annotations

import json

import click

from storeml.cli_common import settings_of

__all__ = ["monitor_group"]


@click.group("monitor")
def monitor_group() -> None:
    """The live monitor of models and pipeline (docs/monitoring.md)."""


@monitor_group.command("run")
@click.option(
    "--loglevel",
    type=click.Choice(["crit", "error", "warn", "info", "debug"]),
    default="warn",
    show_default=True,
    help="Faust worker log level.",
)
@click.pass_context
def monitor_run(ctx: click.Context, loglevel: str) -> None:
    """Run the monitor as one Faust worker until stopped (Ctrl-C, SIGTERM).

    It consumes the orders, products, enriched customer and product topics and the dead-letter
    topic; results go to Redis (the dashboard at /dashboard of `storeml serve`), alerts to the
    alerts topic (STOREML_TOPIC_ALERTS) and the webhook (STOREML_MONITOR_WEBHOOK_URL); /metrics
    is served on STOREML_MONITOR_WEB_PORT.
    """
    import faust

    from storeml.connectors.kafka_admin import ensure_topics, partitions_of
    from storeml.streams.monitor_app import build_app

    settings = settings_of(ctx)
    ensure_topics(
        settings.kafka_config(),
        [
            settings.topic_alerts,
            settings.topic_orders,
            settings.topic_products,
            settings.topic_customer_profiles,
            settings.topic_product_profiles,
            settings.topic_dead_letter,
        ],
        partitions=settings.topic_partitions,
    )
    inputs = [
        settings.topic_orders,
        settings.topic_products,
        settings.topic_customer_profiles,
        settings.topic_product_profiles,
    ]
    counts: dict[str, int] = {}
    for topic, _partition in partitions_of(settings.kafka_config(), inputs):
        counts[topic] = counts.get(topic, 0) + 1
    app = build_app(settings, partitions=max(counts.values(), default=settings.topic_partitions))
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()


@monitor_group.command("status")
@click.pass_context
def monitor_status(ctx: click.Context) -> None:
    """Print the monitor's last health record and open alerts (from Redis) as JSON."""
    from storeml.connectors.monitor_store import MonitorStore

    store = MonitorStore.from_settings(settings_of(ctx))
    store.setup()
    try:
        out = {"health": store.health(), "open_alerts": store.alerts(status="open", limit=50)}
    finally:
        store.close()
    click.echo(json.dumps(out, indent=2, default=str))
