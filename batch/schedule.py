"""Scheduled batch predictions: jobs run at the times of their cron schedules (UTC).

Model packages become jobs in batch/package_jobs.py (every package with a
``prediction.schedule``: its batch predictions). The rules live in :class:`Scheduler`, which
takes a clock so they are tested without sleeping:

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

An outside scheduler (Airflow: ``storeml schedule airflow``) runs one job once per due time
(``storeml schedule run-job``: ``run_job_once`` in batch/package_jobs.py) under the same lock
files; a run of one store group of a package holds the package's lock shared (groups run side by
side, never with a whole-package run) and its group's own lock exclusively.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from storeml.errors import ConfigError, StoremlError
from storeml.models.schedule import CronSchedule

__all__ = [
    "Job",
    "RunOutcome",
    "RunRecord",
    "Scheduler",
    "JobLock",
    "utc_now",
    "upcoming",
    "run_logged",
    "show_time",
]

log = logging.getLogger("storeml.schedule")

#: Longest single sleep of :meth:`Scheduler.run`, so a changed wall clock (suspend, NTP step) is
#: noticed within a minute.
MAX_SLEEP_S = 60.0


def utc_now() -> datetime:
    """The wall clock, UTC (the default clock of :class:`Scheduler`)."""
    return datetime.now(UTC)


def show_time(moment: datetime) -> str:
    """``moment`` as the schedule's log lines write it (UTC, to the second)."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def upcoming(schedule: CronSchedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` times ``schedule`` fires strictly after ``after``."""
    return schedule.upcoming(after, count)


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
            os.write(
                fd, f"{socket.gethostname()} pid {os.getpid()} due {show_time(due)}\n".encode()
            )
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


def run_logged(
    job: str,
    label: str,
    due: datetime,
    action: Callable[[datetime], RunOutcome],
    *,
    started_note: str = "",
    ended_note: Callable[[], str] = lambda: "",
) -> RunRecord:
    """Run ``action(due)``: one log line when it starts and one when it ends; never raises.

    ``label`` names the run in the log (the job, or the job and its store group); the notes are
    appended to the start line and to the end line (computed when the run ends).
    """
    log.info("run %s due %s: started%s", label, show_time(due), started_note)
    started = time.perf_counter()
    try:
        outcome = action(due)
    except Exception as exc:
        seconds = time.perf_counter() - started
        detail = f"{type(exc).__name__}: {exc}"
        log.error(
            "run %s due %s: FAILED after %.1fs: %s%s",
            label,
            show_time(due),
            seconds,
            detail,
            ended_note(),
            exc_info=not isinstance(exc, StoremlError),  # our errors say it all in one line
        )
        return RunRecord(job, due, "failed", seconds, detail=detail)
    seconds = time.perf_counter() - started
    log.info(
        "run %s due %s: ok, %s rows in %.1fs%s%s",
        label,
        show_time(due),
        f"{outcome.rows:,}",
        seconds,
        f" ({outcome.detail})" if outcome.detail else "",
        ended_note(),
    )
    return RunRecord(job, due, "ok", seconds, outcome.rows, outcome.detail)


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
            show_time(due),
            why,
            self._next_text(job.name),
        )

    def _next_text(self, name: str) -> str:
        if self._stop.is_set():
            return "none (the scheduler is stopping)"
        upcoming_at = self._state[name].next_at
        return show_time(upcoming_at) if upcoming_at is not None else "never"

    def _start(self, job: Job, due: datetime) -> bool:
        with self._mutex:
            state = self._state[job.name]
            if state.running is not None:
                self._skip(
                    job,
                    due,
                    f"the run due {show_time(state.running.due)} is still going",
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
        try:
            record = run_logged(
                job.name,
                job.name,
                due,
                job.action,
                started_note=f" ({late:.1f}s late)" if late >= 1 else "",
                ended_note=lambda: f"; next run {self._next_text(job.name)}",
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
