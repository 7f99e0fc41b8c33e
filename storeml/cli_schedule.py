"""``storeml schedule airflow`` (DAG files per model package) and ``storeml schedule run-job``.

Both join the ``schedule`` group of ``storeml.cli_batch`` (added in ``storeml.cli``). ``airflow``
renders with :mod:`storeml.batch.airflow_dags` (pure) and writes the files here; ``run-job`` is
what a DAG's ``predict`` task runs: one package's job, once, for one due time.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from storeml.cli_batch import LazySpark, ScheduleDirs, history_source
from storeml.cli_common import settings_of
from storeml.errors import ConfigError, StoremlError

if TYPE_CHECKING:
    pass

__all__ = ["schedule_airflow_cmd", "schedule_run_job_cmd", "EXIT_LOCKED"]

#: Exit status of ``run-job`` when another run holds the job's lock (EX_TEMPFAIL: retry later).
EXIT_LOCKED = 75


def _store_groups(values: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """``--store-groups`` values: ``N`` for every package, ``NAME=N`` for one."""
    every, per_package = 1, {}
    for value in values:
        name, equals, count = value.rpartition("=")
        if not count.strip().isdigit() or int(count) < 1 or (equals and not name):
            raise click.BadParameter(
                f"{value!r}: write N (every package in N groups) or NAME=N (package NAME), N >= 1",
                param_hint="--store-groups",
            )
        if equals:
            per_package[name.strip()] = int(count)
        else:
            every = int(count)
    return every, per_package


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once (a DAG processor never reads half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@click.command("airflow")
@click.option(
    "--packages",
    "packages_dir",
    required=True,
    help="Folder of model packages (or one package); a DAG per package with prediction.schedule.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the DAG files (Airflow's dags folder, or a folder inside it).",
)
@click.option(
    "--store-groups",
    "store_groups",
    multiple=True,
    metavar="N|NAME=N",
    help="Split packages' stores into N groups, a DAG each (N: every package; NAME=N: that"
    " package; repeatable) [default: 1, one DAG per package].",
)
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--retry-delay",
    "retry_delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Minutes between a failed task and its retry.",
)
@click.option(
    "--storeml-bin",
    default="storeml",
    show_default=True,
    help="The storeml command on the Airflow workers, e.g. /opt/storeml/bin/storeml.",
)
@click.option(
    "--packages-path",
    default=None,
    help="The --packages folder as the Airflow workers see it [default: --packages, absolute].",
)
@click.option(
    "--output",
    default=None,
    help="Root of the predictions, passed to run-job [default: run-job's, <STOREML_HOME>/predictions"
    " of the worker].",
)
@click.option("--lock-dir", default=None, help="Lock files folder, passed to run-job.")
@click.option(
    "--recompute",
    is_flag=True,
    help="The tasks rebuild profiles from history as of the logical date (run-job --recompute).",
)
@history_source
def schedule_airflow_cmd(
    packages_dir: str,
    out_dir: str,
    store_groups: tuple[str, ...],
    retries: int,
    retry_delay: float,
    storeml_bin: str,
    packages_path: str | None,
    output: str | None,
    lock_dir: str | None,
    recompute: bool,
    source: str,
) -> None:
    """Write an Airflow DAG file per scheduled model package (per store group with --store-groups).

    Each DAG has the package's cron (UTC), catchup off, one active run, the retries, and two
    tasks: `storeml models validate` >> `storeml schedule run-job`, run with the worker's
    environment (STOREML_* settings). Unchanged files are left alone; files of packages that are
    gone are removed (only files this command generated). With an invalid package the others
    are still written, no file is removed, and the command exits 1.
    """
    from storeml.batch.airflow_dags import DagOptions, is_generated, render_dags
    from storeml.batch.package_jobs import find_packages

    every, per_package = _store_groups(store_groups)
    root = Path(packages_dir).expanduser().absolute()
    out = Path(out_dir)
    command = ["storeml", "schedule", "airflow", "--packages", packages_dir, "--out", out_dir]
    for value in store_groups:
        command += ["--store-groups", value]
    command += ["--retries", str(retries), "--retry-delay", f"{retry_delay:g}"]
    command += ["--storeml-bin", storeml_bin]
    for flag, given in (
        ("--packages-path", packages_path),
        ("--output", output),
        ("--lock-dir", lock_dir),
    ):
        if given:
            command += [flag, given]
    if recompute:
        command += ["--recompute", f"--from-{source}"]
    options = DagOptions(
        packages_path=packages_path or str(root),
        storeml_bin=storeml_bin,
        retries=retries,
        retry_delay_minutes=retry_delay,
        store_groups=every,
        package_groups=per_package,
        output=output,
        lock_dir=lock_dir,
        recompute=recompute,
        source="topic" if source == "topic" else "lake",
        command=shlex.join(command),
    )
    try:
        found = find_packages(root)
        valid = [item for _, item in found if not isinstance(item, ConfigError)]
        files = render_dags(valid, root, options)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    invalid = [(path, item) for path, item in found if isinstance(item, ConfigError)]
    if not found:
        raise click.ClickException(
            f"no model package under {packages_dir} (a package is a folder with a config.yaml)"
        )
    out.mkdir(parents=True, exist_ok=True)
    foreign = [n for n in files if (out / n).exists() and not is_generated((out / n).read_text())]
    if foreign:
        raise click.ClickException(
            f"{', '.join(str(out / n) for n in foreign)} exist(s) and were not generated by"
            " storeml; move them or choose another --out"
        )
    for name, text in files.items():
        target = out / name
        if target.exists() and target.read_text(encoding="utf-8") == text:
            click.echo(f"unchanged {target}")
            continue
        _write(target, text)
        click.echo(f"wrote {target}")
    stale = sorted(
        p
        for p in out.glob("*.py")
        if p.name not in files and is_generated(p.read_text(encoding="utf-8", errors="replace"))
    )
    for path in stale:
        if invalid:
            click.echo(f"kept {path} (an invalid package may be its own; fix it and re-run)")
        else:
            path.unlink()
            click.echo(f"removed {path} (no scheduled package has it any more)")
    click.echo(f"{len(files)} DAG file(s) in {out}")
    if invalid:
        for path, error in invalid:
            click.echo(f"{path}: INVALID ({str(error).splitlines()[0]})", err=True)
        raise click.ClickException(
            f"{len(invalid)} invalid package(s) got no DAG; `storeml models validate PATH` lists"
            " the problems"
        )


def _due(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not a time; write ISO 8601, e.g. 2024-05-01T03:00:00+00:00",
            param_hint="--due",
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


@click.command("run-job")
@click.option(
    "--packages",
    "packages_dir",
    required=True,
    help="The package's folder, or a folder of packages (other packages' problems do not matter).",
)
@click.option("--job", "job", required=True, help="The package's model.name.")
@click.option(
    "--due",
    default=None,
    help="Due time of the run (ISO 8601; UTC without an offset): the date= partition written and,"
    " with --recompute, the as-of time [default: now].",
)
@click.option(
    "--store-group",
    "store_group",
    default=None,
    metavar="K/N",
    help="Score only store group K of N (the stores' CRC-32 bucket) and replace only their folders.",
)
@click.option(
    "--output", default=None, help="Root of the predictions [default: <STOREML_HOME>/predictions]."
)
@click.option(
    "--recompute",
    is_flag=True,
    help="Rebuild the profiles from history as of the due time instead of the stream's latest.",
)
@history_source
@click.option(
    "--lock-dir",
    default=None,
    help="Lock files shared with `schedule run` [default: <STOREML_HOME>/schedule/locks].",
)
@click.pass_context
def schedule_run_job_cmd(
    ctx: click.Context,
    packages_dir: str,
    job: str,
    due: str | None,
    store_group: str | None,
    output: str | None,
    recompute: bool,
    source: str,
    lock_dir: str | None,
) -> None:
    """Run one package's batch predictions once, for one due time (what an Airflow task runs).

    Exits 0 when the run succeeded, 1 when it failed (so the task is retried), 75 when another
    run (`schedule run`, or another run-job) holds the job's lock.
    """
    from pyspark.sql import SparkSession

    from storeml.batch.package_jobs import PackageJob, find_job, run_job_once
    from storeml.batch.schedule import show_time
    from storeml.batch.transform import StoreGroup

    settings = settings_of(ctx)
    moment = _due(due)
    ours = SparkSession.getActiveSession() is None  # else an embedding process owns the session
    spark = LazySpark(settings, f"storeml-run-job-{job}")
    dirs = ScheduleDirs.of(settings, output, lock_dir)
    try:
        group = StoreGroup.parse(store_group) if store_group else None
        action = PackageJob(
            find_job(packages_dir, job),
            settings,
            spark,
            output_root=dirs.output_root,
            scratch=dirs.scratch,
            source="topic" if source == "topic" else "lake",
            recompute=recompute,
            store_group=group,
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        record = run_job_once(action, moment, dirs.lock_dir)
    finally:
        if spark.session is not None and ours:
            spark.session.stop()
    due_text = show_time(moment)
    if record.status == "ok":
        click.echo(f"run-job {job} due {due_text}: ok, {record.rows:,} rows ({record.detail})")
        return
    click.echo(f"run-job {job} due {due_text}: {record.status.upper()}, {record.detail}", err=True)
    sys.exit(EXIT_LOCKED if record.status == "skipped" else 1)
