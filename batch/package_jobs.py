"""Model packages as scheduled jobs: a package's batch predictions, and one run of it.

A folder of model packages becomes a list of :class:`~storeml.batch.schedule.Job` (every package
with a ``prediction.schedule``, :func:`package_jobs`) for ``storeml schedule run``;
:func:`run_job_once` runs one package's job once for a due time (``storeml schedule run-job``, what
the Airflow DAGs call) under the same lock files. Each run::

    the stream's latest profiles, read from its state  (batch/latest.py; Parquet in a scratch
                                                 folder; or, with ``recompute``, rebuilt from
                                                 history as of the due time: batch/recompute.py)
    -> batch_transform with the package's model @champion  (batch/transform.py)
    -> <output root>/<prediction.service>/<prediction.version>/date=<due date>/store_id=<s>/
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from storeml.batch.schedule import Job, JobLock, RunOutcome, RunRecord, run_logged, show_time
from storeml.errors import ConfigError
from storeml.models.schedule import parse_cron
from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from storeml.batch.transform import StoreGroup
    from storeml.models.package import ModelPackage

__all__ = [
    "find_packages",
    "load_packages",
    "PackageJob",
    "package_jobs",
    "find_job",
    "run_job_once",
]

log = logging.getLogger("storeml.schedule")


def find_packages(folder: str | Path) -> list[tuple[Path, ModelPackage | ConfigError]]:
    """Every package under ``folder`` (its subfolders with a ``config.yaml``, or ``folder`` itself).

    Each comes with its loaded package, or the :class:`ConfigError` that says why it is invalid.
    """
    from storeml.models.package import CONFIG_FILE, load_package

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(
            f"packages folder {root} does not exist; pass a folder of model packages (e.g."
            " examples/packages) or one package folder"
        )
    paths = (
        [root]
        if (root / CONFIG_FILE).is_file()
        else sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file())
    )
    out: list[tuple[Path, ModelPackage | ConfigError]] = []
    for path in paths:
        try:
            out.append((path, load_package(path)))
        except ConfigError as exc:
            out.append((path, exc))
    return out


def load_packages(folder: str | Path) -> list[ModelPackage]:
    """The valid packages under ``folder``; ConfigError naming every invalid one, or none found."""
    found = find_packages(folder)
    errors = [f"{path}: {item}" for path, item in found if isinstance(item, ConfigError)]
    if errors:
        raise ConfigError(
            f"{len(errors)} invalid model package(s) under {folder}; fix them (`storeml models"
            " validate PATH`) or move them out:\n" + "\n".join(errors)
        )
    if not found:
        raise ConfigError(
            f"no model package under {folder} (a package is a folder with a config.yaml)"
        )
    return [item for _, item in found if not isinstance(item, ConfigError)]


class PackageJob:
    """The batch predictions of one package: the latest profiles, then batch_transform.

    ``spark`` is called for the session at each run (so a scheduler process starts Spark only
    when the first run is due). The profiles are the stream's latest, read from its state (the
    cost of the state, not of the history); with ``recompute`` they are rebuilt from history
    as of the due time instead, read from ``source`` ("lake" or "topic"). ``scratch`` holds each
    run's profiles until the run ends; it must be reachable by every executor. With
    ``store_group`` only that group's stores are scored and replaced (batch/transform.py).
    """

    def __init__(
        self,
        package: ModelPackage,
        settings: Settings,
        spark: Callable[[], SparkSession],
        *,
        output_root: str,
        scratch: str | Path,
        source: Literal["lake", "topic"] = "lake",
        recompute: bool = False,
        store_group: StoreGroup | None = None,
    ) -> None:
        self.package = package
        self.store_group = store_group
        self.recompute = recompute
        self.settings = settings
        self.spark = spark
        prediction = package.config.prediction
        self.output = f"{str(output_root).rstrip('/')}/{prediction.service}/{prediction.version}"
        self.scratch = Path(scratch)
        self.source = source

    def __call__(self, due: datetime) -> RunOutcome:
        from storeml.batch.latest import export_latest_profiles
        from storeml.batch.recompute import recompute
        from storeml.batch.transform import batch_transform

        spark = self.spark()
        folder = self.scratch / f"{quote(self.package.name, safe='')}-{uuid.uuid4().hex[:12]}"
        # the recompute's own scoring is not what we publish (the package's model scores the
        # profiles below): no served or shadow model, so none needs to be registered
        settings = self.settings.model_copy(update={"serving_alias": "", "shadow_alias": ""})
        try:
            if self.recompute:
                recompute(
                    spark,
                    settings,
                    source=self.source,
                    as_of_ms=int(due.timestamp() * 1000),
                    output=str(folder),
                    publish=False,
                )
            else:
                export_latest_profiles(spark, settings, folder)
            summary = batch_transform(
                spark,
                self.settings,
                folder / self.package.kind,
                kind=self.package.kind,
                model_name=self.package.name,
                alias=self.settings.serving_alias,
                output=self.output,
                run_date=due.date(),
                store_group=self.store_group,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        group = f" (store group {summary.store_group})" if summary.store_group else ""
        return RunOutcome(
            summary.rows,
            f"{summary.stores:,} stores, {summary.model} version {summary.version}"
            f" -> {summary.partition}{group}",
        )


def package_jobs(
    packages: Iterable[ModelPackage],
    settings: Settings,
    spark: Callable[[], SparkSession],
    *,
    output_root: str,
    scratch: str | Path,
    source: Literal["lake", "topic"] = "lake",
    recompute: bool = False,
) -> list[Job]:
    """A :class:`Job` per package with a ``prediction.schedule`` (the others are left out)."""
    jobs = []
    for package in packages:
        expression = package.config.prediction.schedule
        if not expression:
            continue
        action = PackageJob(
            package,
            settings,
            spark,
            output_root=output_root,
            scratch=scratch,
            source=source,
            recompute=recompute,
        )
        jobs.append(
            Job(
                name=package.name,
                schedule=parse_cron(expression),
                action=action,
                description=f"{package.kind} predictions -> {action.output}",
            )
        )
    return jobs


def find_job(folder: str | Path, name: str) -> ModelPackage:
    """The valid package named ``name`` under ``folder``, with a schedule or not.

    Other packages' problems do not matter (one client's broken package fails only its own
    job); ConfigError when no valid package has that name, listing the invalid ones.
    """
    found = find_packages(folder)
    for _, item in found:
        if not isinstance(item, ConfigError) and item.name == name:
            return item
    names = sorted(item.name for _, item in found if not isinstance(item, ConfigError))
    invalid = [f"{path}: {item}" for path, item in found if isinstance(item, ConfigError)]
    raise ConfigError(
        f"no valid model package named {name!r} under {folder} (packages there:"
        f" {', '.join(names) or 'none'})"
        + ("; invalid packages, one of which may be it:\n" + "\n".join(invalid) if invalid else "")
    )


def run_job_once(action: PackageJob, due: datetime, lock_dir: str | Path | None) -> RunRecord:
    """Run one package's job once for ``due``, logged as :class:`Scheduler` logs its runs.

    Takes the job's lock file (exclusive; shared plus the group's own for a store group):
    status "skipped" when another run holds it, "failed" with the error when the run raised.
    """
    name = action.package.name
    group = action.store_group
    label = name if group is None else f"{name} (store group {group.label})"
    locks: list[JobLock] = []
    wanted = [(name, False)] if group is None else [(name, True), (f"{name}@{group.label}", False)]
    try:
        for lock_name, shared in wanted if lock_dir is not None else []:
            lock = JobLock(Path(str(lock_dir)), lock_name)
            if not lock.acquire(due, shared=shared):
                why = f"another run holds its lock {lock.path} ({lock.holder() or 'unknown'})"
                log.warning("run %s due %s: SKIPPED, %s", label, show_time(due), why)
                return RunRecord(name, due, "skipped", detail=why)
            locks.append(lock)
        return run_logged(name, label, due, action)
    finally:
        for lock in reversed(locks):
            lock.release()
