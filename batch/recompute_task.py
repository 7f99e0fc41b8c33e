"""The recompute's executor side: fold a task's history chunk by chunk, then publish its profiles.

A recompute task holds every state bucket ``b`` with ``b % tasks == its index`` (as an enrich task
does) and receives its history as Arrow-batch-sized chunks of facts (``task_chunk_rows``), never
whole. Each chunk is folded into a task-local working copy of the state (SQLite in a scratch folder,
deleted at the end) exactly as a micro-batch is folded into the stream's: read the rows of the
entities it touches, fold, write their new rows. The offset ranges each entity was folded from are
widened in the same copy. Once the history is in, the task scans the copy in key order,
``task_chunk_rows`` profiles at a time, and publishes each chunk with the stream's own scoring and
sinks (:func:`storeml.streams.enrich.publish_profiles`).

So a task's memory is a chunk plus SQLite's page cache, however long the history, and its result
is the stream's, field for field: the fold is made of commutative aggregates, so folding a history
in chunks in any order lands where the stream's micro-batches did.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from storeml.streams.context import JobContext

__all__ = ["recompute_task", "state_profiles"]


def recompute_task(
    ctx: JobContext,
    handles: dict[str, Any],
    shadows: dict[str, Any],
    partitions: int,
    chunk_rows: int,
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The chunked task function for :func:`storeml.streams.enrich.enrich_facts` (``chunked``)."""

    def run(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from storeml.connectors.state_db import StateDB
        from storeml.connectors.state_store import task_buckets, touched_keys
        from storeml.models.profiles import (
            CUSTOMER_KEY,
            PRODUCT_KEY,
            customer_facts,
            facts_frame,
            fold,
            source_ranges,
            stamp_delta,
        )
        from storeml.streams.publish import Published, publish_profiles
        from storeml.streams.tasks import StageTimer, metrics_frame, model_versions

        timer = StageTimer()
        lap = timer.lap

        first = next(chunks, None)
        if first is None:
            return
        partition = int(first["bucket"].iloc[0]) % partitions
        mine = task_buckets(partition, partitions, ctx.state_buckets)
        scratch = Path(ctx.state_cache_dir) / f"recompute-{uuid.uuid4().hex}"
        db = StateDB(scratch / "state.sqlite", ctx.state_cache_mb)
        fact_count, largest, folded = 0, 0, 0
        try:
            for chunk in itertools.chain([first], chunks):
                facts = facts_frame(chunk)
                fact_count += len(facts)
                largest = max(largest, len(facts))
                folded += 1
                customers, products = touched_keys(facts)
                with db.transaction():
                    state = db.read(customers, products)
                    lap("state_s")
                    delta = fold(state, facts)
                    lap("fold_s")
                    db.write(stamp_delta(delta, ctx.state_buckets, 0))
                    for kind, rows, key in (
                        ("customer", customer_facts(facts), CUSTOMER_KEY),
                        ("product", facts[facts["product_id"].notna()], PRODUCT_KEY),
                    ):
                        db.add_sources(kind, _with_bucket(source_ranges(rows, key), rows))
                    lap("state_s")
            done = Published()
            chunk_no = 0
            for part_no, (customer_rows, product_rows) in enumerate(
                state_profiles(db, mine, chunk_rows, with_sources=True)
            ):
                lap("fold_s")
                part = f"{mine[0]}-{part_no:05d}"
                done.add(
                    publish_profiles(
                        ctx,
                        customer_rows,
                        product_rows,
                        handles,
                        shadows,
                        part,
                        lap,
                        producer_id=f"recompute-{mine[0]}",
                    )
                )
                chunk_no += 1
        finally:
            db.close()
            shutil.rmtree(scratch, ignore_errors=True)
        info = {"chunks": folded, "max_chunk_rows": largest, "publish_chunks": chunk_no}
        yield metrics_frame(
            mine, fact_count, done, timer.seconds, model_versions(handles, shadows), info
        )

    return run


def state_profiles(
    db: Any, buckets: list[int], chunk_rows: int, *, with_sources: bool
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Unscored customer and product profiles of every entity of ``buckets`` in a state copy
    (:class:`~storeml.connectors.state_db.StateDB`), ``chunk_rows`` of each kind at a time.

    ``source`` comes from the copy's offset ranges ``with_sources`` (a recompute), else is empty.
    """
    from storeml.models.profiles import (
        CUSTOMER_KEY,
        PRODUCT_KEY,
        ProfileState,
        StateDelta,
        customer_profiles,
        product_profiles,
        ranges_by_entity,
    )

    chunks = itertools.zip_longest(
        db.scan("customers", buckets, chunk_rows), db.scan("products", buckets, chunk_rows)
    )
    for customers_flat, products_flat in chunks:
        empty = ProfileState()
        customers, categories, products = empty.customers, empty.categories, empty.products
        sources: dict[str, Any] = {"customer": {}, "product": {}}
        if customers_flat is not None and len(customers_flat):
            keys = customers_flat[["bucket", *CUSTOMER_KEY]]
            with db.transaction(write=False):
                categories = db.read(keys).categories
                if with_sources:
                    sources["customer"] = ranges_by_entity(
                        db.sources_of("customer", keys), CUSTOMER_KEY
                    )
            customers = customers_flat.drop(columns=["bucket", "expired"], errors="ignore")
            customers = customers.set_index(CUSTOMER_KEY)
        if products_flat is not None and len(products_flat):
            keys = products_flat[["bucket", *PRODUCT_KEY]]
            if with_sources:
                with db.transaction(write=False):
                    sources["product"] = ranges_by_entity(
                        db.sources_of("product", keys), PRODUCT_KEY
                    )
            products = products_flat.drop(columns=["bucket", "expired"], errors="ignore")
            products = products.set_index(PRODUCT_KEY)
        delta = StateDelta(customers, categories, products)
        after = ProfileState(customers, categories, products)
        yield (
            customer_profiles(after, delta, None, sources["customer"]),
            product_profiles(after, delta, None, sources["product"]),
        )


def _with_bucket(ranges: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """``ranges`` (store_id first) with each row's state bucket, taken from the facts' stores."""
    buckets = facts.drop_duplicates("store_id").set_index("store_id")["bucket"]
    out = ranges.copy()
    out.insert(0, "bucket", out["store_id"].map(buckets).astype("int64"))
    return out
