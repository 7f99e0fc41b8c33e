"""Jobs over history: ``storeml recompute``, ``storeml batch-transform``, ``storeml schedule``.

Added to the main command in ``storeml.cli``; the commands use the settings the main command built
(``ctx.obj["settings"]``), or load them when run on their own.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from storeml.cli_common import settings_of
from storeml.errors import StoremlError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from storeml.settings import Settings

__all__ = [
    "lake",
    "recompute_cmd",
    "batch_transform_cmd",
    "schedule_group",
    "parse_time",
    "history_source",
    "LazySpark",
    "ScheduleDirs",
]


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


def history_source(command: Any) -> Any:
    """``--from-lake`` (default) / ``--from-topic``, as the ``source`` parameter."""
    command = click.option(
        "--from-topic", "source", flag_value="topic", help="Read the input topics from their start."
    )(command)
    return click.option(
        "--from-lake",
        "source",
        flag_value="lake",
        default=True,
        show_default=False,
        help="Read history from the event lake (STOREML_LAKE_DIR) [default].",
    )(command)


@click.command("recompute")
@history_source
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

    settings = settings_of(ctx)
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


@click.command("batch-transform")
@click.option(
    "--kind", type=click.Choice(["customer", "product"]), required=True, help="Entity kind."
)
@click.option(
    "--input",
    "input_path",
    required=True,
    help="Parquet file or folder of entity profiles, e.g. a `recompute --output` folder (its"
    " <kind>/ part is read) or that part itself.",
)
@click.option(
    "--output",
    required=True,
    help="Root of the predictions: <OUTPUT>/date=<DATE>/store_id=<store>/*.parquet; the date"
    " folder is replaced as a whole.",
)
@click.option(
    "--model",
    default=None,
    help="Registered model [default: STOREML_CUSTOMER_MODEL or STOREML_PRODUCT_MODEL, by --kind].",
)
@click.option(
    "--alias",
    default=None,
    help="Alias, or a version number [default: STOREML_SERVING_ALIAS, champion].",
)
@click.option(
    "--date",
    "run_date",
    default=None,
    help="Run date, the date= partition written (YYYY-MM-DD) [default: today, UTC].",
)
@click.pass_context
def batch_transform_cmd(
    ctx: click.Context,
    kind: str,
    input_path: str,
    output: str,
    model: str | None,
    alias: str | None,
    run_date: str | None,
) -> None:
    """Score a Parquet dataset of entities with each store's champion (Spark) and write Parquet.

    One predict call per store; stores without a model of their own get the global model
    (model.scope says which). Prints rows, stores, the model version and the time taken.
    """
    from pyspark.sql import SparkSession

    from storeml.batch.transform import batch_transform
    from storeml.streams.spark_session import get_spark

    settings = settings_of(ctx)
    ours = SparkSession.getActiveSession() is None  # else an embedding process owns the session
    spark = get_spark(settings, "storeml-batch-transform")
    try:
        summary = batch_transform(
            spark,
            settings,
            input_path,
            kind=kind,
            model_name=model,
            alias=alias or settings.serving_alias,
            output=output,
            run_date=run_date,
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if ours:
            spark.stop()
    click.echo(summary.format())


class LazySpark:
    """The Spark session, started by the first call from any thread, so that a scheduler process
    starts Spark only when a run is due; :attr:`session` is None until then."""

    def __init__(self, settings: Settings, app_name: str) -> None:
        self._settings = settings
        self._app_name = app_name
        self._lock = threading.Lock()
        self.session: SparkSession | None = None

    def __call__(self) -> SparkSession:
        from storeml.streams.spark_session import get_spark

        with self._lock:
            if self.session is None:
                self.session = get_spark(self._settings, self._app_name)
            return self.session


@dataclass(frozen=True)
class ScheduleDirs:
    """Where scheduled runs write: ``schedule run`` and ``run-job`` must agree (the locks)."""

    output_root: str
    scratch: Path
    lock_dir: Path

    @classmethod
    def of(cls, settings: Settings, output: str | None, lock_dir: str | None) -> ScheduleDirs:
        """``--output`` and ``--lock-dir``, else their defaults under ``STOREML_HOME``."""
        home = settings.home
        return cls(
            output_root=output or str(home / "predictions"),
            scratch=home / "schedule" / "work",
            lock_dir=Path(lock_dir or home / "schedule" / "locks"),
        )


# --- schedule ------------------------------------------------------------------------------------
_PACKAGES_HELP = (
    "Folder of model packages (each a folder with config.yaml), or one package folder; every"
    " package whose config.yaml has prediction.schedule is a job."
)


@click.group("schedule")
def schedule_group() -> None:
    """Scheduled batch predictions of model packages (prediction.schedule, cron, UTC).

    Each run recomputes the latest profiles from history and scores them with the package's
    model @champion into <OUTPUT>/<service>/<version>/date=<day>/store_id=<store>/.
    """


@schedule_group.command("list")
@click.option("--packages", "packages_dir", required=True, help=_PACKAGES_HELP)
@click.option("--count", default=3, show_default=True, help="Next run times per package.")
def schedule_list_cmd(packages_dir: str, count: int) -> None:
    """Show each package, its cron schedule and its next run times (UTC)."""
    from storeml.batch.package_jobs import find_packages
    from storeml.batch.schedule import upcoming, utc_now
    from storeml.errors import ConfigError
    from storeml.models.schedule import parse_cron

    try:
        found = find_packages(packages_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        raise click.ClickException(
            f"no model package under {packages_dir} (a package is a folder with a config.yaml)"
        )
    now = utc_now()
    invalid = 0
    for path, package in found:
        if isinstance(package, ConfigError):
            invalid += 1
            click.echo(f"{path.name}: INVALID ({str(package).splitlines()[0]})")
            continue
        prediction = package.config.prediction
        target = f"{prediction.service}/{prediction.version}"
        if not prediction.schedule:
            click.echo(f"{package.name}  {package.kind}  {target}  no schedule")
            continue
        times = upcoming(parse_cron(prediction.schedule), now, count)
        click.echo(f"{package.name}  {package.kind}  {target}  cron '{prediction.schedule}'")
        click.echo(
            "  next runs (UTC): " + ", ".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in times)
        )
    if invalid:
        raise click.ClickException(
            f"{invalid} invalid package(s); `storeml models validate PATH` lists the problems"
        )


@schedule_group.command("run")
@click.option("--packages", "packages_dir", required=True, help=_PACKAGES_HELP)
@click.option(
    "--output",
    default=None,
    help="Root of the predictions [default: <STOREML_HOME>/predictions].",
)
@click.option(
    "--recompute",
    is_flag=True,
    help="Rebuild each run's profiles from history as of its due time (--from-lake/--from-topic)"
    " instead of scoring the stream's latest profiles, read from its state [default].",
)
@history_source
@click.option(
    "--lock-dir",
    default=None,
    help="Lock files, one per job, so two `schedule run` processes never run a job at once"
    " [default: <STOREML_HOME>/schedule/locks].",
)
@click.option("--once", is_flag=True, help="Run every scheduled package once now, then exit.")
@click.option(
    "--max-runs", type=click.IntRange(min=1), default=None, help="Exit after starting N runs."
)
@click.pass_context
def schedule_run_cmd(
    ctx: click.Context,
    packages_dir: str,
    output: str | None,
    recompute: bool,
    source: str,
    lock_dir: str | None,
    once: bool,
    max_runs: int | None,
) -> None:
    """Run each package's batch predictions at its cron times until stopped (SIGTERM, Ctrl-C).

    One log line when a run starts and one when it ends (job, due time, rows, seconds,
    outcome). A job whose previous run is still going, or that another process is running, is
    skipped; a failed run is logged and the job stays scheduled. The first signal stops new
    runs and waits for the ones going on; a second one cancels their Spark jobs.
    """
    from storeml.batch.package_jobs import load_packages, package_jobs
    from storeml.batch.schedule import Scheduler, show_time

    log = logging.getLogger("storeml.schedule")
    settings = settings_of(ctx)
    spark = LazySpark(settings, "storeml-schedule")
    dirs = ScheduleDirs.of(settings, output, lock_dir)
    try:
        jobs = package_jobs(
            load_packages(packages_dir),
            settings,
            spark,
            output_root=dirs.output_root,
            scratch=dirs.scratch,
            source="topic" if source == "topic" else "lake",
            recompute=recompute,
        )
        if not jobs:
            raise click.ClickException(
                f"no package under {packages_dir} has a prediction.schedule; add one to its"
                " config.yaml (e.g. schedule: '0 3 * * *' for 03:00 UTC daily)"
            )
        scheduler = Scheduler(jobs, lock_dir=dirs.lock_dir)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc

    def on_signal(signum: int, _frame: Any) -> None:
        if scheduler.stopping:
            log.warning("second signal: cancelling the Spark jobs of %s", scheduler.running())
            if spark.session is not None:
                spark.session.sparkContext.cancelAllJobs()
            return
        log.warning(
            "%s: no new runs; waiting for the runs going on (%s); signal again to cancel them",
            signal.Signals(signum).name,
            ", ".join(scheduler.running()) or "none",
        )
        scheduler.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for job in jobs:
            first = scheduler.next_run(job.name)
            log.info(
                "scheduled %s: cron '%s', %s; next run %s",
                job.name,
                job.schedule.expression,
                job.description,
                "now" if once else (show_time(first) if first else "never"),
            )
        if once:
            scheduler.run_all_now()
            scheduler.wait_idle()
        else:
            scheduler.run(max_runs=max_runs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if spark.session is not None:
            spark.session.stop()
    counts = {
        status: sum(1 for r in scheduler.records if r.status == status)
        for status in ("ok", "failed", "skipped")
    }
    click.echo(
        f"schedule: {counts['ok']} runs ok, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    if counts["failed"] and (once or max_runs is not None):
        sys.exit(1)


@click.group("lake")
def lake() -> None:
    """The event lake (STOREML_LAKE_DIR): every accepted event, as Parquet by store and date."""


@lake.command("compact")
@click.pass_context
def lake_compact_cmd(ctx: click.Context) -> None:
    """Move incoming lake files into the store/date layout (the stream also does it periodically)."""
    from storeml.connectors.event_lake import compact_all

    settings = settings_of(ctx)
    if settings.lake_path is None:
        raise click.ClickException("the event lake is disabled (STOREML_LAKE_ENABLED=false)")
    try:
        done = compact_all(settings.lake_path)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    held = f"; {done.waiting_files} held by a reader" if done.waiting_files else ""
    click.echo(
        f"{settings.lake_path}: {done.incoming_files} incoming files ({done.events:,} events,"
        f" {done.duplicates:,} already in the lake) compacted{held}"
    )
