"""Scheduled batch predictions (batch/schedule.py, ``storeml schedule``).

The scheduling rules are checked with a fake clock (no sleeping); a short cron then fires in real
time twice: in-process with a trivial job, and as a real ``storeml schedule run`` process whose
package job recomputes profiles from an event lake and scores them with the package's champion
(real Spark and MLflow; marked slow).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from storeml.batch.package_jobs import load_packages, package_jobs
from storeml.batch.schedule import Job, JobLock, RunOutcome, Scheduler, upcoming
from storeml.cli import main
from storeml.errors import ConfigError, ModelError
from storeml.models.schedule import parse_cron
from storeml.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "packages"
T0 = datetime(2024, 5, 1, 10, 3, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def set(self, hour: int, minute: int, second: int = 0) -> None:
        self.now = self.now.replace(hour=hour, minute=minute, second=second)


class Recorder:
    """A job action that records its due times; can fail once, or block until released."""

    def __init__(self, fail_first: bool = False, block: bool = False) -> None:
        self.dues: list[datetime] = []
        self.fail_first = fail_first
        self.release = threading.Event()
        self.entered = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, due: datetime) -> RunOutcome:
        self.dues.append(due)
        self.entered.set()
        assert self.release.wait(60), "the test never released the run"
        if self.fail_first and len(self.dues) == 1:
            raise ModelError("model 'm' has no alias 'champion'")
        return RunOutcome(rows=10 * len(self.dues), detail="fine")


def _job(name: str, cron: str, action: Recorder) -> Job:
    return Job(name=name, schedule=parse_cron(cron), action=action)


def _package(folder: Path, example: str, **changes: Any) -> Path:
    """A copy of an example package with ``changes`` to config.yaml (``"model.name": ...``)."""
    target = shutil.copytree(EXAMPLES / example, folder)
    config = yaml.safe_load((target / "config.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if value is None:
            config[section].pop(key, None)
        else:
            config[section][key] = value
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return target


# --- cron --------------------------------------------------------------------------------------
def test_cron_seconds_field_is_optional_and_five_fields_fire_at_second_zero() -> None:
    daily = parse_cron("0 3 * * *")
    assert not daily.has_seconds
    assert upcoming(daily, T0, 3) == [
        datetime(2024, 5, d, 3, 0, tzinfo=UTC) for d in (2, 3, 4)
    ]  # tz-aware in, tz-aware out
    assert daily.next_after(datetime(2024, 5, 1, 2, 59, 59, 999)) == datetime(2024, 5, 1, 3, 0)
    every_5s = parse_cron("*/5 * * * * *")
    assert every_5s.has_seconds
    assert upcoming(every_5s, datetime(2024, 5, 1, 23, 59, 52), 3) == [
        datetime(2024, 5, 1, 23, 59, 55),
        datetime(2024, 5, 2, 0, 0, 0),
        datetime(2024, 5, 2, 0, 0, 5),
    ]
    assert parse_cron("30 15 3 * * mon").next_after(datetime(2024, 5, 1)) == datetime(
        2024, 5, 6, 3, 15, 30
    )
    with pytest.raises(ConfigError, match=r"the second field '61' is refused by croniter: .*0-59"):
        parse_cron("61 * * * * *")
    with pytest.raises(ConfigError, match="has 7 fields"):
        parse_cron("0 0 0 * * * *")


# --- the rules, on a fake clock ------------------------------------------------------------------
def test_jobs_run_at_their_cron_times_and_missed_times_are_not_made_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0)
    action = Recorder()
    scheduler = Scheduler([_job("j", "*/10 * * * *", action)], clock=clock, background=False)
    assert scheduler.next_run("j") == T0.replace(minute=10)

    clock.set(10, 9, 59)
    assert scheduler.tick() == [] and action.dues == []
    clock.set(10, 10, 0)
    with caplog.at_level(logging.INFO, logger="storeml.schedule"):
        assert scheduler.tick() == ["j"]
    assert action.dues == [T0.replace(minute=10)]
    assert scheduler.next_run("j") == T0.replace(minute=20)
    assert scheduler.tick() == []  # same time again: nothing new is due

    clock.set(10, 47)  # asleep through 10:20, 10:30 and 10:40: one late run, then 10:50
    assert scheduler.tick() == ["j"]
    assert action.dues[-1] == T0.replace(minute=20)
    assert scheduler.next_run("j") == T0.replace(minute=50)
    assert [r.status for r in scheduler.records] == ["ok", "ok"]

    assert "run j due 2024-05-01 10:10:00Z: started" in caplog.messages
    ended = r"run j due 2024-05-01 10:10:00Z: ok, 10 rows in \d+\.\ds \(fine\); next run" + (
        " 2024-05-01 10:20:00Z"
    )
    assert any(re.fullmatch(ended, line) for line in caplog.messages), caplog.messages


def test_a_run_still_going_at_its_next_time_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    action = Recorder(block=True)
    scheduler = Scheduler([_job("slow", "*/10 * * * *", action)], clock=clock)

    clock.set(10, 10)
    assert scheduler.tick() == ["slow"]
    assert action.entered.wait(30)
    clock.set(10, 20)
    with caplog.at_level(logging.INFO, logger="storeml.schedule"):
        assert scheduler.tick() == []  # the 10:10 run is still going
    assert scheduler.running() == ["slow"] and len(action.dues) == 1
    skipped = scheduler.records[-1]
    assert (skipped.status, skipped.due) == ("skipped", T0.replace(minute=20))
    assert (
        "run slow due 2024-05-01 10:20:00Z: SKIPPED, the run due 2024-05-01 10:10:00Z is still"
        " going; next run 2024-05-01 10:30:00Z"
    ) in caplog.messages

    action.release.set()
    assert scheduler.wait_idle(timeout=30)
    clock.set(10, 30)
    assert scheduler.tick() == ["slow"]
    assert scheduler.wait_idle(timeout=30)
    assert [r.status for r in scheduler.records] == ["skipped", "ok", "ok"]
    assert action.dues == [T0.replace(minute=10), T0.replace(minute=30)]


def test_a_failed_run_is_logged_and_the_job_stays_scheduled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0)
    action = Recorder(fail_first=True)
    scheduler = Scheduler([_job("flaky", "*/10 * * * *", action)], clock=clock, background=False)
    clock.set(10, 10)
    with caplog.at_level(logging.INFO, logger="storeml.schedule"):
        assert scheduler.tick() == ["flaky"]
    failed = scheduler.records[-1]
    assert failed.status == "failed" and "no alias 'champion'" in failed.detail
    error = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert error.getMessage().startswith("run flaky due 2024-05-01 10:10:00Z: FAILED after ")
    assert error.getMessage().endswith(
        "ModelError: model 'm' has no alias 'champion'; next run 2024-05-01 10:20:00Z"
    )
    assert not error.exc_info  # our own errors are one line, no traceback
    assert scheduler.next_run("flaky") == T0.replace(minute=20)

    clock.set(10, 20)
    assert scheduler.tick() == ["flaky"]
    assert [r.status for r in scheduler.records] == ["failed", "ok"]


def test_a_job_locked_by_another_process_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # flock locks belong to open files, so a second opener in this process is refused exactly
    # as another process would be
    clock = FakeClock(T0)
    action = Recorder()
    scheduler = Scheduler(
        [_job("job/a", "*/10 * * * *", action)], clock=clock, lock_dir=tmp_path, background=False
    )
    other = JobLock(tmp_path, "job/a")
    assert other.acquire(T0)
    assert other.path == tmp_path / "job%2Fa.lock"
    clock.set(10, 10)
    with caplog.at_level(logging.INFO, logger="storeml.schedule"):
        assert scheduler.tick() == []
    assert action.dues == [] and scheduler.records[-1].status == "skipped"
    message = next(m for m in caplog.messages if "SKIPPED" in m)
    assert f"another process holds its lock {other.path}" in message
    assert f"pid {os.getpid()} due 2024-05-01 10:03:00Z" in message

    other.release()
    clock.set(10, 20)
    assert scheduler.tick() == ["job/a"]
    assert action.dues == [T0.replace(minute=20)]
    assert other.acquire(T0)  # the run released it
    other.release()


def test_run_all_now_starts_every_job_once() -> None:
    clock = FakeClock(T0.replace(microsecond=123))
    actions = {name: Recorder() for name in ("a", "b")}
    scheduler = Scheduler(
        [_job(name, "0 3 * * *", action) for name, action in actions.items()], clock=clock
    )
    assert scheduler.run_all_now() == ["a", "b"]
    assert scheduler.wait_idle(timeout=30)
    assert all(action.dues == [T0] for action in actions.values())
    assert scheduler.next_run("a") == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)  # unchanged


def test_packages_become_jobs_and_schedule_list_shows_next_runs(
    tmp_path: Path, settings: Settings
) -> None:
    folder = tmp_path / "packages"
    _package(folder / "customers", "customer_propensity")
    _package(folder / "products", "product_category", **{"prediction.schedule": None})

    def no_spark() -> Any:
        raise AssertionError("listing jobs must not start Spark")

    jobs = package_jobs(
        load_packages(folder), settings, no_spark, output_root="/data/predictions", scratch=tmp_path
    )
    assert [(j.name, j.schedule.expression) for j in jobs] == [("customer-propensity", "0 3 * * *")]
    assert jobs[0].description == (
        "customer predictions -> /data/predictions/customer-propensity/1.0.0"
    )

    result = CliRunner().invoke(main, ["schedule", "list", "--packages", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "customer-propensity  customer  customer-propensity/1.0.0  cron '0 3 * * *'"
    times = lines[1].removeprefix("  next runs (UTC): ").split(", ")
    parsed = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for t in times]
    assert len(parsed) == 3 and all(t.strftime("%H:%M") == "03:00" for t in parsed)
    assert [b - a for a, b in zip(parsed, parsed[1:], strict=False)] == [timedelta(days=1)] * 2
    assert lines[2] == "product-category  product  product-category/1.0.0  no schedule"

    _package(folder / "broken", "customer_propensity", **{"prediction.schedule": "0 25 * * *"})
    result = CliRunner().invoke(main, ["schedule", "list", "--packages", str(folder)])
    assert result.exit_code == 1
    assert "broken: INVALID" in result.output
    with pytest.raises(ConfigError, match=r"(?s)1 invalid model package\(s\).*broken"):
        load_packages(folder)
    with pytest.raises(ConfigError, match="distinct names; job appear twice"):
        Scheduler([_job("job", "0 3 * * *", Recorder()), _job("job", "0 4 * * *", Recorder())])


# --- real time ---------------------------------------------------------------------------------
def test_a_short_cron_fires_in_real_time(caplog: pytest.LogCaptureFixture) -> None:
    action = Recorder()
    scheduler = Scheduler([_job("tick", "* * * * * *", action)])
    with caplog.at_level(logging.INFO, logger="storeml.schedule"):
        scheduler.run(max_runs=3)
    assert [r.status for r in scheduler.records] == ["ok", "ok", "ok"]
    assert action.dues == sorted(set(action.dues)) and len(action.dues) == 3
    assert all(due.microsecond == 0 and due.tzinfo is UTC for due in action.dues)
    started = [m for m in caplog.messages if m.startswith("run tick due ") and ": started" in m]
    ended = [m for m in caplog.messages if m.startswith("run tick due ") and ": ok, " in m]
    assert len(started) == len(ended) == 3


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while text not in (path.read_text() if path.exists() else ""):
        assert process.poll() is None, path.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {path.read_text()}"
        time.sleep(0.1)


def _schedule_process(
    settings: Settings, packages: Path, log: Path, *args: str
) -> subprocess.Popen[bytes]:
    from tests.test_stream_e2e import _env

    return subprocess.Popen(
        [sys.executable, "-m", "storeml.cli", "schedule", "run", "--packages", str(packages)]
        + list(args),
        env=_env(settings, STOREML_LAKE_DIR=str(settings.lake_path)),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed (with their group) if still running at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_schedule_run_stops_cleanly_on_sigterm(
    settings: Settings, tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    packages = tmp_path / "packages"
    _package(packages / "customers", "customer_propensity")  # 03:00 daily: never due here
    log = tmp_path / "schedule.log"
    process = _schedule_process(settings, packages, log)
    reaper.append(process)
    _wait_for(log, "scheduled customer-propensity: cron '0 3 * * *'", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0, log.read_text()
    output = log.read_text()
    assert "SIGTERM: no new runs" in output
    assert "schedule: 0 runs ok, 0 failed, 0 skipped" in output


@pytest.mark.slow
def test_schedule_run_fires_a_package_job_end_to_end(
    settings: Settings, unique: str, tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    """``storeml schedule run --recompute`` on a 2-second cron: recompute from the lake, score,
    write (scoring the stream's latest profiles instead is tested in test_recompute.py)."""
    from storeml.batch.history import synthetic_facts
    from storeml.batch.train import train_package
    from storeml.batch.transform import read_predictions
    from tests.lake_data import write_lake_events
    from tests.test_models import _facts, _profiles

    name = f"test-{unique}-propensity"
    package = _package(
        tmp_path / "packages" / "customers",
        "customer_propensity",
        **{"model.name": name, "prediction.schedule": "*/2 * * * * *"},
    )
    history, cutoff = synthetic_facts(stores=4, events=4_000, seed=31)
    train_package(settings, package, history, cutoff, alias="champion")
    write_lake_events(settings, stores=4, events=3_000, seed=32)  # what the stream archived
    customers, _ = _profiles(_facts(stores=4, events=3_000, seed=32)[0])

    output = tmp_path / "predictions"
    log = tmp_path / "schedule.log"
    process = _schedule_process(
        settings,
        tmp_path / "packages",
        log,
        "--output",
        str(output),
        "--max-runs",
        "1",
        "--recompute",
    )
    reaper.append(process)
    assert process.wait(600) == 0, log.read_text()
    text = log.read_text()
    assert f"run {name} due " in text and ": started" in text
    done = next(
        line for line in text.splitlines() if f"run {name} due " in line and ": ok, " in line
    )
    assert f"ok, {len(customers):,} rows in " in done and f"{name} version 1 -> " in done
    assert "schedule: 1 runs ok, 0 failed, 0 skipped" in text

    root = output / "customer-propensity" / "1.0.0"
    (date_folder,) = [p for p in root.iterdir() if not p.name.startswith("_")]
    due_day = done.split(" due ")[1][:10]
    assert date_folder.name == f"date={due_day}"
    written = read_predictions(date_folder, "customer")
    assert sorted(zip(written["store_id"], written["customer_id"], strict=True)) == sorted(
        zip(customers["store_id"], customers["customer_id"], strict=True)
    )
    assert set(written["model"].map(lambda m: (m["name"], m["version"]))) == {(name, "1")}
    assert written["propensity"].notna().all()
    work = settings.home / "schedule" / "work"
    assert not work.exists() or not any(work.iterdir())  # the scratch profiles are gone


# --- run-job and store groups (what the Airflow DAGs run) -------------------------------------------
def test_store_group_locks_are_shared_with_each_other_and_exclusive_with_a_whole_run(
    tmp_path: Path,
) -> None:
    group_1, group_2, whole = (JobLock(tmp_path, "job") for _ in range(3))
    assert group_1.acquire(T0, shared=True) and group_2.acquire(T0, shared=True)
    assert not whole.acquire(T0)  # a whole-package run (schedule run) waits for the groups
    group_1.release()
    assert not whole.acquire(T0)
    group_2.release()
    assert whole.acquire(T0)
    assert not group_1.acquire(T0, shared=True)  # and the groups for it
    whole.release()


def test_run_job_finds_its_package_and_skips_a_locked_job(
    settings: Settings, tmp_path: Path
) -> None:
    from storeml.batch.package_jobs import find_job
    from storeml.cli_schedule import EXIT_LOCKED

    folder = tmp_path / "packages"
    _package(folder / "customers", "customer_propensity")
    _package(folder / "broken", "customer_propensity", **{"prediction.schedule": "0 25 * * *"})
    # the broken package next to it does not matter
    assert find_job(folder, "customer-propensity").name == "customer-propensity"
    with pytest.raises(ConfigError, match=r"(?s)no valid model package named 'nope'.*broken"):
        find_job(folder, "nope")

    locks = tmp_path / "locks"
    args = ["schedule", "run-job", "--packages", str(folder / "customers")]
    args += ["--job", "customer-propensity", "--due", "2024-05-01T03:00:00Z"]
    args += ["--lock-dir", str(locks)]
    runner = CliRunner()
    unknown = runner.invoke(main, [*args[:4], "--job", "nope", "--due", "2024-05-01"])
    assert unknown.exit_code == 1 and "no valid model package named 'nope'" in unknown.output
    held = JobLock(locks, "customer-propensity")
    assert held.acquire(T0)  # as `schedule run` holds it while it runs the job
    try:
        whole = runner.invoke(main, args)
        group = runner.invoke(main, [*args, "--store-group", "2/3"])
    finally:
        held.release()
    for result in (whole, group):
        assert result.exit_code == EXIT_LOCKED, result.output
        assert "run-job customer-propensity due 2024-05-01 03:00:00Z: SKIPPED" in result.output
        assert f"another run holds its lock {held.path}" in result.output
    bad = runner.invoke(main, [*args, "--store-group", "4/3"])
    assert bad.exit_code == 1 and "store group 4/3 does not exist" in bad.output


@pytest.mark.slow  # two Spark transform runs and one more to compare
def test_store_groups_together_give_the_rows_of_one_ungrouped_run(
    settings: Settings, spark: Any, unique: str, tmp_path: Path
) -> None:
    """Each group scores only its stores and replaces only their folders of the date."""
    from storeml.batch.history import synthetic_facts
    from storeml.batch.train import train_package
    from storeml.batch.transform import StoreGroup, batch_transform, read_predictions
    from storeml.models.events import bucket_of
    from tests.test_models import _facts, _profiles

    name = f"test-{unique}-grouped"
    package = _package(tmp_path / "package", "customer_propensity", **{"model.name": name})
    history, cutoff = synthetic_facts(stores=6, events=4_000, seed=41)
    train_package(settings, package, history, cutoff, alias="champion")
    customers, _ = _profiles(_facts(stores=6, events=3_000, seed=42)[0])
    customers = customers.drop(columns=["source"])
    groups = [StoreGroup(1, 2), StoreGroup(2, 2)]
    by_group = {g.index: {s for s in customers["store_id"] if g.contains(s)} for g in groups}
    assert by_group[1] and by_group[2], by_group  # six stores fall in both groups
    assert all(bucket_of(s, 2) == g - 1 for g, stores in by_group.items() for s in stores)

    def run(output: Path, group: StoreGroup | None) -> Any:
        return batch_transform(
            spark, settings, customers, kind="customer", model_name=name, output=output,
            run_date="2024-05-01", store_group=group,
        )  # fmt: skip

    whole = run(tmp_path / "whole", None)
    grouped = tmp_path / "grouped"
    day = grouped / "date=2024-05-01"
    # an earlier run's stores that are gone now, one in each group
    gone = {
        g.index: next(f"gone-{i}" for i in range(99) if g.contains(f"gone-{i}")) for g in groups
    }
    for store in gone.values():
        (day / f"store_id={store}").mkdir(parents=True)
        (day / f"store_id={store}" / "part-0.parquet").write_bytes(b"")

    first = run(grouped, groups[0])
    assert first.store_group == "1/2" and first.stores == len(by_group[1])
    present = {p.name.removeprefix("store_id=") for p in day.iterdir()}
    # group 2's folders are untouched, group 1's gone store is removed
    assert present == by_group[1] | {gone[2]}
    second = run(grouped, groups[1])
    assert {p.name.removeprefix("store_id=") for p in day.iterdir()} == by_group[1] | by_group[2]
    assert first.rows + second.rows == whole.rows == len(customers)

    def rows(folder: Path) -> list[tuple[str, str, float, str]]:
        frame = read_predictions(folder, "customer")
        return sorted(
            zip(
                frame["store_id"], frame["customer_id"], frame["propensity"].round(12),
                frame["model"].map(lambda m: m["scope"]), strict=True,
            )
        )  # fmt: skip

    assert rows(day) == rows(tmp_path / "whole" / "date=2024-05-01")
    assert not (grouped / "_staging").exists() or not any((grouped / "_staging").iterdir())
