"""Seeding a stream's profile state with many entities, for the benchmarks that measure its scale."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["seed_state"]


def seed_state(settings: Any, stores: int, entities: int, now_ms: int) -> dict[str, float]:
    """Add ``entities`` customers of the synthetic world's ``stores`` to the stream's state.

    They go into the host's working copy at the stream's last committed batch, and are snapshotted
    there (before the first batch, version -1, there is nothing to snapshot: a bench does not
    rebuild). Customer ids have the generator's form, so later events touch seeded customers.
    """
    import pandas as pd

    from storeml.batch.latest import latest_version
    from storeml.connectors.state_store import StateStore
    from storeml.connectors.synthetic import GeneratorConfig, store_ids
    from storeml.models.events import buckets_of
    from storeml.models.profiles import StateDelta, state_table
    from storeml.streams.checkpoint import check_checkpoint

    started = time.perf_counter()
    state_id = check_checkpoint(settings.checkpoint_path, settings).state_id
    root = settings.checkpoint_path / "profile-state"
    version = latest_version(root)
    store = StateStore(
        root, state_id, settings.state_buckets, settings.state_cache_path, expiry=False
    )
    buckets = list(range(settings.state_buckets))
    store.prepare(buckets, version)
    names = store_ids(GeneratorConfig(stores=stores, events=5 * stores))
    per_store = -(-entities // len(names))
    ids = [(s, f"c{n:06d}") for s in names for n in range(1, per_store + 1)][:entities]
    have = store.db.db.execute("SELECT store_id, customer_id FROM customers").fetchall()
    ids = [key for key in ids if key not in set(have)]
    written = 0
    for start in range(0, len(ids), 200_000):
        part = ids[start : start + 200_000]
        n = len(part)
        customers = state_table(
            "customers",
            {
                "store_id": [s for s, _ in part],
                "customer_id": [c for _, c in part],
                "profile_version": [1] * n,
                "order_count": [1] * n,
                "total_spend_minor": [2_500] * n,
                "first_order_time": [now_ms] * n,
                "last_order_time": [now_ms] * n,
                "last_event_time": [now_ms] * n,
                "product_views": [0] * n,
                "touched_ms": [now_ms] * n,
            },
        )
        categories = state_table(
            "categories",
            {
                "store_id": [s for s, _ in part],
                "customer_id": [c for _, c in part],
                "category": ["books"] * n,
                "spend_minor": [2_500] * n,
            },
        )
        products = state_table("products", {})
        for frame in (customers, categories):
            stores_of = frame.index.get_level_values("store_id")
            frame.insert(0, "bucket", buckets_of(stores_of, settings.state_buckets))
        products.insert(0, "bucket", pd.Series([], dtype="int32"))
        with store.db.transaction():
            store.db.write(StateDelta(customers, categories, products))
        written += n
    if version >= 0:
        store.write_snapshots(buckets, version)
    return {"seeded": written, "seed_s": time.perf_counter() - started, "version": version}
