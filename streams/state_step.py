"""One enrich task's state step: read the touched entities, expire, fold, commit; render profiles."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pandas as pd

from storeml.streams.context import JobContext

__all__ = ["FoldStep", "fold_step", "state_store"]


@dataclass
class FoldStep:
    """What :func:`fold_step` did: profiles to score, and the state commit to wait for."""

    customers: pd.DataFrame
    products: pd.DataFrame
    expired: dict[str, pd.DataFrame]
    committed: Future[None] | None
    state_info: dict[str, Any]


def fold_step(
    store: Any,
    facts: pd.DataFrame,
    batch_id: int | None,
    partitions: int,
    buckets: int,
    batch_ts_ms: int,
    ttl_ms: int,
    lap: Callable[[str], None] = lambda name: None,
) -> FoldStep:
    """One task's state step: read the touched entities, expire, fold, commit; render profiles.

    ``store`` (a :class:`~storeml.connectors.state_store.StateStore`) None, or ``batch_id`` None,
    folds into an empty state and keeps none. ``lap`` is called with "state_s" and "fold_s" as
    each stage ends (timings).
    """
    from storeml.connectors.state_store import task_buckets
    from storeml.models.profiles import (
        ProfileState,
        apply_delta,
        customer_profiles,
        fold,
        product_profiles,
        restart_entities,
        stamp_delta,
    )

    expired: dict[str, pd.DataFrame] = {}
    partition = int(facts["bucket"].iloc[0]) % partitions if len(facts) else 0
    mine = task_buckets(partition, partitions, buckets)
    if store is None or batch_id is None:
        state = ProfileState()
    else:
        store.prepare(mine, batch_id - 1)
        if ttl_ms:
            expired = store.idle(mine, batch_ts_ms - ttl_ms)
        state = restart_entities(store.read(facts), expired)
    lap("state_s")
    delta = fold(state, facts)
    after = apply_delta(state, delta)
    customers = customer_profiles(after, delta, facts)
    products = product_profiles(after, delta, facts)
    lap("fold_s")
    if store is None or batch_id is None:
        return FoldStep(customers, products, expired, None, {})
    # the changelog is written while the caller scores and writes the sinks
    committed, changed = store.commit(
        batch_id, partition, partitions, mine, stamp_delta(delta, buckets, batch_ts_ms), expired
    )
    store.snapshot_due(mine, batch_id)
    stats = store.stats
    info = {
        "file": f"{partition}of{partitions}",
        "changed": changed,
        "keys_read": stats.keys_read,
        "rows_read": stats.rows_read,
        "rows_written": stats.rows_written,
        "expired": stats.rows_expired,
        "catch_ups": stats.catch_ups,
        "rebuilds": stats.rebuilds,
        "snapshots": stats.snapshots,
    }
    lap("state_s")
    return FoldStep(customers, products, expired, committed, info)


def state_store(ctx: JobContext) -> Any:
    """The task's :class:`~storeml.connectors.state_store.StateStore` of ``ctx``'s checkpoint."""
    from storeml.connectors.state_store import StateStore

    return StateStore(
        ctx.state_root,
        ctx.state_id,
        ctx.state_buckets,
        ctx.state_cache_dir,
        snapshot_every=ctx.snapshot_every,
        retain=ctx.retain,
        cache_mb=ctx.state_cache_mb,
        expiry=bool(ctx.state_ttl_ms),
    )
