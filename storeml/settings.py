"""The one settings object of a storeml process.

Values come, highest priority first, from keyword arguments, ``STOREML_*`` environment variables,
the TOML file named by ``STOREML_CONFIG`` (keys are the field names below, without the prefix), and
the defaults. The defaults describe the embedded local stack started by ``storeml stack up``;
pointing storeml at a real Kafka, Redis or MLflow is a matter of settings only, for example::

    STOREML_KAFKA_BOOTSTRAP=kafka-1:9092 STOREML_KAFKA_FLAVOR=apache
    STOREML_REDIS_URL=redis://redis:6379/0 STOREML_MLFLOW_TRACKING_URI=http://mlflow:5000

A misspelt key fails loudly, naming the key and where it came from.

Secrets (``docs/security.md``) are :class:`~pydantic.SecretStr` and never printed: the passwords of
Redis, MLflow and Kafka SASL, and every ``kafka_security`` property whose name looks secret
(:func:`storeml.redaction.is_secret_key`: ``sasl.password``, ``ssl.key.password``,
``ssl.key.pem``, ``sasl.oauthbearer.client.secret``, ...). A password written into ``redis_url``
or into an http(s) MLflow URI is moved out of the URL at load time (into ``redis_password``,
``mlflow_password``), so URLs are safe to show; validation errors never echo a secret.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from storeml.errors import ConfigError
from storeml.redaction import MASK, is_secret_key, mask_value, redact_url
from storeml.settings_monitor import MonitorSettings
from storeml.settings_serving import ServeSettings

if TYPE_CHECKING:
    from storeml.connectors.redis_client import RedisTarget

__all__ = ["Settings", "get_settings", "load_settings", "CONFIG_ENV"]

CONFIG_ENV = "STOREML_CONFIG"
ENV_PREFIX = "STOREML_"


def _kafka_value(value: Any) -> str | SecretStr:
    """A librdkafka property value: text (numbers and booleans as librdkafka spells them)."""
    if isinstance(value, str | SecretStr):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueError("a librdkafka property value must be a string, number or boolean")


#: A ``kafka_security`` value; secret-looking properties become SecretStr after validation.
KafkaValue = Annotated[str | SecretStr, PlainValidator(_kafka_value)]


class Settings(ServeSettings, MonitorSettings):
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
    kafka_security: dict[str, KafkaValue] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for every client (security.protocol, sasl.*,"
        " ssl.*); properties named like secrets (password, secret, token, ssl.key.pem, jaas)"
        " are kept as secrets and masked.",
    )
    kafka_password: SecretStr | None = Field(
        default=None, description="sasl.password for every client, kept out of logs."
    )
    topic_orders: str = "storeml.orders"
    topic_products: str = "storeml.products"
    topic_customer_profiles: str = "storeml.customer-profiles"
    topic_product_profiles: str = "storeml.product-profiles"
    topic_dead_letter: str = "storeml.dead-letter"
    topic_notices: str = Field(
        default="storeml.notices",
        description="Operational notices (JSON), e.g. a store model that failed while scoring;"
        " empty: logged only.",
    )
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
        default="redis://127.0.0.1:6379/0",
        description="Feature store Redis URL; rediss:// for TLS. A user:password in it moves to"
        " redis_username/redis_password.",
    )
    redis_username: str | None = Field(
        default=None, description="Redis ACL user (AUTH <user> <password>); none: the default user."
    )
    redis_password: SecretStr | None = Field(
        default=None, description="Redis password (requirepass, or the ACL user's password)."
    )
    redis_ssl_ca_certs: Path | None = Field(
        default=None, description="rediss://: CA bundle verifying the server (default: system CAs)."
    )
    redis_ssl_certfile: Path | None = Field(
        default=None, description="rediss://: client certificate (mutual TLS), with the key file."
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None, description="rediss://: private key of the client certificate."
    )
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required",
        description="rediss://: server certificate check; 'none' disables it (testing only).",
    )
    redis_prefix: str = Field(default="storeml", description="Prefix of every feature-store key.")
    redis_retry_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a Redis write waits out an outage (retried with backoff, 0.2 s to"
        " 5 s) before the micro-batch fails and is replayed on restart.",
    )

    # --- MLflow ------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: SQLite at <home>/mlflow/mlflow.db.",
    )
    mlflow_registry_uri: str | None = Field(
        default=None, description="MLflow registry URI; default: the tracking URI."
    )
    mlflow_username: str | None = Field(
        default=None,
        description="MLflow server basic-auth user (set as MLFLOW_TRACKING_USERNAME for the"
        " client, on the driver and the executors).",
    )
    mlflow_password: SecretStr | None = Field(
        default=None, description="MLflow basic-auth password (MLFLOW_TRACKING_PASSWORD)."
    )
    mlflow_token: SecretStr | None = Field(
        default=None,
        description="MLflow bearer token (MLFLOW_TRACKING_TOKEN), instead of a password.",
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
    serving_alias: str = Field(
        default="champion",
        description="Registry alias the stream serves; missing at start is an error, removed while"
        " running keeps the version served last; empty serves no model (profiles unscored).",
    )
    shadow_alias: str = Field(
        default="challenger",
        description="Registry alias scored in shadow beside the served model (its scores go to"
        " the profiles' `shadow` field, never to the served fields); empty disables shadow scoring.",
    )
    model_fetch_retry_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How long an executor waits out an artifact store that does not answer when"
        " it opens a model version (retried with backoff) before the micro-batch fails and is"
        " replayed; a version that fails its digest or cannot be read is published unscored"
        " at once.",
    )
    model_cache_size: int = Field(
        default=2048,
        ge=1,
        description="Store models kept per process (least recently used evicted).",
    )
    # model artifacts and registry resilience (docs/model-packages.md)
    model_cache_dir: Path | None = Field(
        default=None,
        description="Private folder (0700, refused when another user owns it or others may write"
        " to it) for versions downloaded from a remote artifact store; default"
        " $XDG_CACHE_HOME/storeml/models or ~/.cache/storeml/models. Spark executors get it as"
        " STOREML_MODEL_CACHE_DIR.",
    )
    mlflow_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a micro-batch waits for the MLflow registry to resolve its aliases;"
        " past it (or on a registry error) the stream serves the versions it resolved last.",
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

    @field_validator(
        "home",
        "checkpoint_dir",
        "lake_dir",
        "state_cache_dir",
        "model_cache_dir",
        "redis_ssl_ca_certs",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
        mode="after",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_urls(cls, data: Any) -> Any:
        """Move a user/password found in redis_url or an http(s) MLflow URI to its own fields."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        url = data.get("redis_url")
        if isinstance(url, str) and "@" in url:
            from storeml.connectors.redis_client import split_userinfo

            data["redis_url"], user, password = split_userinfo(url)
            _take(data, "redis_username", user, "redis_url", data["redis_url"])
            _take(data, "redis_password", password, "redis_url", data["redis_url"])
        for key in ("mlflow_tracking_uri", "mlflow_registry_uri"):
            uri = data.get(key)
            if isinstance(uri, str) and uri.startswith(("http://", "https://")) and "@" in uri:
                data[key], user, password = _split_http_userinfo(uri)
                _take(data, "mlflow_username", user, key, data[key])
                _take(data, "mlflow_password", password, key, data[key])
        return data

    @field_validator("kafka_security", mode="after")
    @classmethod
    def _secret_kafka_properties(
        cls, value: dict[str, str | SecretStr]
    ) -> dict[str, str | SecretStr]:
        return {
            k: SecretStr(v) if isinstance(v, str) and is_secret_key(k) else v
            for k, v in value.items()
        }

    @model_validator(mode="after")
    def _redis_target_fits(self) -> Settings:
        try:
            self.redis.check()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

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
            *([self.topic_notices] if self.topic_notices else []),
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

    @property
    def redis(self) -> RedisTarget:
        """Where and how to reach the feature store (URL, ACL user, password, TLS files)."""
        from storeml.connectors.redis_client import RedisTarget

        return RedisTarget(
            url=self.redis_url,
            username=self.redis_username,
            password=self.redis_password,
            ssl_ca_certs=str(self.redis_ssl_ca_certs) if self.redis_ssl_ca_certs else None,
            ssl_certfile=str(self.redis_ssl_certfile) if self.redis_ssl_certfile else None,
            ssl_keyfile=str(self.redis_ssl_keyfile) if self.redis_ssl_keyfile else None,
            ssl_cert_reqs=self.redis_ssl_cert_reqs,
        )

    def mlflow_env(self) -> dict[str, str]:
        """The ``MLFLOW_TRACKING_*`` variables the MLflow client reads its credentials from."""
        env: dict[str, str] = {}
        if self.mlflow_username:
            env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_username
        if self.mlflow_password is not None:
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password.get_secret_value()
        if self.mlflow_token is not None:
            env["MLFLOW_TRACKING_TOKEN"] = self.mlflow_token.get_secret_value()
        return env

    def secret_values(self) -> tuple[str, ...]:
        """Every secret these settings hold, unwrapped (for log filters and leak tests)."""
        found = [
            value.get_secret_value()
            for value in (
                self.kafka_password,
                self.redis_password,
                self.mlflow_password,
                self.mlflow_token,
                self.api_key,
                self.monitor_webhook_url,
                *self.kafka_security.values(),
            )
            if isinstance(value, SecretStr)
        ]
        return tuple(v for v in found if v)

    def shown(self) -> dict[str, Any]:
        """Every setting as ``storeml settings`` prints it: secrets as ***, URLs redacted."""
        return {name: mask_value(name, getattr(self, name)) for name in type(self).model_fields}

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka properties for a client of this deployment, with ``overrides`` on top."""
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        for name, value in self.kafka_security.items():
            config[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        if self.kafka_password is not None:
            config["sasl.password"] = self.kafka_password.get_secret_value()
        config.update(overrides)
        return config


def _take(data: dict[str, Any], field: str, value: str | None, source: str, clean: str) -> None:
    """Set ``data[field]`` from a URL's userinfo, refusing a different value set beside it."""
    if value is None:
        return
    current = data.get(field)
    if current is not None:
        given = current.get_secret_value() if isinstance(current, SecretStr) else str(current)
        if given != value:
            raise ValueError(
                f"{source} {clean} carries a {field.rsplit('_', 1)[1]} and {field} is set to"
                " another one; keep one of them"
            )
    data[field] = value


def _split_http_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without userinfo, user, password)`` of an http(s) URI."""
    parts = urlsplit(uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, unquote(password) or None


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
            origin
            if key.split(".")[0] in file_keys or key == "<root>"
            else f"environment ({ENV_PREFIX}{key.split('.')[0].upper()})"
        )
        if item["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown setting {key!r}; see `storeml settings` for valid keys"
            )
        else:
            lines.append(f"{source}: {key}: {redact_url(item['msg'])}{_got(key, item)}")
    return "invalid storeml settings:\n  " + "\n  ".join(lines)


def _got(key: str, item: Any) -> str:
    """`` (got <input>)`` for an error, with secrets masked; nothing for a whole-model error."""
    if "input" not in item or key == "<root>":
        return ""
    value = item["input"]
    if is_secret_key(key) or any(is_secret_key(part) for part in key.split(".")):
        return f" (got {MASK})"
    return f" (got {mask_value(key, value)!r})"


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
