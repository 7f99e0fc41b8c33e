"""``storeml segments``: segments of the score index, read straight from Redis.

``export`` writes every entity of one store whose score lies in ``[--min, --max]`` to a CSV
(``id,score``) or NDJSON (``{"id", "score"}`` per line) file, highest score first, ties by id
descending: the same rows, in the same order, as the API's ``GET .../segments/{kind}:export``.
The segment is read in one atomic command (:class:`~storeml.connectors.segment_reader.
SyncSegmentReader`), so the file is one consistent snapshot even while the stream writes. The
Redis user needs ``+zrange`` only (``LOOKUP_ACL``, docs/security.md).

Added to the main command with ``main.add_command(segments)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from storeml.cli_common import settings_of
from storeml.errors import StoremlError

__all__ = ["segments"]

_FORMATS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson"}


@click.group()
def segments() -> None:
    """Segments of a store: its entities with a score in a range (the stream's score index)."""


@segments.command("export")
@click.option("--store", required=True, help="The store id.")
@click.option(
    "--kind", type=click.Choice(["customer", "product"]), default="customer", show_default=True
)
@click.option(
    "--field",
    default=None,
    help="Score to segment on: propensity (customers) or category (products, with"
    " --category); default: the kind's.",
)
@click.option("--min", "low", type=float, default=None, help="Inclusive lower score bound.")
@click.option("--max", "high", type=float, default=None, help="Inclusive upper score bound.")
@click.option("--category", default=None, help="Predicted category of a product segment.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write (- for standard output).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "ndjson"]),
    default=None,
    help="Output format; default: from the file name (.csv, else NDJSON).",
)
@click.pass_context
def export_cmd(
    ctx: click.Context,
    store: str,
    kind: str,
    field: str | None,
    low: float | None,
    high: float | None,
    category: str | None,
    output: str,
    fmt: str | None,
) -> None:
    """Write a store's segment to a CSV or NDJSON file, highest score first.

    Example: storeml segments export --store s1 --min 0.8 -o out.csv
    """
    from storeml.connectors.segment_reader import SyncSegmentReader, export_header, export_lines

    settings = settings_of(ctx)
    fmt = fmt or _FORMATS.get(Path(output).suffix.lower(), "ndjson")
    field = field or ("propensity" if kind == "customer" else "category")
    client = settings.redis.connect()
    reader = SyncSegmentReader(client, settings.redis_prefix)
    count = 0
    try:
        chunks = reader.export(kind, store, field, low, high, category)
        if output == "-":
            sink = sys.stdout.buffer
            sink.write(export_header(fmt))
            for chunk in chunks:
                sink.write(export_lines(chunk, fmt))
                count += len(chunk)
            sink.flush()
        else:
            # written beside the target and renamed into place: never a half-written file
            target = Path(output)
            partial = target.with_name(f".{target.name}.partial")
            try:
                with partial.open("wb") as sink_file:
                    sink_file.write(export_header(fmt))
                    for chunk in chunks:
                        sink_file.write(export_lines(chunk, fmt))
                        count += len(chunk)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    except StoremlError as exc:
        from storeml.redaction import redact_url

        raise click.ClickException(redact_url(str(exc))) from exc
    finally:
        client.close()
    what = f"{kind} {field}" + (f" {category!r}" if category else "")
    bounds = f"[{'-inf' if low is None else low}, {'+inf' if high is None else high}]"
    where = "standard output" if output == "-" else output
    click.echo(f"{count:,} {kind}s of store {store!r} with {what} in {bounds} -> {where}", err=True)
