"""Session fixtures that start real services for the tests; nothing here is a mock.

By default every service is local and private to the test session:

- Kafka: a fresh Tansu broker (memory storage) on a free loopback port, stopped at the end;
- Redis: a ``redis-server`` of ours on a free port, stopped at the end (never the machine's
  127.0.0.1:6379, which may be a developer's own);
- MLflow: a SQLite tracking/registry database and an artifact folder in a temporary folder;
- Spark: one local session for in-process tests (``spark`` fixture).

Every test gets its own topic names and Redis key prefix (``settings`` fixture), so tests can
share the services and even an existing cluster. To run against one, set::

    STOREML_TEST_KAFKA_BOOTSTRAP=kafka-1:9092     # an existing Kafka cluster (no broker started)
    STOREML_TEST_KAFKA_FLAVOR=apache              # its quirks profile ('tansu' by default)
    STOREML_TEST_REDIS_URL=redis://redis:6379/5   # an existing Redis (keys use unique prefixes)

for example ``STOREML_TEST_KAFKA_BOOTSTRAP=127.0.0.1:9092 STOREML_TEST_KAFKA_FLAVOR=apache
./scripts/dev test``. Tests create their topics and leave them behind on an external cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storeml.settings import Settings, load_settings
from storeml.stack import RedisServer, TansuBroker, init_mlflow

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: What the ordering below assumes a test costs: a ``slow`` test a minute, or ``slow(minutes=N)``;
#: a fast one a fraction of a second (only slow tests decide which files go first).
FAST_TEST_SECONDS = 0.2


def _cost(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    if slow is None:
        return FAST_TEST_SECONDS
    return 60.0 * float(slow.kwargs.get("minutes", 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The costliest files first, each file's tests in their own order.

    ``./scripts/dev test`` runs two pytest-xdist workers with ``--dist loadfile``, which hands out
    files in this order: the long end-to-end files start at once on both workers, and the short
    ones fill in after them, so the workers finish close together.
    """
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        cost[item.path.name] = cost.get(item.path.name, 0.0) + _cost(item)
        first.setdefault(item.path.name, index)
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda i: (-cost[i.path.name], first[i.path.name], order[id(i)]))


@dataclass(frozen=True)
class MlflowUris:
    """Where the session's MLflow store lives (attributes, or ``uris["tracking_uri"]``)."""

    tracking_uri: str
    artifact_root: str

    @property
    def registry_uri(self) -> str:
        return self.tracking_uri

    def __getitem__(self, key: str) -> str:
        return str(getattr(self, key))


@pytest.fixture(scope="session")
def settings_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary storeml home shared by the session (stack files, Spark dirs, MLflow store)."""
    return tmp_path_factory.mktemp("storeml-home")


@pytest.fixture(scope="session")
def kafka_bootstrap(settings_home: Path) -> Iterator[str]:
    """``STOREML_TEST_KAFKA_BOOTSTRAP``, else a fresh Tansu broker on a free port."""
    external = os.environ.get("STOREML_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = TansuBroker(workdir=settings_home / "tansu")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_flavor() -> str:
    """``STOREML_TEST_KAFKA_FLAVOR``, else ``tansu``."""
    return os.environ.get("STOREML_TEST_KAFKA_FLAVOR", "tansu")


@pytest.fixture(scope="session")
def redis_url(settings_home: Path) -> Iterator[str]:
    """``STOREML_TEST_REDIS_URL``, else a ``redis-server`` of the session's own on a free port."""
    external = os.environ.get("STOREML_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(workdir=settings_home / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_uris(settings_home: Path) -> Iterator[MlflowUris]:
    """A migrated SQLite MLflow store for the session; also sets ``MLFLOW_TRACKING_URI``."""
    folder = settings_home / "mlflow"
    uris = MlflowUris(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifact_root=(folder / "artifacts").as_uri(),
    )
    init_mlflow(uris.tracking_uri, uris.artifact_root)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uris.tracking_uri
    try:
        yield uris
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def unique() -> str:
    """A short random string for names private to one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(
    settings_home: Path,
    kafka_bootstrap: str,
    kafka_flavor: str,
    redis_url: str,
    mlflow_uris: MlflowUris,
    unique: str,
    tmp_path: Path,
) -> Settings:
    """Settings for one test: the session services; its own topics, key prefix, registered model
    names, checkpoint and lake."""
    return load_settings(
        home=settings_home,
        kafka_bootstrap=kafka_bootstrap,
        kafka_flavor=kafka_flavor,
        redis_url=redis_url,
        mlflow_tracking_uri=mlflow_uris.tracking_uri,
        mlflow_artifact_root=mlflow_uris.artifact_root,
        topic_orders=f"test.{unique}.orders",
        topic_products=f"test.{unique}.products",
        topic_customer_profiles=f"test.{unique}.customer-profiles",
        topic_product_profiles=f"test.{unique}.product-profiles",
        topic_dead_letter=f"test.{unique}.dead-letter",
        topic_notices=f"test.{unique}.notices",
        topic_alerts=f"test.{unique}.alerts",
        monitor_app_id=f"test-{unique}-monitor",
        redis_prefix=f"test:{unique}",
        customer_model=f"test-{unique}-customers",
        product_model=f"test-{unique}-products",
        checkpoint_dir=tmp_path / "checkpoint",
        lake_dir=tmp_path / "lake",
    )


@pytest.fixture(scope="session")
def spark(settings_home: Path) -> Iterator[SparkSession]:
    """One local Spark session for in-process tests (7-10 s to start), stopped at the end."""
    from storeml.streams.spark_session import get_spark

    session = get_spark(load_settings(home=settings_home), app_name="storeml-tests")
    try:
        yield session
    finally:
        session.stop()


from tests.api_server import api_server  # noqa: E402,F401  (the fixture, for the API tests)
