"""The ``storeml`` command.

Global options override settings; every setting can also come from a ``STOREML_*`` environment
variable or the TOML file named by ``STOREML_CONFIG`` (see ``storeml settings``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from storeml.cli_batch import batch_transform_cmd, lake, recompute_cmd, schedule_group
from storeml.cli_common import settings_of
from storeml.cli_models import models
from storeml.cli_monitor import monitor_group
from storeml.cli_schedule import schedule_airflow_cmd, schedule_run_job_cmd
from storeml.cli_segments import segments
from storeml.cli_serve import keys_group, serve_cmd
from storeml.errors import StoremlError
from storeml.redaction import SecretRedactingFilter
from storeml.settings import Settings, load_settings

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="STOREML_CONFIG",
    show_envvar=True,
    help="TOML settings file.",
)
@click.option(
    "--kafka-bootstrap",
    envvar="STOREML_KAFKA_BOOTSTRAP",
    show_envvar=True,
    help="Kafka bootstrap servers [default: the embedded broker, 127.0.0.1:19092].",
)
@click.option(
    "--redis-url",
    envvar="STOREML_REDIS_URL",
    show_envvar=True,
    help="Feature store Redis [default: redis://127.0.0.1:6379/0].",
)
@click.option(
    "--mlflow-tracking-uri",
    envvar="STOREML_MLFLOW_TRACKING_URI",
    show_envvar=True,
    help="MLflow tracking URI [default: SQLite under <home>/mlflow].",
)
@click.option(
    "--home",
    envvar="STOREML_HOME",
    show_envvar=True,
    type=click.Path(file_okay=False),
    help="Local state folder [default: .storeml].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every micro-batch.")
@click.pass_context
def main(
    ctx: click.Context,
    config: str | None,
    kafka_bootstrap: str | None,
    redis_url: str | None,
    mlflow_tracking_uri: str | None,
    home: str | None,
    verbose: bool,
) -> None:
    """storeml: per-store ML models on live commerce events (Kafka -> Spark -> Kafka + Redis)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("storeml").setLevel(logging.INFO)
    overrides = {
        k: v
        for k, v in {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "home": home,
        }.items()
        if v is not None
    }
    try:
        settings = load_settings(config, **overrides)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    # a library logging a URI with credentials, or the text of an error quoting one, prints masked
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretRedactingFilter(settings.secret_values()))
    os.environ.update(settings.mlflow_env())  # MLflow's client reads its credentials from there
    ctx.obj = {"settings": settings}


@main.command("settings")
@click.pass_context
def show_settings(ctx: click.Context) -> None:
    """Print the effective settings (secrets as ***) and what each one means."""
    shown = settings_of(ctx).shown()
    for name, field in Settings.model_fields.items():
        click.echo(f"{name} = {shown[name]!s}")
        if field.description:
            click.echo(f"    STOREML_{name.upper()}: {field.description}")


# --- stack -----------------------------------------------------------------------------------
@main.group()
def stack() -> None:
    """The embedded local stack: Kafka-protocol broker, Redis, MLflow on SQLite."""


@stack.command("up")
@click.pass_context
def stack_up_cmd(ctx: click.Context) -> None:
    """Start what is not already running and create the topics."""
    from storeml.stack import stack_up

    settings = settings_of(ctx)
    status = _run(lambda: stack_up(settings))
    _run(lambda: _create_topics(settings))
    click.echo(str(status))


@stack.command("down")
@click.pass_context
def stack_down_cmd(ctx: click.Context) -> None:
    """Stop what `stack up` started (never a service it found running)."""
    from storeml.stack import stack_down

    click.echo(str(_run(lambda: stack_down(settings_of(ctx)))))


@stack.command("status")
@click.pass_context
def stack_status_cmd(ctx: click.Context) -> None:
    """Show each component: running, external or stopped."""
    from storeml.stack import stack_status

    status = _run(lambda: stack_status(settings_of(ctx)))
    click.echo(str(status))
    if not status.ok:
        sys.exit(1)


def _create_topics(settings: Settings) -> None:
    from storeml.connectors.kafka_admin import ensure_topics

    ensure_topics(settings.kafka_config(), settings.topics, settings.topic_partitions)


def _run(action: Any) -> Any:
    try:
        return action()
    except StoremlError as exc:
        from storeml.redaction import redact_url

        raise click.ClickException(redact_url(str(exc))) from exc


# --- producers -------------------------------------------------------------------------------
@main.command()
@click.option("--stores", default=50, show_default=True, help="Stores in the synthetic shop.")
@click.option("--events", default=20_000, show_default=True, help="Events to produce.")
@click.option(
    "--seed", default=7, show_default=True, help="Generator seed (same seed, same events)."
)
@click.option(
    "--rate", type=float, default=None, help="Events per second (default: as fast as possible)."
)
@click.option(
    "--malformed",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of deliberately malformed messages (dead-letter demo).",
)
@click.pass_context
def produce(
    ctx: click.Context, stores: int, events: int, seed: int, rate: float | None, malformed: float
) -> None:
    """Produce synthetic order and product events."""
    from storeml.batch.history import live_config
    from storeml.connectors.event_producer import produce_events
    from storeml.connectors.synthetic import generate

    settings = settings_of(ctx)
    _run(lambda: _create_topics(settings))
    config = live_config(stores, events, seed, malformed_fraction=malformed)
    stats = _run(
        lambda: produce_events(
            settings.kafka_config(),
            generate(config),
            settings.topic_orders,
            settings.topic_products,
            rate=rate,
        )
    )
    click.echo(f"produced {stats}")


@main.command("replay-csv")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--customer", required=True, help="Column holding the customer id.")
@click.option("--timestamp", required=True, help="Column holding the time (ISO 8601 or epoch).")
@click.option("--amount", required=True, help="Column holding the line amount (decimal).")
@click.option("--store", default=None, help="Column holding the store id.")
@click.option("--product", default=None, help="Column holding the product id.")
@click.option("--category", default=None, help="Column holding the category.")
@click.option("--quantity", default=None, help="Column holding the quantity.")
@click.option("--order-id", default=None, help="Column grouping rows into one order.")
@click.option(
    "--default-store", default="csv", show_default=True, help="Store id when no store column."
)
@click.option("--currency", default="USD", show_default=True)
@click.pass_context
def replay_csv_cmd(
    ctx: click.Context,
    path: str,
    customer: str,
    timestamp: str,
    amount: str,
    store: str | None,
    product: str | None,
    category: str | None,
    quantity: str | None,
    order_id: str | None,
    default_store: str,
    currency: str,
) -> None:
    """Replay a CSV transaction log into the order topic (bad rows go to the dead-letter topic)."""
    from storeml.connectors.csv_replay import CsvMapping, replay_csv

    settings = settings_of(ctx)
    _run(lambda: _create_topics(settings))
    mapping = CsvMapping(
        customer=customer,
        timestamp=timestamp,
        amount=amount,
        store=store,
        product=product,
        category=category,
        quantity=quantity,
        order_id=order_id,
        default_store=default_store,
        currency=currency,
    )
    stats = _run(
        lambda: replay_csv(
            settings.kafka_config(),
            Path(path),
            mapping,
            settings.topic_orders,
            settings.topic_dead_letter,
        )
    )
    click.echo(f"replayed {stats}")


# --- models ------------------------------------------------------------------------------------
@main.command()
@click.option("--stores", default=50, show_default=True)
@click.option("--events", default=20_000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--alias", default="champion", show_default=True)
@click.pass_context
def train(ctx: click.Context, stores: int, events: int, seed: int, alias: str) -> None:
    """Train per-store models on synthetic history and register them under ALIAS."""
    from storeml.batch.history import train_on_synthetic

    handles = _run(lambda: train_on_synthetic(settings_of(ctx), stores, events, seed, alias))
    for kind, handle in handles.items():
        click.echo(f"{kind}: {handle.name} version {handle.version} -> @{alias}")


# --- stream ------------------------------------------------------------------------------------
_checkpoint_option = click.option(
    "--checkpoint",
    type=click.Path(file_okay=False),
    envvar="STOREML_CHECKPOINT_DIR",
    show_envvar=True,
    help="Checkpoint folder [default: <home>/checkpoints/enrich].",
)


@main.group()
def stream() -> None:
    """The enrichment stream."""


@stream.command("run")
@click.option("--available-now", is_flag=True, help="Process what is in the topics, then stop.")
@click.option(
    "--max-records",
    type=int,
    default=None,
    envvar="STOREML_MAX_RECORDS_PER_BATCH",
    show_envvar=True,
    help="Cap on records per micro-batch [default: 50000].",
)
@_checkpoint_option
@click.pass_context
def stream_run(
    ctx: click.Context, available_now: bool, max_records: int | None, checkpoint: str | None
) -> None:
    """Run the enrichment stream (until stopped, or until caught up with --available-now)."""
    from storeml.streams.enrich import start_enrichment
    from storeml.streams.spark_session import get_spark

    base = settings_of(ctx)
    updates: dict[str, Any] = {}
    if max_records is not None:
        updates["max_records_per_batch"] = max_records
    if checkpoint is not None:
        updates["checkpoint_dir"] = Path(checkpoint).absolute()
    settings = base.model_copy(update=updates)

    def report(batch: Any) -> None:
        click.echo(
            f"batch {batch.batch_id}: {batch.events} events ({batch.dead_letters} dead letters) -> "
            f"{batch.customers} customers, {batch.products} products in {batch.seconds:.2f}s "
            f"[{', '.join(f'{k}={v}' for k, v in batch.models.items())}]"
        )

    spark = get_spark(settings, "storeml-stream")
    metrics = None
    if settings.stream_metrics_port > 0:  # before the query starts, so its start is seen
        from storeml.streams.stream_metrics import start_metrics

        try:
            metrics = start_metrics(spark, settings.stream_metrics_port)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve stream metrics on port {settings.stream_metrics_port}: {exc};"
                " set STOREML_STREAM_METRICS_PORT to a free port (0 turns metrics off)"
            ) from exc
        click.echo(f"stream metrics on http://0.0.0.0:{metrics.port}/metrics")
    query, handler = _run(
        lambda: start_enrichment(spark, settings, available_now=available_now, on_batch=report)
    )
    # stop from another thread: the main one is inside a py4j call (awaitTermination) already
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=query.stop).start())
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    finally:
        error = query.exception()
        handler.close()  # no lake compaction outlives the stream
        if metrics is not None:
            metrics.stop()
        spark.stop()
    if error is not None:
        from storeml.redaction import redact_url

        raise click.ClickException(redact_url(f"stream failed: {error}"))


@stream.command("reset")
@_checkpoint_option
@click.option(
    "--delete", is_flag=True, help="Delete the old checkpoint instead of moving it aside."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def stream_reset(ctx: click.Context, checkpoint: str | None, delete: bool, yes: bool) -> None:
    """Start the stream on a new checkpoint, one profile generation up (stop the stream first).

    The profiles of the new checkpoint rank above every profile published before (their
    profile_version carries the generation), so Redis and consumers keep updating. The new state
    starts from what the input topics still hold: older history is lost to the profiles (it stays
    in the event lake). See docs/faults.md before a reset.
    """
    from storeml.streams.checkpoint import reset_checkpoint

    settings = settings_of(ctx)
    if checkpoint is not None:
        settings = settings.model_copy(update={"checkpoint_dir": Path(checkpoint).absolute()})
    where = settings.checkpoint_path
    if not yes:
        action = "delete" if delete else "move aside"
        click.confirm(
            f"Stop the stream first. Reset {where} ({action} the old checkpoint)?", abort=True
        )
    done = _run(lambda: reset_checkpoint(settings, delete=delete))
    old = "none" if done.old_generation is None else str(done.old_generation)
    click.echo(f"new checkpoint {done.checkpoint}: generation {done.meta.generation} (was {old})")
    if done.moved_to is not None:
        click.echo(f"old checkpoint moved to {done.moved_to}; delete it when no longer needed")
    click.echo(
        f"profile_version of new profiles starts at {done.meta.version_base:,}; start the stream"
        " with `storeml stream run`"
    )


# --- lookups -----------------------------------------------------------------------------------
@main.command()
@click.argument("kind", type=click.Choice(["customer", "product"]))
@click.argument("store_id")
@click.argument("entity_id")
@click.option(
    "--api",
    "api_url",
    metavar="URL",
    help="Go through the serving API at URL (typed values, freshness, the key's rights) instead"
    " of reading Redis [default: the api_url setting, STOREML_API_URL; unset: Redis].",
)
@click.option(
    "--api-key",
    metavar="KEY",
    envvar="STOREML_API_KEY",
    show_envvar=True,
    help="API key for --api (`storeml keys create`); prefer the environment variable, which"
    " `ps` does not show.",
)
@click.pass_context
def lookup(
    ctx: click.Context,
    kind: str,
    store_id: str,
    entity_id: str,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """Print one profile: from the Redis feature store, or through the API with --api."""
    settings = settings_of(ctx)
    api_url = api_url or settings.api_url
    if api_url:
        from storeml.client import Client
        from storeml.errors import ApiNotFoundError

        if api_key is None and settings.api_key is not None:
            api_key = settings.api_key.get_secret_value()
        with Client(api_url, api_key=api_key) as client:
            try:
                found = client.customer if kind == "customer" else client.product
                served = found(store_id, entity_id)
            except ApiNotFoundError as exc:
                raise click.ClickException(
                    f"no {kind} profile for store {store_id!r}, id {entity_id!r} ({exc})"
                ) from exc
            except StoremlError as exc:
                raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(served.to_dict(), indent=2, sort_keys=True))
        return

    from storeml.connectors.redis_sink import FeatureStore

    store = FeatureStore(settings.redis, settings.redis_prefix)
    profile = _run(lambda: store.get(kind, store_id, entity_id))
    if profile is None:
        raise click.ClickException(f"no {kind} profile for store {store_id!r}, id {entity_id!r}")
    click.echo(json.dumps(profile, indent=2, sort_keys=True))


@main.command()
@click.argument(
    "which", type=click.Choice(["customer-profiles", "product-profiles", "dead-letter"])
)
@click.option("-n", "--limit", default=5, show_default=True)
@click.pass_context
def tail(ctx: click.Context, which: str, limit: int) -> None:
    """Print the last records of an output topic, decoded."""
    from storeml.streams.demo import decode_topic

    settings = settings_of(ctx)
    for record in _run(lambda: decode_topic(settings, which))[-limit:]:
        click.echo(json.dumps(record, default=str, sort_keys=True))


@main.command()
@click.option("--stores", default=40, show_default=True)
@click.option("--events", default=30_000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--keep-stack", is_flag=True, help="Leave the stack running at the end.")
@click.pass_context
def demo(ctx: click.Context, stores: int, events: int, seed: int, keep_stack: bool) -> None:
    """Everything on embedded defaults: stack, models, events, stream, then profiles and a lookup."""
    from storeml.streams.demo import run_demo

    _run(
        lambda: run_demo(
            settings_of(ctx),
            stores=stores,
            events=events,
            seed=seed,
            keep_stack=keep_stack,
            echo=click.echo,
        )
    )


main.add_command(models)
main.add_command(monitor_group)
main.add_command(recompute_cmd)
main.add_command(batch_transform_cmd)
main.add_command(schedule_group)
schedule_group.add_command(schedule_airflow_cmd)
schedule_group.add_command(schedule_run_job_cmd)
main.add_command(lake)
main.add_command(serve_cmd)
main.add_command(keys_group)
main.add_command(segments)

if __name__ == "__main__":
    main()
