"""docker-compose.yml follows the Compose specification and wires the services storeml needs.

There is no Docker engine here, so the file is validated against the Compose JSON schema with
``check-jsonschema`` (a dev dependency) instead of ``docker compose config``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_validates() -> None:
    result = _validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validator_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("healthcheck:", "healthchek:", 1))
    result = _validate(broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_services_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "postgres", "mlflow", "stream", "api", "monitor"} <= set(services)
    for name in ("kafka", "redis", "postgres", "mlflow"):
        assert "healthcheck" in services[name], name
    waits_for = services["stream"]["depends_on"]
    for name in ("kafka", "redis", "mlflow"):
        assert waits_for[name]["condition"] == "service_healthy"


def test_stream_points_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = compose["services"]["stream"]["environment"]
    assert env["STOREML_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["STOREML_KAFKA_FLAVOR"] == "apache"
    assert env["STOREML_REDIS_URL"].startswith("redis://redis:")
    assert env["STOREML_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    from storeml.settings import Settings

    for key in env:  # every variable is a real setting (a typo would fail at start-up)
        assert key.removeprefix("STOREML_").lower() in Settings.model_fields, key
    mounts = [volume.split(":")[1] for volume in compose["services"]["stream"]["volumes"]]
    assert env["STOREML_CHECKPOINT_DIR"].startswith(tuple(mounts))


def test_api_serves_from_the_stream_image_and_reports_health(compose: dict[str, Any]) -> None:
    api, stream = compose["services"]["api"], compose["services"]["stream"]
    assert api["image"] == stream["image"] and api["build"] == stream["build"]
    assert api["command"] == ["serve"]
    env = api["environment"]
    from storeml.settings import Settings

    for key in env:  # every variable is a real setting (a typo would fail at start-up)
        assert key.removeprefix("STOREML_").lower() in Settings.model_fields, key
    assert env["STOREML_SERVE_HOST"] == "0.0.0.0"  # reachable from the published port
    assert f"127.0.0.1:{env['STOREML_SERVE_PORT']}:8000" in api["ports"]
    for name in ("STOREML_REDIS_URL", "STOREML_REDIS_PASSWORD", "STOREML_MLFLOW_TRACKING_URI"):
        assert env[name] == stream["environment"][name], name
    assert not any(key.startswith("STOREML_KAFKA") for key in env)  # it never talks to Kafka
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    for name in ("redis", "mlflow"):
        assert api["depends_on"][name]["condition"] == "service_healthy"
    assert any(v.endswith(":/var/lib/storeml") for v in api["volumes"])


def test_the_dashboard_is_published_with_the_api(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"] == ["serve"]  # storeml serve mounts /dashboard (serving/routes)
    published = {port.rsplit(":", 1)[1] for port in api["ports"]}
    assert str(api["environment"]["STOREML_SERVE_PORT"]) in published
    monitor_env = compose["services"]["monitor"]["environment"]
    dashboard = monitor_env["STOREML_MONITOR_DASHBOARD_URL"]  # what the alerts link to
    host_port = next(p.split(":")[1] for p in api["ports"] if p.endswith(":8000"))
    assert dashboard == f"http://localhost:{host_port}/dashboard"
    assert "/dashboard" in COMPOSE.read_text().split("\nname:")[0]  # the header names the URL


def test_monitor_runs_from_the_stream_image_and_serves_metrics(compose: dict[str, Any]) -> None:
    monitor, stream = compose["services"]["monitor"], compose["services"]["stream"]
    assert monitor["image"] == stream["image"] and monitor["build"] == stream["build"]
    assert monitor["command"] == ["monitor", "run"]
    env = monitor["environment"]
    from storeml.settings import Settings

    for key in env:  # every variable is a real setting (a typo would fail at start-up)
        assert key.removeprefix("STOREML_").lower() in Settings.model_fields, key
    shared = [k for k in stream["environment"] if k.startswith(("STOREML_KAFKA", "STOREML_REDIS"))]
    for name in [*shared, "STOREML_MLFLOW_TRACKING_URI", "STOREML_MLFLOW_PASSWORD"]:
        assert env[name] == stream["environment"][name], name
    assert not any(k.startswith("STOREML_SPARK") for k in env)  # a Faust app, no Spark
    for name in ("kafka", "redis", "mlflow"):
        assert monitor["depends_on"][name]["condition"] == "service_healthy"
    port = env["STOREML_MONITOR_WEB_PORT"]
    assert port == Settings.model_fields["monitor_web_port"].default == 6066
    assert env["STOREML_SERVE_HOST"] == "0.0.0.0"  # Faust's web server binds to serve_host
    assert f"127.0.0.1:{port}:{port}" in monitor["ports"]
    assert f"localhost:{port}/metrics" in " ".join(monitor["healthcheck"]["test"])
    # Faust writes its data folder into the working directory: the storeml user's volume
    mounts = {v.split(":")[1]: v.split(":")[0] for v in monitor["volumes"]}
    assert monitor["working_dir"] in mounts
    assert mounts[monitor["working_dir"]] in compose["volumes"]
    assert mounts[monitor["working_dir"]] not in {v.split(":")[0] for v in stream["volumes"]}


def test_dockerfile_builds_the_stream_job() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "openjdk-17-jre-headless" in dockerfile
    assert "-r requirements-runtime.lock" in dockerfile  # no dev tools in the image
    assert 'CMD ["stream", "run"]' in dockerfile


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = [
        (name, port) for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]  # fmt: skip
    assert published
    for name, port in published:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_redis_requires_a_password_kept_off_the_command_line(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    command = " ".join(redis["command"])
    assert "requirepass" in command and "--requirepass" not in command
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    stream_env = compose["services"]["stream"]["environment"]
    assert stream_env["STOREML_REDIS_PASSWORD"] == redis["environment"]["REDIS_PASSWORD"]


def test_mlflow_runs_behind_basic_auth(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SECRET:?")
    assert not any("postgresql://" in part for part in mlflow["command"])  # password off argv
    config = compose["configs"][mlflow["configs"][0]["source"]]["content"]
    assert mlflow["configs"][0]["target"] == env["MLFLOW_AUTH_CONFIG_PATH"]
    assert "database_uri = sqlite:////var/lib/mlflow-auth/" in config
    assert any(v.endswith(":/var/lib/mlflow-auth") for v in mlflow["volumes"])
    stream_env = compose["services"]["stream"]["environment"]
    assert stream_env["STOREML_MLFLOW_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert stream_env["STOREML_MLFLOW_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert "Flask-WTF" in (ROOT / "docker" / "mlflow" / "Dockerfile").read_text()


# --- the optional Airflow profile (docs/airflow.md) --------------------------------------------
AIRFLOW_SERVICES = {
    "airflow-db",
    "airflow-init",
    "airflow-dags",
    "airflow-apiserver",
    "airflow-dag-processor",
    "airflow-scheduler",
}


def _target_and_source(volume: str) -> tuple[str, str]:
    """``SOURCE:TARGET[:ro]`` (the source may be ``${VAR:-default}``) as (target, source)."""
    body = volume.removesuffix(":ro")
    source, _, target = body.rpartition(":")
    return target, source


def test_airflow_services_run_only_in_their_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiled = {name for name, service in services.items() if "profiles" in service}
    assert profiled == AIRFLOW_SERVICES  # a plain `docker compose up` starts none of them
    for name in AIRFLOW_SERVICES:
        assert services[name]["profiles"] == ["airflow"], name
        for needed in services[name].get("depends_on", {}):  # nothing waits on a missing service
            assert needed in services, (name, needed)


def test_airflow_image_keeps_storeml_in_its_own_venv_at_the_tested_release(
    compose: dict[str, Any],
) -> None:
    from tests.airflow_env import AIRFLOW_VERSION

    scheduler = compose["services"]["airflow-scheduler"]
    assert scheduler["build"]["dockerfile"] == "docker/airflow.Dockerfile"
    assert scheduler["build"]["args"]["AIRFLOW_VERSION"] == AIRFLOW_VERSION
    assert scheduler["image"].endswith(f":{AIRFLOW_VERSION}")
    dockerfile = (ROOT / "docker" / "airflow.Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={AIRFLOW_VERSION}" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in dockerfile
    assert "python -m venv /opt/storeml" in dockerfile
    assert "-r /tmp/storeml/requirements-runtime.lock" in dockerfile  # storeml's lock, its own venv
    assert "openjdk-17-jre-headless" in dockerfile  # the tasks run Spark
    # the compose services run as the stream image's user, to share its volume
    uid = next(
        line.split("--uid ")[1].split()[0]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if "--uid " in line
    )
    assert scheduler["user"] == f"{uid}:0"


def test_airflow_components_share_one_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    components = [n for n in AIRFLOW_SERVICES if n != "airflow-db"]
    envs = {name: services[name]["environment"] for name in components}
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CORE__DAGS_FOLDER",
    ):
        assert len({env[key] for env in envs.values()}) == 1, key
    env = envs["airflow-scheduler"]
    assert "@airflow-db:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]  # its own database
    api = env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert api == "http://airflow-apiserver:8080/execution/"
    assert "127.0.0.1:8080:8080" in services["airflow-apiserver"]["ports"]
    init = " ".join(services["airflow-init"]["command"])
    assert "AIRFLOW__API_AUTH__JWT_SECRET" in init and "airflow db migrate" in init
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert "healthcheck" in services[name], name


def test_airflow_tasks_get_storeml_rendered_dags_and_the_stream_settings(
    compose: dict[str, Any],
) -> None:
    from storeml.settings import Settings

    services = compose["services"]
    dags_folder = services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
    render = services["airflow-dags"]
    assert render["entrypoint"] == ["/opt/storeml/bin/storeml"]
    args = dict(a.split("=", 1) for a in render["command"] if a.startswith("--"))
    assert args["--storeml-bin"] == "/opt/storeml/bin/storeml"
    assert args["--out"].startswith(dags_folder + "/")
    mounts = {
        name: dict(_target_and_source(v) for v in services[name]["volumes"])
        for name in ("airflow-dags", "airflow-scheduler", "airflow-dag-processor")
    }
    for name in ("airflow-scheduler", "airflow-dag-processor"):  # they read what was rendered
        for folder in (dags_folder, "/opt/storeml/packages"):
            assert mounts[name][folder] == mounts["airflow-dags"][folder], (name, folder)
    assert mounts["airflow-dags"][dags_folder] in compose["volumes"]
    # the tasks (LocalExecutor: in the scheduler) see what the stream sees
    stream = services["stream"]
    env = services["airflow-scheduler"]["environment"]
    for key in stream["environment"]:
        assert env[key] == stream["environment"][key], key
    for key in env:
        if key.startswith("STOREML_"):  # a typo would fail every task at start-up
            assert key.removeprefix("STOREML_").lower() in Settings.model_fields, key
    state = next(v for v in stream["volumes"] if v.endswith(":/var/lib/storeml"))
    assert state in services["airflow-scheduler"]["volumes"]
    assert services["airflow-dag-processor"]["depends_on"]["airflow-dags"]["condition"] == (
        "service_completed_successfully"
    )
