"""The one settings object of a storeml process.

Values come, highest priority first, from keyword arguments, ``STOREML_*`` environment variables,
the TOML file named by ``STOREML_CONFIG`` (keys are the field names below, without the prefix), and
the defaults. The defaults describe the embedded local stack started by ``storeml stack up``;
pointing storeml at a real Kafka, Redis or MLflow is a matter of settings only, for example::

    STOREML_KAFKA_BOOTSTRAP=kafka-1:9092 STOREML_KAFKA_FLAVOR=apache
    STOREML_REDIS_URL=redis://redis:6379/0 STOREML_MLFLOW_TRACKING_URI=http://mlflow:5000

A misspelt key fails loudly, naming the key and where it came from.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storeml.errors import ConfigError

__all__ = ["Settings", "get_settings", "load_settings", "CONFIG_ENV"]

CONFIG_ENV = "STOREML_CONFIG"
ENV_PREFIX = "STOREML_"


class Settings(BaseSettings):
    """Frozen settings; build with :func:`load_settings` (or :func:`get_settings` for the cached one)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, case_sensitive=False
    )

    # --- local state -------------------------------------------------------------------------
    home: Path = Field(
        default=Path(".storeml"),
        description="Folder for local state: stack pid files and logs, MLflow store, checkpoints.",
    )

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092", description="Kafka bootstrap servers (host:port[,host:port])."
    )
    kafka_flavor: Literal["apache", "tansu"] = Field(
        default="tansu",
        description=(
            "Broker quirks profile. 'apache' for Apache Kafka / Confluent / Redpanda; 'tansu' for the"
            " embedded broker, whose ListOffsets(latest) answer is wrong (high watermarks are then"
            " read from fetch responses instead)."
        ),
    )
    kafka_security: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for every client (security.protocol, sasl.*).",
    )
    kafka_password: SecretStr | None = Field(
        default=None, description="sasl.password for every client, kept out of logs."
    )
    topic_orders: str = "storeml.orders"
    topic_products: str = "storeml.products"
    topic_customer_profiles: str = "storeml.customer-profiles"
    topic_product_profiles: str = "storeml.product-profiles"
    topic_dead_letter: str = "storeml.dead-letter"
    topic_partitions: int = Field(
        default=4, ge=1, description="Partitions of topics storeml creates."
    )
    kafka_transactions: bool = Field(
        default=False,
        description=(
            "Write enriched records in Kafka transactions (one per task). Only meaningful on brokers"
            " that isolate aborted records (Apache Kafka); the embedded broker does not."
        ),
    )

    # --- input rules (hostile input, docs/ids.md) ---------------------------------------------
    max_event_future_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description=(
            "Events dated more than this after their Kafka record's timestamp go to the dead-letter"
            " topic (measured from the record, not the clock, so a replay decides the same)."
        ),
    )
    dead_letter_max_bytes: int = Field(
        default=1_000_000,
        ge=8_192,
        description=(
            "Largest dead letter (the broker's message.max.bytes); larger ones are cut, keeping"
            " the original's size and SHA-256."
        ),
    )

    # --- Redis -------------------------------------------------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Feature store Redis URL."
    )
    redis_prefix: str = Field(default="storeml", description="Prefix of every feature-store key.")

    # --- MLflow ------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: SQLite at <home>/mlflow/mlflow.db.",
    )
    mlflow_registry_uri: str | None = Field(
        default=None, description="MLflow registry URI; default: the tracking URI."
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Artifact location for experiments storeml creates; default <home>/mlflow/artifacts.",
    )
    customer_model: str = Field(
        default="storeml-customer-propensity",
        description="Registered model scoring customer profiles (one model, one member per store).",
    )
    product_model: str = Field(
        default="storeml-product-category",
        description="Registered model predicting the top-5 categories of uncategorised products.",
    )
    serving_alias: str = Field(default="champion", description="Registry alias the stream serves.")
    shadow_alias: str = Field(
        default="challenger",
        description="Registry alias scored in shadow beside the served model (its scores go to"
        " the profiles' `shadow` field, never to the served fields); empty disables shadow scoring.",
    )
    model_cache_size: int = Field(
        default=2048,
        ge=1,
        description="Store models kept per process (least recently used evicted).",
    )

    # --- Spark / the stream ------------------------------------------------------------------
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    spark_driver_host: str = Field(
        default="127.0.0.1",
        description="Address executors use to reach the driver (spark.driver.host); on a cluster,"
        " the driver machine's name or address.",
    )
    spark_driver_bind_address: str = Field(
        default="127.0.0.1",
        description="Address the driver listens on (spark.driver.bindAddress); 0.0.0.0 on a cluster.",
    )
    spark_shuffle_partitions: int = Field(
        default=0,
        ge=0,
        description="spark.sql.shuffle.partitions: enrich tasks per micro-batch and tasks of the"
        " recompute; 0 = the cores of a local[N] master (2 otherwise).",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description='Extra Spark properties (e.g. {"spark.executor.memory": "4g"}); they win.',
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Spark checkpoint of the enrichment stream; default <home>/checkpoints/enrich.",
    )
    lake_enabled: bool = Field(
        default=True,
        description="Archive every accepted event to the event lake (the recompute reads it).",
    )
    lake_compact_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often the stream's driver starts a compaction (a low-priority child"
        " process) that moves incoming lake files into the store/date layout (one file per store"
        " and day per compaction).",
    )
    lake_dir: Path | None = Field(
        default=None,
        description="Event lake: Parquet partitioned by store and event date; default <home>/lake."
        " Every executor must reach it (a shared folder on a cluster).",
    )
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_records_per_batch: int = Field(default=50_000, ge=1)
    source_tasks: int = Field(
        default=0,
        ge=0,
        description="Most Spark tasks reading one micro-batch from Kafka (topic-partition ranges"
        " are packed into them); 0 = the session's spark.sql.shuffle.partitions. Each task costs a"
        " fixed ~40 ms, so about one per core keeps small micro-batches fast.",
    )
    task_records: int = Field(
        default=10_000,
        ge=1,
        description="A micro-batch gets one read task, and one enrich task, per this many records"
        " (at most source_tasks and spark.sql.shuffle.partitions): on 2 cores a small batch runs"
        " faster as one task than as two, a large one faster on both cores.",
    )
    trigger_seconds: float = Field(
        default=0.0, ge=0, description="Micro-batch interval; 0 = back to back."
    )
    task_chunk_rows: int = Field(
        default=20_000,
        ge=10,
        description="Rows a recompute or batch-transform task holds at once: history is folded,"
        " and profiles are scored and written, this many at a time (Spark's Arrow batch size for"
        " those jobs), so a task's memory does not grow with the history.",
    )
    state_buckets: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Virtual buckets of the profile state (a hash of the store id), fixed for the"
        " life of a checkpoint. A micro-batch runs as many enrich tasks as the session has shuffle"
        " partitions, each holding every bucket b with b % tasks == its index, so the same"
        " checkpoint runs with 2 tasks or 64; more buckets than the largest task count you will"
        " run is all it needs.",
    )
    state_snapshot_every: int = Field(
        default=20,
        ge=1,
        description="Each state bucket that changed is snapshotted once every N micro-batches"
        " (staggered by bucket, so a batch writes about buckets/N of them).",
    )
    state_retain_batches: int = Field(
        default=50,
        ge=2,
        description="Micro-batches of state changelog kept behind the latest snapshot; a worker"
        " whose copy is at most this far behind catches up from the changelog, one further behind"
        " reloads the bucket from its snapshot.",
    )
    state_cache_dir: Path | None = Field(
        default=None,
        description="Local folder of the host's working copy of the state (SQLite, shared by the"
        " host's Python workers; rebuilt from the checkpoint when lost); default <home>/state-cache."
        " Must be on each executor's local disk, not a shared folder.",
    )
    state_cache_mb: int = Field(
        default=256,
        ge=1,
        description="Memory the state costs a worker, in MiB, whatever the number of entities: at"
        " most this much of the working copy is memory-mapped (clean pages of the OS page cache,"
        " shared by the host's workers), plus a SQLite page cache of at most 32 MiB.",
    )
    state_ttl_hours: float = Field(
        default=0.0,
        ge=0,
        description="Drop an entity from the profile state when no micro-batch touched it for this"
        " many hours (processing time, Spark's batch timestamp); 0 = never. A later event starts"
        " the entity afresh. Its profile stays in Redis unless state_expire_redis.",
    )
    state_expire_redis: bool = Field(
        default=False,
        description="Also delete an expired entity's profile from Redis.",
    )

    @field_validator("home", "checkpoint_dir", "lake_dir", "state_cache_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    # --- derived -----------------------------------------------------------------------------
    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or (self.mlflow_dir / "artifacts").as_uri()

    @property
    def topics(self) -> list[str]:
        """Every topic the enrichment job reads or writes (inputs, outputs, dead letters)."""
        return [
            self.topic_orders,
            self.topic_products,
            self.topic_customer_profiles,
            self.topic_product_profiles,
            self.topic_dead_letter,
        ]

    @property
    def state_cache_path(self) -> Path:
        return self.state_cache_dir or self.home / "state-cache"

    @property
    def shuffle_partitions(self) -> int:
        """spark_shuffle_partitions, or the cores of a ``local[N]``/``local[*]`` master."""
        if self.spark_shuffle_partitions:
            return self.spark_shuffle_partitions
        master = self.spark_master.strip()
        if master.startswith("local["):
            inner = master[6:].split(",")[0].rstrip("]")
            if inner == "*":
                return os.cpu_count() or 2
            if inner.isdigit():
                return max(1, int(inner))
        return 2

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir or self.home / "checkpoints" / "enrich"

    @property
    def lake_path(self) -> Path | None:
        """Where the stream archives accepted events; None when the lake is disabled."""
        if not self.lake_enabled:
            return None
        return self.lake_dir or self.home / "lake"

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka properties for a client of this deployment, with ``overrides`` on top."""
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_security}
        if self.kafka_password is not None:
            config["sasl.password"] = self.kafka_password.get_secret_value()
        config.update(overrides)
        return config


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{CONFIG_ENV}={path}: no such file; fix the path or unset it") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    section = data.get("storeml", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [storeml] must be a table of settings")
    return section


def _describe(error: ValidationError, origin: str, file_keys: set[str]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        source = (
            origin if key.split(".")[0] in file_keys else f"environment ({ENV_PREFIX}{key.upper()})"
        )
        if item["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown setting {key!r}; see `storeml settings` for valid keys"
            )
        else:
            lines.append(f"{source}: {key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid storeml settings:\n  " + "\n  ".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, ``STOREML_*`` variables, the config file and defaults.

    Raises :class:`ConfigError` naming the offending key and its origin (file or variable).
    """
    path = config_file or os.environ.get(CONFIG_ENV)
    file_values: dict[str, Any] = _read_config_file(Path(path)) if path else {}
    origin = str(path) if path else "arguments"
    env_keys = {
        name[len(ENV_PREFIX) :].lower()
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_ENV
    }
    unknown = sorted(
        k for k in env_keys if k not in Settings.model_fields and not k.startswith("test_")
    )
    if unknown:
        names = ", ".join(f"{ENV_PREFIX}{k.upper()}" for k in unknown)
        raise ConfigError(f"environment: unknown setting(s) {names}; see `storeml settings`")
    # Environment variables beat the file: drop file keys that the environment sets.
    merged = {k: v for k, v in file_values.items() if k.lower() not in env_keys}
    merged.update(overrides)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, set(merged))) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (built once)."""
    return load_settings()
