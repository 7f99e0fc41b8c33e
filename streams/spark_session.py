"""The one way storeml builds a local Spark session (driver, tests and batch jobs alike).

What the settings below buy, measured on a 2-core machine (see NOTES):

- ``PYSPARK_PYTHON``/``PYSPARK_DRIVER_PYTHON`` are the running interpreter; otherwise the Python
  workers may start another Python that lacks our packages (``ModuleNotFoundError: pandas``).
- two shuffle partitions: the default 200 makes every small ``groupBy`` cost seconds locally.
- Arrow on, 10k rows per Arrow batch: ``mapInPandas``/``applyInPandas`` scoring runs on Arrow.
- Spark writes its warehouse, Derby, scratch and JVM temp files under ``<home>/spark``, never into
  the current folder (no ``spark-warehouse/``, ``metastore_db/``, ``derby.log`` left behind).

A session starts in 7-10 s here; :func:`get_spark` logs the time it took. ``getOrCreate`` returns
an existing session unchanged, so static settings (master, memory, dirs) only apply to the first.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["get_spark", "spark_conf"]

logger = logging.getLogger(__name__)


def spark_conf(settings: Settings, app_name: str = "storeml", **conf: Any) -> dict[str, str]:
    """The Spark properties :func:`get_spark` uses; ``conf`` entries (dotted keys) win."""
    root = settings.home / "spark"
    tmp = root / "tmp"
    java_opts = f"-Djava.io.tmpdir={tmp} -Dderby.system.home={root / 'derby'}"
    base: dict[str, Any] = {
        "spark.master": settings.spark_master,
        "spark.app.name": app_name,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.driver.host": settings.spark_driver_host,
        "spark.driver.bindAddress": settings.spark_driver_bind_address,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.sql.warehouse.dir": (root / "warehouse").as_uri(),
        "spark.sql.catalogImplementation": "in-memory",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.python.worker.reuse": "true",
        "spark.sql.shuffle.partitions": settings.shuffle_partitions,
        "spark.default.parallelism": settings.shuffle_partitions,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **settings.spark_conf,
    }
    if settings.model_cache_dir is not None:  # read by the executors' model cache
        base.setdefault("spark.executorEnv.STOREML_MODEL_CACHE_DIR", str(settings.model_cache_dir))
    base.update(conf)
    return {key: _as_conf_value(value) for key, value in base.items()}


def _as_conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def get_spark(settings: Settings, app_name: str = "storeml", **conf: Any) -> SparkSession:
    """A local ``SparkSession`` configured from ``settings``.

    Extra Spark properties go in ``conf`` with their dotted names, e.g.
    ``get_spark(settings, **{"spark.sql.shuffle.partitions": 4})``. Takes 7-10 s when no session
    exists yet (a JVM starts); the time is logged at INFO.
    """
    properties = spark_conf(settings, app_name, **conf)
    for folder in ("tmp", "local", "derby"):
        (settings.home / "spark" / folder).mkdir(parents=True, exist_ok=True)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # Scratch space via the environment: setting spark.local.dir makes Spark warn on every start.
    os.environ.setdefault("SPARK_LOCAL_DIRS", str(settings.home / "spark" / "local"))
    # A driver bound to loopback (the local default): also silences the "hostname resolves to a
    # loopback address" warning. On a cluster the bind address comes from the settings alone.
    if settings.spark_driver_bind_address.startswith("127."):
        os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_bind_address)

    from pyspark.sql import SparkSession

    started = time.monotonic()
    builder = SparkSession.builder
    for key, value in properties.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    logger.info(
        "Spark session %r on %s ready in %.1fs",
        app_name,
        properties["spark.master"],
        time.monotonic() - started,
    )
    return spark
