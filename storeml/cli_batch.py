"""Jobs over history: ``storeml recompute``.

Added to the main command in ``storeml.cli``; the commands use the settings the main command built
(``ctx.obj["settings"]``), or load them when run on their own.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from storeml.errors import StoremlError
from storeml.settings import Settings, load_settings

__all__ = ["recompute_cmd", "parse_time"]


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and isinstance(obj.get("settings"), Settings):
        return obj["settings"]
    try:
        return load_settings()
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_time(value: str) -> int:
    """Epoch milliseconds of an ISO 8601 time (UTC when it has no offset) or of epoch ms digits."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not a time; write ISO 8601 (2024-03-01T12:00:00Z, 2024-03-01) or"
            " epoch milliseconds"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@click.command("recompute")
@click.option(
    "--from-lake",
    "source",
    flag_value="lake",
    default=True,
    show_default=False,
    help="Read history from the event lake (STOREML_LAKE_DIR) [default].",
)
@click.option(
    "--from-topic", "source", flag_value="topic", help="Read the input topics from their start."
)
@click.option("--store", "stores", multiple=True, help="Only this store (repeat for several).")
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Rebuild profiles as they stood at this time (ISO 8601 or epoch ms; no later event"
    " counts). Written to --output only.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write the profiles as Parquet to this folder (<DIR>/customer, <DIR>/product).",
)
@click.option(
    "--publish/--no-publish",
    default=None,
    help="Publish to the enriched topics and Redis [default: yes, except with --as-of].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def recompute_cmd(
    ctx: click.Context,
    source: str,
    stores: tuple[str, ...],
    as_of: str | None,
    output: str | None,
    publish: bool | None,
    quiet: bool,
) -> None:
    """Rebuild every profile from history with the stream's code and publish it (batch-to-Kafka).

    Safe while the stream runs: Redis keeps the profile that folded the most events.
    """
    from storeml.batch.recompute import recompute
    from storeml.streams.spark_session import get_spark

    settings = _settings(ctx)
    as_of_ms = parse_time(as_of) if as_of else None
    spark = get_spark(settings, "storeml-recompute")
    try:
        summary = recompute(
            spark,
            settings,
            source="topic" if source == "topic" else "lake",
            stores=stores or None,
            as_of_ms=as_of_ms,
            output=output,
            publish=publish,
            progress=not quiet,
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        spark.stop()
    click.echo(summary.format())
    if output:
        click.echo(f"profiles written to {output}")
