"""What every task of the enrichment stream and the recompute receives, and its per-process clients.

:class:`JobContext` holds plain values only (it is pickled into every task); :func:`client` opens a
connector once per executor process and keeps it.

Credentials travel inside the pickled context (the Kafka properties, the Redis target, the MLflow
user and password as :class:`~pydantic.SecretStr`), never in a Spark option: the source's option
carries a copy without them (:func:`storeml.streams.event_source.context_option`). The MLflow client
reads its credentials from ``MLFLOW_TRACKING_*`` variables, so a context applies them to the
environment of the process it is built or unpickled in (:meth:`JobContext.apply_credentials`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from storeml.connectors.redis_client import RedisTarget
from storeml.settings import Settings

__all__ = ["JobContext", "job_context", "client", "drop_client", "transactional_prefix"]


@dataclass(frozen=True)
class JobContext:
    """Everything an executor needs, as plain values (pickled into every task).

    The stream uses the defaults of the last fields; the recompute (``batch/recompute.py``) sets
    them: no dead letters (None: counted only), no archiving, events after ``until_ms`` ignored,
    profiles written as Parquet to ``profiles_dir`` and/or published (``publish``).
    """

    kafka: dict[str, Any] = field(repr=False)  # librdkafka properties, secrets included
    orders_topic: str
    products_topic: str
    customer_topic: str
    product_topic: str
    dead_letter_topic: str | None
    redis: RedisTarget
    redis_prefix: str
    state_root: str
    state_buckets: int
    snapshot_every: int
    retain: int
    tracking_uri: str
    registry_uri: str
    customer_model: str
    product_model: str
    serving_alias: str
    shadow_alias: str
    model_cache_size: int
    transactional_prefix: str | None
    lake_root: str | None = None
    lake_compact_seconds: float = 60.0
    state_id: str = ""
    state_cache_dir: str = ""
    state_cache_mb: int = 256
    state_ttl_ms: int = 0
    state_expire_redis: bool = False
    until_ms: int | None = None
    profiles_dir: str | None = None
    publish: bool = True
    max_event_future_ms: int = 86_400_000
    dead_letter_max_bytes: int = 1_000_000
    notices_topic: str | None = None
    registry_timeout_s: float = 5.0
    redis_retry_seconds: float = 300.0
    model_fetch_retry_seconds: float = 120.0
    version_base: int = 0  # added to every published profile_version (the checkpoint's generation)
    mlflow_username: str | None = None
    mlflow_password: SecretStr | None = None
    mlflow_token: SecretStr | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.apply_credentials()

    def apply_credentials(self) -> None:
        """Set this context's MLflow credentials as ``MLFLOW_TRACKING_*`` in ``os.environ``.

        MLflow's REST client reads them from there on every request; unset fields leave the
        variables alone (credentials given to the process directly keep working).
        """
        values = {
            "MLFLOW_TRACKING_USERNAME": self.mlflow_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "MLFLOW_TRACKING_TOKEN": self.mlflow_token,
        }
        for name, value in values.items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if text:
                os.environ[name] = text

    def without_secrets(self) -> JobContext:
        """This context with no credential in it (for copies that leave the process in clear)."""
        from storeml.redaction import redact_url

        return dataclasses.replace(
            self,
            kafka={},
            redis=self.redis.public(),
            mlflow_password=None,
            mlflow_token=None,
            # a database registry URI keeps its password (SQLAlchemy needs it); the copy's
            # reader (the source's decoder) never talks to MLflow
            tracking_uri=redact_url(self.tracking_uri),
            registry_uri=redact_url(self.registry_uri),
        )


def job_context(
    settings: Settings, checkpoint: str | None = None, state_id: str = ""
) -> JobContext:
    """The context of a job run with ``settings`` (its MLflow credentials applied here too)."""
    ctx = _job_context(settings, checkpoint, state_id)
    ctx.apply_credentials()
    return ctx


def _job_context(settings: Settings, checkpoint: str | None, state_id: str) -> JobContext:
    root = checkpoint or str(settings.checkpoint_path)
    return JobContext(
        kafka=settings.kafka_config(),
        orders_topic=settings.topic_orders,
        products_topic=settings.topic_products,
        customer_topic=settings.topic_customer_profiles,
        product_topic=settings.topic_product_profiles,
        dead_letter_topic=settings.topic_dead_letter,
        redis=settings.redis,
        redis_prefix=settings.redis_prefix,
        state_root=f"{root}/profile-state",
        state_buckets=settings.state_buckets,
        snapshot_every=settings.state_snapshot_every,
        retain=settings.state_retain_batches,
        tracking_uri=settings.tracking_uri,
        registry_uri=settings.registry_uri,
        customer_model=settings.customer_model,
        product_model=settings.product_model,
        serving_alias=settings.serving_alias,
        shadow_alias=settings.shadow_alias,
        model_cache_size=settings.model_cache_size,
        transactional_prefix=transactional_prefix(root) if settings.kafka_transactions else None,
        lake_root=str(settings.lake_path) if settings.lake_path else None,
        lake_compact_seconds=settings.lake_compact_seconds,
        state_id=state_id,
        state_cache_dir=str(settings.state_cache_path),
        state_cache_mb=settings.state_cache_mb,
        state_ttl_ms=int(settings.state_ttl_hours * 3_600_000),
        state_expire_redis=settings.state_expire_redis,
        max_event_future_ms=int(settings.max_event_future_seconds * 1000),
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        notices_topic=settings.topic_notices or None,
        registry_timeout_s=settings.mlflow_timeout_seconds,
        redis_retry_seconds=settings.redis_retry_seconds,
        model_fetch_retry_seconds=settings.model_fetch_retry_seconds,
        mlflow_username=settings.mlflow_username,
        mlflow_password=settings.mlflow_password,
        mlflow_token=settings.mlflow_token,
    )


# --- per-process clients (executor side) ------------------------------------------------------
_clients: dict[tuple[Any, ...], Any] = {}


#: Keys this process's secrets in the client cache (a digest that means nothing elsewhere).
_KEY_SALT = os.urandom(16)


def _key_part(value: Any) -> Any:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value().encode()
        return hmac.new(_KEY_SALT, secret, hashlib.sha256).hexdigest()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return str(value)


def _client_key(kind: type, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (kind, *(json.dumps(a, sort_keys=True, default=_key_part) for a in args))


def client(kind: type, *args: Any) -> Any:
    """This process's ``kind(*args)``, built on first use (connectors connect lazily)."""
    key = _client_key(kind, args)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = kind(*args)
    return client


def drop_client(kind: type, *args: Any) -> None:
    """Forget this process's ``kind(*args)`` (a broken one: the next :func:`client` builds anew)."""
    _clients.pop(_client_key(kind, args), None)


def transactional_prefix(checkpoint: str) -> str:
    """Transactional ids' prefix for a checkpoint: the same in every process and every restart.

    Each enrich task adds its index (``-task<p>of<n>``), so the producer of a restarted driver or
    of another worker fences the previous holder of its id, and a crashed producer's open
    transaction is aborted instead of lingering.
    """
    import hashlib

    return f"storeml-enrich-{hashlib.sha256(checkpoint.encode()).hexdigest()[:16]}"
