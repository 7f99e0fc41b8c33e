"""What every task of the enrichment stream and the recompute receives, and its per-process clients.

:class:`JobContext` holds plain values only (it is pickled into every task); :func:`client` opens a
connector once per executor process and keeps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storeml.settings import Settings

__all__ = ["JobContext", "job_context", "client"]


@dataclass(frozen=True)
class JobContext:
    """Everything an executor needs, as plain values (pickled into every task).

    The stream uses the defaults of the last fields; the recompute (``batch/recompute.py``) sets
    them: no dead letters (None: counted only), no archiving, events after ``until_ms`` ignored,
    profiles written as Parquet to ``profiles_dir`` and/or published (``publish``).
    """

    kafka: dict[str, Any]
    orders_topic: str
    products_topic: str
    customer_topic: str
    product_topic: str
    dead_letter_topic: str | None
    redis_url: str
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


def job_context(
    settings: Settings, checkpoint: str | None = None, state_id: str = ""
) -> JobContext:
    root = checkpoint or str(settings.checkpoint_path)
    return JobContext(
        kafka=settings.kafka_config(),
        orders_topic=settings.topic_orders,
        products_topic=settings.topic_products,
        customer_topic=settings.topic_customer_profiles,
        product_topic=settings.topic_product_profiles,
        dead_letter_topic=settings.topic_dead_letter,
        redis_url=settings.redis_url,
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
        transactional_prefix=(
            f"storeml-enrich-{abs(hash(root)) % 10**8}" if settings.kafka_transactions else None
        ),
        lake_root=str(settings.lake_path) if settings.lake_path else None,
        lake_compact_seconds=settings.lake_compact_seconds,
        state_id=state_id,
        state_cache_dir=str(settings.state_cache_path),
        state_cache_mb=settings.state_cache_mb,
        state_ttl_ms=int(settings.state_ttl_hours * 3_600_000),
        state_expire_redis=settings.state_expire_redis,
        max_event_future_ms=int(settings.max_event_future_seconds * 1000),
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
    )


# --- per-process clients (executor side) ------------------------------------------------------
_clients: dict[tuple[Any, ...], Any] = {}


def client(kind: type, *args: Any) -> Any:
    """This process's ``kind(*args)``, built on first use (connectors connect lazily)."""
    key = (kind, *(json.dumps(a, sort_keys=True, default=str) for a in args))
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = kind(*args)
    return client
