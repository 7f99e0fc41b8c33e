"""Settings fail loudly, naming the key and where it came from; the environment beats the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storeml.errors import ConfigError
from storeml.settings import CONFIG_ENV, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STOREML_"):
            monkeypatch.delenv(name)


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREML_KAFKA_BOOTSTRAPP", "127.0.0.1:9092")
    with pytest.raises(ConfigError, match="STOREML_KAFKA_BOOTSTRAPP"):
        load_settings()


def test_bad_environment_value_names_key_and_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREML_TOPIC_PARTITIONS", "many")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "topic_partitions" in message
    assert "STOREML_TOPIC_PARTITIONS" in message
    assert "many" in message


def test_typo_in_config_file_names_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "storeml.toml"
    config.write_text('[storeml]\nredis_prefx = "shop"\n')
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(config) in str(info.value)
    assert "redis_prefx" in str(info.value)


def test_bad_value_in_config_file_names_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "storeml.toml"
    config.write_text('kafka_flavor = "confluent"\n')
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(config) in str(info.value)
    assert "kafka_flavor" in str(info.value)


def test_environment_beats_file_and_arguments_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "storeml.toml"
    config.write_text(
        '[storeml]\nkafka_bootstrap = "file-host:9092"\nredis_prefix = "from-file"\n'
        'topic_orders = "file.orders"\n'
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("STOREML_KAFKA_BOOTSTRAP", "env-host:9092")
    monkeypatch.setenv("STOREML_REDIS_PREFIX", "from-env")
    settings = load_settings(redis_prefix="from-argument")
    assert settings.kafka_bootstrap == "env-host:9092"
    assert settings.redis_prefix == "from-argument"
    assert settings.topic_orders == "file.orders"


def test_missing_config_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv(CONFIG_ENV, str(missing))
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings()


def test_settings_are_frozen_and_paths_absolute() -> None:
    settings = load_settings(home="relative-home")
    assert settings.home.is_absolute()
    assert settings.tracking_uri.startswith("sqlite:///")
    with pytest.raises(ValueError):
        settings.redis_prefix = "changed"  # type: ignore[misc]


def test_secrets_are_secret_and_urls_lose_their_password() -> None:
    s = load_settings(
        redis_url="rediss://app:pw-1234@cache:6380/1",
        redis_ssl_ca_certs="/etc/ca.pem",
        mlflow_tracking_uri="https://bob:pw-5678@ml.example",
        kafka_security={"sasl.password": "pw-9012", "sasl.username": "u", "linger.ms": 5},
    )
    assert s.redis_url == "rediss://cache:6380/1" and s.redis_username == "app"
    assert s.redis.client_options()["password"] == "pw-1234"
    assert s.redis.client_options()["ssl_ca_certs"] == "/etc/ca.pem"
    assert s.tracking_uri == "https://ml.example" and s.mlflow_env() == {
        "MLFLOW_TRACKING_USERNAME": "bob",
        "MLFLOW_TRACKING_PASSWORD": "pw-5678",
    }
    assert s.kafka_config()["sasl.password"] == "pw-9012"
    assert s.kafka_config()["linger.ms"] == "5"
    shown = str(s.shown())
    assert "pw-" not in shown and "'sasl.username': 'u'" in shown


def test_a_bad_secret_value_is_named_but_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREML_KAFKA_SECURITY", '{"sasl.password": ["hunter2-pw"]}')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "kafka_security.sasl.password" in str(info.value)
    assert "hunter2-pw" not in str(info.value)
