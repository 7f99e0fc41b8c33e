"""A virtual environment with Apache Airflow, for the tests of the generated DAG files.

Airflow is never in the project's lock (its pins and ours would fight): the tests build it apart,
once, with uv, and cache it under ``~/.cache/storeml/airflow-<version>-py<python>`` (or the folder
named by ``STOREML_TEST_AIRFLOW_VENV``). A file lock beside the folder keeps two test sessions from
building it at once; a marker file written last says which version is in it, so a half-built
folder or a changed :data:`AIRFLOW_VERSION` is rebuilt. Run on its own to build it ahead::

    .venv/bin/python -m tests.airflow_env
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["AIRFLOW_VERSION", "airflow_venv", "venv_path", "airflow_env", "load_dagbag"]

#: The Airflow release the tests load the generated DAGs with.
AIRFLOW_VERSION = "3.3.2"
_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_MARKER = ".storeml-airflow"


def venv_path() -> Path:
    """Where the environment lives (STOREML_TEST_AIRFLOW_VENV, or the cache folder)."""
    named = os.environ.get("STOREML_TEST_AIRFLOW_VENV")
    if named:
        return Path(named).expanduser().absolute()
    return Path.home() / ".cache" / "storeml" / f"airflow-{AIRFLOW_VERSION}-py{_PYTHON}"


def _wanted() -> str:
    return f"apache-airflow=={AIRFLOW_VERSION} python {_PYTHON}\n"


def _ready(venv: Path) -> bool:
    marker = venv / _MARKER
    return marker.is_file() and marker.read_text() == _wanted() and (venv / "bin/airflow").exists()


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv") or "uv"


def airflow_venv(log: bool = True) -> Path:
    """The environment's folder, built first if it is missing, half-built or of another version.

    Raises RuntimeError with uv's output when the build fails.
    """
    venv = venv_path()
    if _ready(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it: wait for it
        if _ready(venv):
            return venv
        started = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        env = {
            **os.environ,
            "PIP_CONFIG_FILE": "/dev/null",
            "UV_PYTHON_DOWNLOADS": "never",
            "VIRTUAL_ENV": str(venv),
        }
        base = Path(sys.base_prefix) / "bin" / f"python{_PYTHON}"
        steps = [
            [_uv(), "venv", "--python", str(base), str(venv)],
            [
                _uv(),
                "pip",
                "install",
                "--python",
                str(venv / "bin" / "python"),
                f"apache-airflow=={AIRFLOW_VERSION}",
            ],
        ]
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"building the Airflow test environment failed: {' '.join(step)}\n"
                    + done.stdout
                    + done.stderr
                )
        (venv / _MARKER).write_text(_wanted())
        if log:
            seconds = time.perf_counter() - started
            print(f"built {venv} (apache-airflow {AIRFLOW_VERSION}) in {seconds:.0f}s")
    return venv


def airflow_env(home: Path, dags: Path, **extra: str) -> dict[str, str]:
    """Environment of an Airflow process of the tests: its own home (SQLite) and dags folder.

    No ``STOREML_*`` variable is inherited; pass the ones the tasks need in ``extra``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREML_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


#: Run in the Airflow environment: load a folder with DagBag, write what it found as JSON.
_DAGBAG_SCRIPT = """
import json, sys
from datetime import datetime, timezone

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag
from croniter import croniter

bag = DagBag(dag_folder=sys.argv[1])
found = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}}
start = datetime.fromisoformat(sys.argv[3])
for dag_id, dag in bag.dags.items():
    timetable = dag.timetable
    expression = getattr(timetable, "expression", None) or getattr(timetable, "_expression", None)
    runs = croniter(expression, start) if expression else None  # as Airflow's timetable does
    found["dags"][dag_id] = {
        "fileloc": dag.fileloc,
        "timetable": type(timetable).__name__,
        "expression": expression,
        "timezone": str(getattr(timetable, "timezone", None) or getattr(timetable, "_timezone")),
        "next_runs": [runs.get_next(datetime).isoformat() for _ in range(12)] if runs else [],
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags),
        "start_date": dag.start_date.isoformat(),
        "tasks": {
            task.task_id: {
                "bash_command": task.bash_command,
                "retries": task.retries,
                "retry_delay_s": task.retry_delay.total_seconds(),
                "upstream": sorted(task.upstream_task_ids),
                "skip_on_exit_code": list(task.skip_on_exit_code),
                "owner": task.owner,
            }
            for task in dag.tasks
        },
    }
with open(sys.argv[2], "w") as out:
    json.dump(found, out, indent=1, default=str)
"""


def load_dagbag(venv: Path, dags: Path, home: Path, start: str) -> dict[str, Any]:
    """What Airflow's DagBag makes of ``dags``: import errors, and per DAG its schedule (with
    the next twelve runs after ``start``, naive ISO time, by croniter as Airflow computes them),
    settings and tasks."""
    result = home / "dagbag.json"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _DAGBAG_SCRIPT, str(dags), str(result), start],
        env=airflow_env(home, dags),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading {dags} with DagBag failed:\n{done.stdout}{done.stderr}")
    loaded: dict[str, Any] = json.loads(result.read_text())
    return loaded


if __name__ == "__main__":
    print(airflow_venv())
