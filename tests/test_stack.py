"""The local stack with real processes: Tansu broker, redis-server, MLflow on SQLite, Java."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pyspark.sql import SparkSession

import storeml
from storeml.errors import StackError
from storeml.settings import load_settings
from storeml.stack import (
    RedisServer,
    TansuBroker,
    check_java,
    free_port,
    kafka_answers,
    redis_answers,
    stack_down,
    stack_status,
    stack_up,
)


def _round_trip(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 5,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    received: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 60  # a bound against hanging, not a timing assertion
    try:
        while len(received) < 3 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            received.append((message.key(), message.value()))
    finally:
        consumer.close()
    return received


def test_broker_round_trip(kafka_bootstrap: str, unique: str) -> None:
    received = _round_trip(kafka_bootstrap, f"test.{unique}.round-trip")
    assert received == [(b"k0", b"v0"), (b"k1", b"v1"), (b"k2", b"v2")]


def test_tansu_broker_lifecycle(tmp_path: Path, unique: str) -> None:
    broker = TansuBroker(workdir=tmp_path)
    with broker:
        assert broker.pid is not None
        assert broker.pid_file.is_file()
        assert kafka_answers(broker.bootstrap)
        received = _round_trip(broker.bootstrap, f"test.{unique}.own-broker")
        assert len(received) == 3
        bootstrap = broker.bootstrap
    assert not broker.pid_file.exists()
    assert not kafka_answers(bootstrap)
    broker.stop()  # idempotent


def test_redis_server_on_own_port(tmp_path: Path, unique: str) -> None:
    server = RedisServer(workdir=tmp_path)
    server.start()
    try:
        assert server.port is not None and server.port != 6379
        client = redis.Redis.from_url(server.url)
        client.set(f"test:{unique}", b"1")
        assert client.get(f"test:{unique}") == b"1"
        assert client.config_get("save")["save"] == ""
        client.close()
    finally:
        server.stop()
    assert not redis_answers(server.url)


def test_redis_server_without_binary_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="apt-get install -y redis-server"):
        RedisServer(workdir=tmp_path).start()


def test_stack_up_status_down_with_own_processes(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert stack_status(settings)["kafka"].state == "stopped"
    try:
        status = stack_up(settings)
        assert status.ok, str(status)
        assert status["kafka"].state == "running"
        assert status["redis"].state == "running"
        assert status["mlflow"].state == "ready"
        assert status["java"].state == "ready"
        assert (settings.home / "stack" / "tansu.pid").is_file()
        assert (settings.home / "mlflow" / "mlflow.db").is_file()
        assert settings.kafka_bootstrap in str(status)

        again = stack_up(settings)  # idempotent: reuses our own processes
        assert again["kafka"].pid == status["kafka"].pid
        assert again["redis"].pid == status["redis"].pid
    finally:
        down = stack_down(settings)
    assert down["kafka"].state == "stopped"
    assert down["redis"].state == "stopped"
    assert down["mlflow"].state == "ready"  # the database stays
    assert not (settings.home / "stack" / "tansu.pid").exists()


def test_stack_up_reuses_running_services(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    settings = load_settings(
        home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    status = stack_up(settings)
    assert status["kafka"].state == "external"
    assert status["redis"].state == "external"
    stack_down(settings)
    assert kafka_answers(kafka_bootstrap)  # not ours: left running
    assert redis_answers(redis_url)


def test_stack_up_refuses_a_port_held_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = load_settings(home=tmp_path / "home", kafka_bootstrap=f"127.0.0.1:{port}")
        with pytest.raises(StackError, match=f"port {port} is taken"):
            stack_up(settings)


def test_java_check() -> None:
    java = check_java()
    assert java.major >= 17
    with pytest.raises(StackError, match="needs Java 99"):
        check_java(minimum=99)


def test_java_check_respects_java_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(StackError, match="openjdk-17-jre-headless") as info:
        check_java()
    assert str(tmp_path) in str(info.value)


def test_spark_session_is_local_small_and_tidy(spark: SparkSession, settings_home: Path) -> None:
    conf = spark.conf
    assert conf.get("spark.sql.shuffle.partitions") == "2"
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000"
    assert str(spark.sparkContext.master).startswith("local")
    assert spark.sparkContext.uiWebUrl is None
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    # Python workers run this interpreter, with our packages importable.
    rows = spark.range(4).rdd.map(lambda _: __import__("storeml").__file__).distinct().collect()
    assert rows == [storeml.__file__]
    warehouse = str(conf.get("spark.sql.warehouse.dir"))
    assert warehouse.endswith(str(settings_home / "spark" / "warehouse")), warehouse
    for leftover in ("spark-warehouse", "metastore_db", "derby.log"):
        assert not (Path.cwd() / leftover).exists(), leftover
