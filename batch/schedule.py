"""Scheduled batch predictions: each model package's ``prediction.schedule`` runs its job.

A folder of model packages becomes a list of :class:`Job`; every package with a schedule is one::

    at each cron time (UTC) of the package:
      the stream's latest profiles, read from its state  (batch/latest.py; Parquet in a scratch
                                                   folder; or, with ``recompute``, rebuilt from
                                                   history as of the due time: batch/recompute.py)
      -> batch_transform with the package's model @champion  (batch/transform.py)
      -> <output root>/<prediction.service>/<prediction.version>/date=<due date>/store_id=<s>/

The rules live in :class:`Scheduler`, which takes a clock so they are tested without sleeping:

* a job first runs at its first cron time *after* the scheduler starts; a run that starts late
  keeps its due time (the date and as-of time of its predictions), and the times missed
  meanwhile are not made up (the next run is the first cron time after "now");
* **never twice at once**: a job whose previous run is still going when its next time comes is
  skipped (logged); a lock file per job (``flock``, held for the whole run, released by the OS if
  the process dies) skips it too when another ``storeml schedule run`` process is running it;
* a failed run is logged with its error and the job stays scheduled;
* every run logs one line when it starts and one when it ends (job, due time, rows, seconds,
  outcome).

Runs go on in their own threads (one Spark session is shared: Spark takes jobs from several
threads), so a long run of one package never delays another package's schedule.

An outside scheduler (Airflow: ``storeml schedule airflow``) runs one job once per due time with
:func:`run_job_once` (``storeml schedule run-job``), under the same lock files; a run of one
store group of a package holds the package's lock shared (groups run side by side, never with a
whole-package run) and its group's own lock exclusively.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from storeml.errors import ConfigError, StoremlError
from storeml.models.schedule import CronSchedule, parse_cron
from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from storeml.batch.transform import StoreGroup
    from storeml.models.package import ModelPackage

__all__ = [
    "Job",
    "RunOutcome",
    "RunRecord",
    "Scheduler",
    "JobLock",
    "utc_now",
    "upcoming",
    "find_packages",
    "load_packages",
    "PackageJob",
    "package_jobs",
    "find_job",
    "run_job_once",
]

log = logging.getLogger("storeml.schedule")

#: Longest single sleep of :meth:`Scheduler.run`, so a changed wall clock (suspend, NTP step) is
#: noticed within a minute.
MAX_SLEEP_S = 60.0


def utc_now() -> datetime:
    """The wall clock, UTC (the default clock of :class:`Scheduler`)."""
    return datetime.now(UTC)


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def upcoming(schedule: CronSchedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` times ``schedule`` fires strictly after ``after``."""
    out: list[datetime] = []
    moment: datetime | None = after
    while len(out) < count and moment is not None:
        moment = schedule.next_after(moment)
        if moment is not None:
            out.append(moment)
    return out


@dataclass(frozen=True)
class RunOutcome:
    """What a job's action reports: rows written and a short description for the log."""

    rows: int
    detail: str = ""


@dataclass(frozen=True)
class Job:
    """A named action run at the times of a cron schedule; ``action(due)`` gets the due time."""

    name: str
    schedule: CronSchedule
    action: Callable[[datetime], RunOutcome]
    description: str = ""


@dataclass(frozen=True)
class RunRecord:
    """One run (or skipped run) of a job, as logged."""

    job: str
    due: datetime
    status: Literal["ok", "failed", "skipped"]
    seconds: float = 0.0
    rows: int | None = None
    detail: str = ""


class JobLock:
    """An exclusive, non-blocking lock file per job (``flock``), shared by every process of a host.

    The lock belongs to the open file, so the OS releases it when the process dies; a stale file
    never blocks a job. The file is left in place (deleting a lock file races with other
    processes) and holds the holder's host, pid and due time for humans.
    """

    def __init__(self, folder: Path, job: str) -> None:
        self.path = folder / f"{quote(job, safe='')}.lock"
        self._fd: int | None = None

    def acquire(self, due: datetime, *, shared: bool = False) -> bool:
        """Take the lock; False (immediately) when another run holds it.

        A ``shared`` lock (held by the runs of a package's store groups) admits other shared
        holders and keeps out the exclusive ones; its holders leave the file's text alone.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()} due {_show(due)}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """What the lock file says about its holder ('' when unreadable)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class _Running:
    due: datetime
    thread: threading.Thread
    lock: JobLock | None


@dataclass
class _State:
    next_at: datetime | None
    running: _Running | None = None


class Scheduler:
    """Decides which jobs are due and runs them, never one job twice at once (see the module).

    ``clock`` returns the current time, timezone-aware UTC. ``lock_dir`` (None: no lock files)
    holds one lock file per job. With ``background`` (the default) each run goes on in its own
    thread and :meth:`tick` returns at once; without, :meth:`tick` runs due jobs one after the
    other before returning.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        clock: Callable[[], datetime] = utc_now,
        lock_dir: str | Path | None = None,
        background: bool = True,
    ) -> None:
        names = [job.name for job in jobs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(
                f"scheduled jobs must have distinct names; {', '.join(repeated)} appear twice"
                " (two packages with the same model.name?); rename one"
            )
        self.jobs = {job.name: job for job in jobs}
        self.clock = clock
        self.lock_dir = Path(lock_dir) if lock_dir is not None else None
        self.background = background
        now = clock()
        self._state = {job.name: _State(job.schedule.next_after(now)) for job in jobs}
        self._mutex = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.started_runs = 0
        self.records: list[RunRecord] = []

    # --- what is due ---------------------------------------------------------------------------
    def next_run(self, job: str) -> datetime | None:
        """When ``job`` runs next (None: never again)."""
        return self._state[job].next_at

    def next_due(self) -> datetime | None:
        """The earliest next run of any job."""
        times = [s.next_at for s in self._state.values() if s.next_at is not None]
        return min(times) if times else None

    def running(self) -> list[str]:
        """Jobs with a run going on."""
        with self._mutex:
            return [name for name, s in self._state.items() if s.running is not None]

    def tick(self, *, limit: int | None = None) -> list[str]:
        """Start every job due by now (at most ``limit`` runs in all); returns the started jobs.

        A due job still running, or locked by another process, is skipped and logged; either way
        its next run becomes its first cron time after now.
        """
        now = self.clock()
        started: list[str] = []
        for name, job in self.jobs.items():
            state = self._state[name]
            if state.next_at is None or state.next_at > now:
                continue
            if limit is not None and self.started_runs >= limit:
                break
            due = state.next_at
            state.next_at = job.schedule.next_after(now)
            if self._start(job, due):
                started.append(name)
        return started

    def run_all_now(self) -> list[str]:
        """Start every job once now (due now), whatever its schedule; returns the started jobs."""
        now = self.clock().replace(microsecond=0)
        return [name for name, job in self.jobs.items() if self._start(job, now)]

    # --- running -------------------------------------------------------------------------------
    def _skip(self, job: Job, due: datetime, why: str) -> None:
        record = RunRecord(job.name, due, "skipped", detail=why)
        with self._mutex:
            self.records.append(record)
        log.warning(
            "run %s due %s: SKIPPED, %s; next run %s",
            job.name,
            _show(due),
            why,
            self._next_text(job.name),
        )

    def _next_text(self, name: str) -> str:
        if self._stop.is_set():
            return "none (the scheduler is stopping)"
        upcoming_at = self._state[name].next_at
        return _show(upcoming_at) if upcoming_at is not None else "never"

    def _start(self, job: Job, due: datetime) -> bool:
        with self._mutex:
            state = self._state[job.name]
            if state.running is not None:
                self._skip(
                    job,
                    due,
                    f"the run due {_show(state.running.due)} is still going",
                )
                return False
            lock = JobLock(self.lock_dir, job.name) if self.lock_dir is not None else None
            if lock is not None and not lock.acquire(due):
                self._skip(
                    job,
                    due,
                    f"another process holds its lock {lock.path} ({lock.holder() or 'unknown'})",
                )
                return False
            self.started_runs += 1
            thread = threading.Thread(
                target=self._run, args=(job, due, lock), name=f"storeml-run-{job.name}"
            )
            state.running = _Running(due, thread, lock)
        if self.background:
            thread.start()
        else:
            thread.run()
        return True

    def _run(self, job: Job, due: datetime, lock: JobLock | None) -> None:
        late = (self.clock() - due).total_seconds()
        log.info(
            "run %s due %s: started%s",
            job.name,
            _show(due),
            f" ({late:.1f}s late)" if late >= 1 else "",
        )
        started = time.perf_counter()
        try:
            outcome = job.action(due)
        except Exception as exc:
            seconds = time.perf_counter() - started
            record = RunRecord(
                job.name, due, "failed", seconds, detail=f"{type(exc).__name__}: {exc}"
            )
            log.error(
                "run %s due %s: FAILED after %.1fs: %s; next run %s",
                job.name,
                _show(due),
                seconds,
                record.detail,
                self._next_text(job.name),
                exc_info=not isinstance(exc, StoremlError),  # our errors say it all in one line
            )
        else:
            seconds = time.perf_counter() - started
            record = RunRecord(job.name, due, "ok", seconds, outcome.rows, outcome.detail)
            log.info(
                "run %s due %s: ok, %s rows in %.1fs%s; next run %s",
                job.name,
                _show(due),
                f"{outcome.rows:,}",
                seconds,
                f" ({outcome.detail})" if outcome.detail else "",
                self._next_text(job.name),
            )
        finally:
            if lock is not None:
                lock.release()
        with self._mutex:
            self._state[job.name].running = None
            self.records.append(record)
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for the runs going on to end; False when ``timeout`` (s) passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._mutex:
                threads = [s.running.thread for s in self._state.values() if s.running]
            if not threads:
                return True
            for thread in threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)
            if deadline is not None and time.monotonic() >= deadline:
                return not self.running()

    def stop(self) -> None:
        """Ask :meth:`run` to return (runs going on are waited for, not interrupted)."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_runs: int | None = None) -> None:
        """Start jobs when due until :meth:`stop` (or ``max_runs`` started); then wait for them.

        Sleeps until the next due time (at most :data:`MAX_SLEEP_S` at a time). A scheduler
        that has run is stopped for good (:attr:`stopping`).
        """
        while not self._stop.is_set():
            self.tick(limit=max_runs)
            if max_runs is not None and self.started_runs >= max_runs:
                break
            upcoming_at = self.next_due()
            if upcoming_at is None:
                log.warning("no job will run again (every schedule is over); stopping")
                break
            delay = (upcoming_at - self.clock()).total_seconds()
            if delay > 0:
                self._wake.clear()
                self._wake.wait(min(delay, MAX_SLEEP_S))
        self._stop.set()
        if self.running():
            log.info("waiting for the runs going on: %s", ", ".join(self.running()))
        self.wait_idle()


# --- model packages as jobs --------------------------------------------------------------------
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
                log.warning("run %s due %s: SKIPPED, %s", label, _show(due), why)
                return RunRecord(name, due, "skipped", detail=why)
            locks.append(lock)
        log.info("run %s due %s: started", label, _show(due))
        started = time.perf_counter()
        try:
            outcome = action(due)
        except Exception as exc:
            seconds = time.perf_counter() - started
            detail = f"{type(exc).__name__}: {exc}"
            log.error(
                "run %s due %s: FAILED after %.1fs: %s",
                label,
                _show(due),
                seconds,
                detail,
                exc_info=not isinstance(exc, StoremlError),
            )
            return RunRecord(name, due, "failed", seconds, detail=detail)
        seconds = time.perf_counter() - started
        log.info(
            "run %s due %s: ok, %s rows in %.1fs (%s)",
            label,
            _show(due),
            f"{outcome.rows:,}",
            seconds,
            outcome.detail,
        )
        return RunRecord(name, due, "ok", seconds, outcome.rows, outcome.detail)
    finally:
        for lock in reversed(locks):
            lock.release()
