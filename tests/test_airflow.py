"""Airflow DAGs per model package (batch/airflow_dags.py, ``storeml schedule airflow``).

Rendering and the command's file handling are checked here without Airflow; the generated files
are then loaded by Airflow's own DagBag in a separate environment (tests/airflow_env.py, built
once and cached), and one DAG runs with ``airflow dags test`` against the test's broker, Redis
and MLflow (marked slow).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from storeml.batch.airflow_dags import (
    GENERATED_HEADER,
    DagOptions,
    airflow_cron,
    is_generated,
    render_dags,
)
from storeml.batch.package_jobs import load_packages
from storeml.batch.schedule import upcoming
from storeml.cli import main
from storeml.errors import ConfigError
from storeml.models.package import load_package
from storeml.models.schedule import parse_cron
from storeml.settings import Settings
from tests.airflow_env import airflow_env, airflow_venv, load_dagbag
from tests.lake_data import write_lake_events
from tests.test_schedule import EXAMPLES, _package

STOREML_BIN = str(Path(sys.executable).parent / "storeml")


def _examples(tmp_path: Path) -> Path:
    folder = tmp_path / "packages"
    shutil.copytree(EXAMPLES, folder)
    return folder


def _airflow(out: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["schedule", "airflow", "--out", str(out), *args])


# --- rendering, without Airflow ----------------------------------------------------------------
def test_rendering_is_deterministic_and_every_file_says_it_is_generated(tmp_path: Path) -> None:
    root = _examples(tmp_path)
    options = DagOptions(
        packages_path="/opt/storeml/packages",
        storeml_bin="/opt/storeml/bin/storeml",
        package_groups={"product-category": 3},
        command="storeml schedule airflow --packages packages --out dags",
    )
    files = render_dags(load_packages(root), root, options)
    assert files == render_dags(load_packages(root), root, options)  # same input, same bytes
    assert list(files) == [
        "storeml_customer_propensity.py",
        "storeml_product_category_group_1_of_3.py",
        "storeml_product_category_group_2_of_3.py",
        "storeml_product_category_group_3_of_3.py",
    ]
    for name, text in files.items():
        assert text.startswith(GENERATED_HEADER + "\n") and is_generated(text)
        assert "# Command: storeml schedule airflow --packages packages --out dags" in text
        compile(text, name, "exec")  # valid Python
    group = files["storeml_product_category_group_2_of_3.py"]
    assert (
        "/opt/storeml/bin/storeml schedule run-job --packages"
        " /opt/storeml/packages/product_category --job product-category --due '{{ "
    ) in group
    assert (
        "--store-group 2/3" in group
        and "--store-group" not in files["storeml_customer_propensity.py"]
    )
    assert "CronTriggerTimetable('30 2 * * mon-sat', timezone='UTC')" in group
    assert not is_generated("# my own DAG\n" + GENERATED_HEADER)


def test_airflow_cron_takes_five_fields_and_refuses_seconds(tmp_path: Path) -> None:
    def package(cron: str, name: str) -> Any:
        return load_package(
            _package(tmp_path / name, "customer_propensity", **{"prediction.schedule": cron})
        )

    assert airflow_cron(package("0 3 * * *", "daily")) == "0 3 * * *"
    assert airflow_cron(package("@midnight", "macro")) == "0 0 * * *"  # Airflow lacks this name
    assert airflow_cron(package("0 6 1,15 * fri", "either")) == "0 6 1,15 * fri"  # OR in both
    assert airflow_cron(package("0 6 1-31 * fri", "every")) == "0 6 * * *"  # croniter would AND
    assert airflow_cron(package("0 6 */1 * fri", "all")) == "0 6 * * fri"
    assert airflow_cron(package("0 6 ? * 7", "sunday")) == "0 6 * * 0"
    with pytest.raises(ConfigError) as refused:
        airflow_cron(package("*/5 * * * * *", "seconds"))
    message = str(refused.value)
    assert str(tmp_path / "seconds" / "config.yaml") in message
    assert "has a seconds field" in message and "five fields" in message
    with pytest.raises(ConfigError, match="matching both"):  # Vixie ANDs these, croniter ORs
        airflow_cron(package("0 3 */2 * mon", "stepped"))
    with pytest.raises(ConfigError, match="seconds field"):
        render_dags([package("*/5 * * * * *", "again")], tmp_path, DagOptions(packages_path="/p"))


def test_dag_ids_that_coincide_and_unknown_group_names_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "packages"
    _package(root / "a", "customer_propensity", **{"model.name": "shop-a"})
    _package(root / "b", "customer_propensity", **{"model.name": "shop.a"})
    with pytest.raises(ConfigError, match="both become DAG 'storeml_shop_a'"):
        render_dags(load_packages(root), root, DagOptions(packages_path="/p"))
    with pytest.raises(ConfigError, match="store groups given for nope"):
        render_dags(
            load_packages(root / "a"), root / "a", DagOptions("/p", package_groups={"nope": 2})
        )


def test_schedule_airflow_writes_keeps_and_removes_only_its_own_files(tmp_path: Path) -> None:
    packages = _examples(tmp_path)
    out = tmp_path / "dags"
    out.mkdir()
    (out / "mine.py").write_text("# someone's own DAG\n")
    args = ["--packages", str(packages), "--storeml-bin", "/opt/storeml/bin/storeml"]

    first = _airflow(out, *args, "--store-groups", "customer-propensity=2")
    assert first.exit_code == 0, first.output
    grouped = sorted(p.name for p in out.glob("storeml_*.py"))
    assert grouped == [
        "storeml_customer_propensity_group_1_of_2.py",
        "storeml_customer_propensity_group_2_of_2.py",
        "storeml_product_category.py",
    ]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("storeml_*.py")}
    again = _airflow(out, *args, "--store-groups", "customer-propensity=2")
    assert again.exit_code == 0, again.output
    assert again.output.count("unchanged ") == 3 and "wrote " not in again.output
    assert before == {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("storeml_*.py")
    }

    ungrouped = _airflow(out, *args, "--retries", "4")
    assert ungrouped.exit_code == 0, ungrouped.output
    assert sorted(p.name for p in out.glob("*.py")) == [
        "mine.py",
        "storeml_customer_propensity.py",
        "storeml_product_category.py",
    ]
    assert (
        "removed " in ungrouped.output
        and "'retries': 4," in (out / "storeml_product_category.py").read_text()
    )
    assert (out / "mine.py").read_text() == "# someone's own DAG\n"

    # a broken package: the others' DAGs are still written, nothing is removed, exit 1
    (packages / "customer_propensity" / "config.yaml").write_text("model: [\n")
    broken = _airflow(out, *args, "--retries", "5")
    assert broken.exit_code == 1
    assert "INVALID" in broken.output and "kept " in broken.output
    assert (out / "storeml_customer_propensity.py").exists()
    assert "'retries': 5," in (out / "storeml_product_category.py").read_text()

    (out / "storeml_product_category.py").write_text("# hand-written\n")
    foreign = _airflow(out, *args)
    assert foreign.exit_code == 1 and "were not generated by storeml" in foreign.output
    assert (out / "storeml_product_category.py").read_text() == "# hand-written\n"

    bad = _airflow(out, *args, "--store-groups", "x=0")
    assert bad.exit_code == 2 and "NAME=N" in bad.output


# --- in Airflow --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def airflow() -> Path:
    """The Airflow environment (built on first use; see tests/airflow_env.py)."""
    return airflow_venv()


#: Schedules whose Airflow rendering differs from the text, checked against Airflow's runs.
CRONS = {
    "customer_propensity": "0 3 * * *",
    "product_category": "30 2 * * mon-sat",
    "either_day": "0 6 1,15 * fri",  # Vixie OR: the 1st, the 15th and every Friday
    "every_day": "0 6 1-31 * fri",  # OR with every day of the month: every day
    "sunday": "15 4 * * 7",
    "midnight": "@midnight",
}


def test_generated_dags_load_in_airflow_dagbag(airflow: Path, tmp_path: Path) -> None:
    packages = _examples(tmp_path)
    for folder in ("either_day", "every_day", "sunday", "midnight"):
        _package(
            packages / folder,
            "customer_propensity",
            **{"model.name": folder.replace("_", "-"), "prediction.schedule": CRONS[folder]},
        )
    out = tmp_path / "dags"
    result = _airflow(
        out,
        "--packages",
        str(packages),
        "--store-groups",
        "product-category=2",
        "--retries",
        "3",
        "--retry-delay",
        "1.5",
        "--storeml-bin",
        "/opt/storeml/bin/storeml",
        "--output",
        "/data/predictions",
    )
    assert result.exit_code == 0, result.output
    # a file that fails to import is reported: zero errors below means something
    (out / "zz_broken.py").write_text("from airflow.sdk import DAG\nraise ValueError('no dag')\n")
    start = datetime(2024, 5, 1, 10, 3)
    bag = load_dagbag(airflow, out, tmp_path / "airflow-home", start.isoformat())

    assert list(bag["import_errors"]) == [str(out / "zz_broken.py")], bag["import_errors"]
    dags = bag["dags"]
    assert sorted(dags) == [
        "storeml_customer_propensity",
        "storeml_either_day",
        "storeml_every_day",
        "storeml_midnight",
        "storeml_product_category_group_1_of_2",
        "storeml_product_category_group_2_of_2",
        "storeml_sunday",
    ]
    for dag_id, dag in dags.items():
        folder = next(f for f in CRONS if f in dag_id)
        assert dag["fileloc"] == str(out / f"{dag_id}.py")
        assert dag["timetable"] == "CronTriggerTimetable" and dag["timezone"] == "UTC"
        storeml_runs = [t.isoformat() for t in upcoming(parse_cron(CRONS[folder]), start, 12)]
        # Airflow fires when storeml schedule run would
        assert dag["next_runs"] == storeml_runs, (dag_id, dag["expression"])
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert dag["start_date"] == "2024-01-01T00:00:00+00:00"
        assert {"storeml", folder.replace("_", "-")} <= set(dag["tags"])
        tasks = dag["tasks"]
        assert sorted(tasks) == ["predict", "validate"]
        assert tasks["predict"]["upstream"] == ["validate"] and tasks["validate"]["upstream"] == []
        for task in tasks.values():
            assert (task["retries"], task["retry_delay_s"]) == (3, 90.0)
            assert task["skip_on_exit_code"] == []  # every non-zero exit fails (and retries)
            assert task["owner"] == "storeml"
        package = str(packages / folder)
        assert tasks["validate"]["bash_command"] == (
            f"/opt/storeml/bin/storeml models validate {package}"
        )
        predict = tasks["predict"]["bash_command"]
        assert predict.startswith(
            f"/opt/storeml/bin/storeml schedule run-job --packages {package} --job "
            f"{folder.replace('_', '-')} --due '{{{{ "
        )
        group = dag_id.rpartition("_group_")[2].replace("_of_", "/")
        tail = f" --store-group {group}" if "_group_" in dag_id else ""
        assert predict.endswith(f"{tail} --output /data/predictions"), predict


@pytest.mark.slow(minutes=2)
def test_airflow_dags_test_runs_a_package_dag_against_the_stack(
    airflow: Path, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """``airflow dags test`` of a generated DAG: validate, then run-job (recompute from the
    lake as of the logical date, score with the package's champion, write the predictions)."""
    from storeml.batch.history import synthetic_facts
    from storeml.batch.train import train_package
    from storeml.batch.transform import read_predictions
    from tests.test_models import _facts, _profiles
    from tests.test_stream_e2e import _env

    name = f"test-{unique}-propensity"
    packages = tmp_path / "packages"
    package = _package(packages / "customers", "customer_propensity", **{"model.name": name})
    history, cutoff = synthetic_facts(stores=4, events=4_000, seed=31)
    train_package(settings, package, history, cutoff, alias="champion")
    write_lake_events(settings, stores=4, events=3_000, seed=32)
    customers, _ = _profiles(_facts(stores=4, events=3_000, seed=32)[0])

    out, output = tmp_path / "dags", tmp_path / "predictions"
    rendered = _airflow(
        out,
        "--packages",
        str(packages),
        "--storeml-bin",
        STOREML_BIN,
        "--output",
        str(output),
        "--recompute",
        "--from-lake",
        "--retries",
        "0",  # a failure fails the test at once, not after the retry delays
    )
    assert rendered.exit_code == 0, rendered.output
    dag_id = f"storeml_test_{unique}_propensity"
    assert (out / f"{dag_id}.py").exists()

    home = tmp_path / "airflow-home"
    storeml_env = {
        k: v
        for k, v in _env(settings, STOREML_LAKE_DIR=str(settings.lake_path)).items()
        if k.startswith("STOREML_")
    }
    env = airflow_env(home, out, **storeml_env)
    airflow_bin = str(airflow / "bin" / "airflow")
    log = tmp_path / "airflow.log"
    with log.open("w") as sink:
        migrate = subprocess.run(
            [airflow_bin, "db", "migrate"], env=env, stdout=sink, stderr=subprocess.STDOUT,
            timeout=600, check=False,
        )  # fmt: skip
        assert migrate.returncode == 0, log.read_text()
        run = subprocess.run(
            [airflow_bin, "dags", "test", dag_id, "2025-01-01T03:00:00+00:00"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=900, check=False,
        )  # fmt: skip
    text = log.read_text()
    assert run.returncode == 0, text[-20_000:]
    assert f"run-job {name} due 2025-01-01 03:00:00Z: ok, {len(customers):,} rows" in text, text[
        -20_000:
    ]

    written = read_predictions(
        output / "customer-propensity" / "1.0.0" / "date=2025-01-01", "customer"
    )
    assert sorted(zip(written["store_id"], written["customer_id"], strict=True)) == sorted(
        zip(customers["store_id"], customers["customer_id"], strict=True)
    )
    assert (
        set(written["store_id"]) == set(customers["store_id"])
        and len(set(written["store_id"])) == 4
    )
    assert set(written["model"].map(lambda m: (m["name"], m["version"]))) == {(name, "1")}
    assert written["propensity"].notna().all()
