"""``storeml models``: validate and train model packages (see docs/model-packages.md).

Added to the main command with ``main.add_command(models)``; the subcommands use the settings the
main command built (``ctx.obj["settings"]``), or load them when run on their own.
"""

from __future__ import annotations

import json
from typing import Any

import click

from storeml.errors import StoremlError
from storeml.settings import Settings, load_settings

__all__ = ["models"]


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and isinstance(obj.get("settings"), Settings):
        return obj["settings"]
    try:
        return load_settings()
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def models() -> None:
    """Model packages: a folder with config.yaml (+ predictor.py, preprocess.py, requirements.txt)."""


@models.command("validate")
@click.argument("path", type=click.Path(file_okay=False))
def validate_cmd(path: str) -> None:
    """Check the package at PATH; every problem names the file, the key and the fix."""
    from storeml.models.package import load_package

    try:
        package = load_package(path)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    config = package.config
    framework = config.model.framework
    what = getattr(framework, "estimator", None) or (
        f"{framework.file}:{framework.class_name}"  # type: ignore[union-attr]
    )
    click.echo(f"ok: {package.path}")
    click.echo(f"  model       {config.model.name} ({config.model.kind}), {what}")
    click.echo(f"  features    {', '.join(package.feature_names)}")
    click.echo(
        f"  prediction  {config.prediction.service} {config.prediction.version}: "
        + ", ".join(f"{o.name} {o.type}" for o in config.prediction.outputs)
    )
    if config.prediction.schedule:
        from datetime import UTC, datetime

        from storeml.models.schedule import next_run

        upcoming = next_run(config.prediction.schedule, datetime.now(UTC).replace(tzinfo=None))
        click.echo(f"  schedule    {config.prediction.schedule} (next run {upcoming} UTC)")
    for warning in package.warnings:
        click.echo(f"  warning: {warning}")


@models.command("train")
@click.argument("path", type=click.Path(file_okay=False))
@click.option(
    "--store", "store_ids", multiple=True, help="Train only this store (repeat for several)."
)
@click.option(
    "--date",
    "cutoff_date",
    default=None,
    help="Training cutoff YYYY-MM-DD (midnight UTC): profiles fold history before it; customer"
    " labels come after it [default: 70% of the history's events lie before the cutoff].",
)
@click.option(
    "--alias",
    default="challenger",
    show_default=True,
    help="Registry alias pointed at the new version.",
)
@click.option("--no-alias", is_flag=True, help="Register the version without an alias.")
@click.option(
    "--from-topics",
    is_flag=True,
    help="Train on the order and product topics instead of synthetic history.",
)
@click.option("--stores", default=50, show_default=True, help="Synthetic history: stores.")
@click.option("--events", default=20_000, show_default=True, help="Synthetic history: events.")
@click.option("--seed", default=7, show_default=True, help="Synthetic history: seed.")
@click.pass_context
def train_cmd(
    ctx: click.Context,
    path: str,
    store_ids: tuple[str, ...],
    cutoff_date: str | None,
    alias: str,
    no_alias: bool,
    from_topics: bool,
    stores: int,
    events: int,
    seed: int,
) -> None:
    """Train the package at PATH from history: one model per store, registered as a version."""
    settings = _settings(ctx)
    try:
        handle, summary = _train(
            settings,
            path,
            store_ids,
            cutoff_date,
            None if no_alias else alias or None,
            from_topics,
            stores,
            events,
            seed,
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    target = f" -> @{handle.alias}" if handle.alias else ""
    click.echo(f"{handle.name} version {handle.version}{target} (run {handle.run_id})")
    click.echo(json.dumps(summary, sort_keys=True))


def _train(
    settings: Settings,
    path: str,
    store_ids: tuple[str, ...],
    cutoff_date: str | None,
    alias: str | None,
    from_topics: bool,
    stores: int,
    events: int,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    from storeml.batch.packages import cutoff_from_date, default_cutoff, facts_from_topics
    from storeml.batch.train import train_package
    from storeml.connectors.mlflow_registry import get_client
    from storeml.models.package import load_package

    package = load_package(path)  # fail on a bad package before reading any history
    summary: dict[str, Any] = {}
    if from_topics:
        facts, counts = facts_from_topics(settings)
        summary.update(counts)
        cutoff = default_cutoff(facts)
    else:
        from storeml.batch.history import synthetic_facts

        facts, cutoff = synthetic_facts(stores, events, seed)
    if cutoff_date is not None:
        cutoff = cutoff_from_date(cutoff_date)
    handle = train_package(
        settings, package, facts, cutoff, stores=list(store_ids) or None, alias=alias
    )
    run = get_client(settings.tracking_uri, settings.registry_uri).get_run(str(handle.run_id))
    summary.update({"cutoff_ms": cutoff, **{k: round(v, 4) for k, v in run.data.metrics.items()}})
    return handle, summary
