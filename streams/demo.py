"""The newcomer's demo: the whole pipeline on the embedded local stack, end to end.

stack up -> topics -> train and register per-store models -> produce synthetic events (a few of them
malformed) -> run the enrichment stream until caught up -> show profiles from the enriched topics and
from Redis, and the dead letters -> stop what was started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from storeml.settings import Settings

__all__ = ["run_demo", "decode_topic"]

_TOPICS = {
    "customer-profiles": ("topic_customer_profiles", "customer_profile"),
    "product-profiles": ("topic_product_profiles", "product_profile"),
    "dead-letter": ("topic_dead_letter", "dead_letter"),
}


def decode_topic(settings: Settings, which: str) -> list[dict[str, Any]]:
    """Every record of an output topic, decoded, in (partition, offset) order."""
    from storeml.connectors.kafka_admin import read_all, watermark_method_for
    from storeml.schemas.codec import get_codec

    attribute, schema = _TOPICS[which]
    codec = get_codec(schema)
    records = read_all(
        settings.kafka_config(),
        getattr(settings, attribute),
        watermark_method_for(settings.kafka_flavor),
    )
    return [codec.decode(r.value) for r in records]


def _fmt_customer(p: dict[str, Any]) -> str:
    cats = ", ".join(f"{c['category']} {c['share']:.0%}" for c in p["top_categories"][:3]) or "-"
    propensity = "n/a" if p["propensity"] is None else f"{p['propensity']:.2f}"
    model = p["model"]
    return (
        f"  {p['store_id']}/{p['customer_id']}: {p['order_count']} orders, spend "
        f"{p['total_spend_minor'] / 100:.2f}, {p['product_views']} views, top [{cats}], "
        f"repeat propensity {propensity} (model {model['name']} v{model['version']}, {model['scope']})"
    )


def _fmt_product(p: dict[str, Any]) -> str:
    predicted = ", ".join(
        f"#{c['rank']} {c['category']} {c['probability']:.2f}" for c in p["predicted_categories"]
    )
    return (
        f"  {p['store_id']}/{p['product_id']} {p['title']!r}: category {p['category']}, "
        f"{p['views']} views, {p['order_count']} orders, {p['units']} units"
        + (f", predicted [{predicted}]" if predicted else "")
    )


def run_demo(
    settings: Settings,
    stores: int = 40,
    events: int = 30_000,
    seed: int = 7,
    keep_stack: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    import shutil

    from storeml.batch.history import live_config, train_on_synthetic
    from storeml.connectors.event_producer import produce_events
    from storeml.connectors.kafka_admin import ensure_topics
    from storeml.connectors.redis_sink import FeatureStore
    from storeml.connectors.synthetic import generate
    from storeml.stack import stack_down, stack_up
    from storeml.streams.enrich import start_enrichment
    from storeml.streams.spark_session import get_spark

    started = time.perf_counter()
    # The demo owns its checkpoint and key prefix: every run starts from empty topics and state.
    settings = settings.model_copy(
        update={
            "checkpoint_dir": settings.home / "checkpoints" / "demo",
            "redis_prefix": f"{settings.redis_prefix}-demo",
        }
    )
    shutil.rmtree(settings.checkpoint_path, ignore_errors=True)
    echo("== 1/5 local stack")
    echo(str(stack_up(settings)))
    try:
        client = settings.redis.connect()
        stale = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
        for start in range(0, len(stale), 1000):
            client.delete(*stale[start : start + 1000])
        client.close()
        ensure_topics(settings.kafka_config(), settings.topics, settings.topic_partitions)
        echo(
            f"== 2/5 training per-store models for {stores} stores (MLflow at {settings.tracking_uri})"
        )
        handles = train_on_synthetic(settings, stores, max(events, 20_000), seed)
        for kind, handle in handles.items():
            echo(f"  {kind}: {handle.name} v{handle.version} @{settings.serving_alias}")
        echo(f"== 3/5 producing {events} events (0.2% deliberately malformed)")
        config = live_config(stores, events, seed, malformed_fraction=0.002)
        stats = produce_events(
            settings.kafka_config(),
            generate(config),
            settings.topic_orders,
            settings.topic_products,
        )
        echo(f"  {stats}")
        echo("== 4/5 enrichment stream (Spark Structured Streaming, until caught up)")
        spark = get_spark(settings, "storeml-demo")
        try:
            query, handler = start_enrichment(
                spark,
                settings,
                available_now=True,
                on_batch=lambda r: echo(
                    f"  batch {r.batch_id}: {r.events} events, {r.dead_letters} dead letters -> "
                    f"{r.customers} customers, {r.products} products ({r.seconds:.1f}s)"
                ),
            )
            query.awaitTermination()
            if query.exception() is not None:
                raise RuntimeError(f"stream failed: {query.exception()}")
        finally:
            spark.stop()
        echo("== 5/5 results")
        customers = decode_topic(settings, "customer-profiles")
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for record in customers:
            latest[(record["store_id"], record["customer_id"])] = record
        best = sorted(latest.values(), key=lambda r: -r["order_count"])[:3]
        echo(
            f"enriched topic {settings.topic_customer_profiles}: {len(customers)} records; "
            "top customers:"
        )
        for record in best:
            echo(_fmt_customer(record))
        products = decode_topic(settings, "product-profiles")
        predicted = [p for p in products if p["predicted_categories"]][-2:]
        echo(
            f"enriched topic {settings.topic_product_profiles}: {len(products)} records; "
            "uncategorised products with predicted categories:"
        )
        for record in predicted:
            echo(_fmt_product(record))
        dead = decode_topic(settings, "dead-letter")
        echo(
            f"dead-letter topic {settings.topic_dead_letter}: {len(dead)} records"
            + (f", e.g. {dead[0]['stage']}: {dead[0]['reason']}" if dead else "")
        )
        if best:
            store_id, customer_id = best[0]["store_id"], best[0]["customer_id"]
            profile = FeatureStore(settings.redis, settings.redis_prefix).customer(
                store_id, customer_id
            )
            echo(
                f"Redis lookup (`STOREML_REDIS_PREFIX={settings.redis_prefix} storeml lookup"
                f" customer {store_id} {customer_id}`):"
            )
            echo(json.dumps(profile, indent=2, sort_keys=True))
        echo(f"done in {time.perf_counter() - started:.0f}s")
    finally:
        if not keep_stack:
            echo(str(stack_down(settings)))
