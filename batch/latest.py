"""The stream's latest profiles, read from its state: what a scheduled prediction run scores.

Wiring only. A Spark job of one task per shuffle partition; each task restores its state buckets
(:func:`~storeml.connectors.state_store.task_buckets`) at the stream's last committed batch from
the checkpoint (snapshots plus changelog, as a new worker would) into a scratch working copy,
then writes their profiles, unscored, ``task_chunk_rows`` at a time, as profile files
(:mod:`storeml.connectors.profile_files`), the input of ``batch_transform``. Nothing is folded
again: the run costs the size of the state, not of the history, and never touches the stream's
own working copies. It is safe while the stream runs (the cleaning rules keep the last committed
batch restorable; see ``connectors/state_store.py``).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storeml.errors import ConfigError
from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["LatestSummary", "export_latest_profiles", "latest_version"]


@dataclass
class LatestSummary:
    """What :func:`export_latest_profiles` wrote."""

    version: int
    customers: int
    products: int
    seconds: float


def latest_version(state_root: str | Path) -> int:
    """The stream's last committed batch (the newest state manifest); -1 when none."""
    folder = Path(state_root) / "changelog"
    if not folder.exists():
        return -1
    versions = [int(p.name[:12]) for p in folder.glob("*.json") if p.name[:12].isdigit()]
    return max(versions, default=-1)


def export_latest_profiles(
    spark: SparkSession, settings: Settings, output: str | Path
) -> LatestSummary:
    """Write the stream's latest profiles under ``output`` (``<output>/customer|product/``)."""
    from storeml.streams.checkpoint import check_checkpoint, read_checkpoint_meta

    started = time.perf_counter()
    checkpoint = settings.checkpoint_path
    if not (checkpoint / "storeml.json").exists():
        raise ConfigError(
            f"{checkpoint}: no stream checkpoint here, so no latest profiles to score; run the"
            " stream (storeml run) first, set STOREML_CHECKPOINT_DIR, or recompute from history"
        )
    check_checkpoint(checkpoint, settings)  # same state layout
    meta = read_checkpoint_meta(checkpoint)
    version_base = meta.version_base if meta is not None else 0
    root = str(checkpoint / "profile-state")
    version = latest_version(root)
    tasks = settings.shuffle_partitions
    options = {
        "root": root,
        "buckets": settings.state_buckets,
        "cache_dir": str(settings.state_cache_path),
        "cache_mb": settings.state_cache_mb,
        "chunk_rows": settings.task_chunk_rows,
        "version": version,
        "version_base": version_base,  # the profile versions Redis and Kafka hold
        "tasks": tasks,
        "output": str(output),
        "retain": settings.state_retain_batches,
    }
    counts = (
        spark.sparkContext.parallelize(range(tasks), tasks)
        .mapPartitions(lambda parts: _export_task(options, parts))
        .collect()
    )
    return LatestSummary(
        version=version,
        customers=sum(c for c, _ in counts),
        products=sum(p for _, p in counts),
        seconds=time.perf_counter() - started,
    )


def _export_task(options: dict[str, Any], partitions: Any) -> Any:
    """Executor side: restore this task's buckets into a scratch copy, write their profiles."""
    from storeml.batch.recompute_task import state_profiles
    from storeml.connectors.profile_files import write_profiles
    from storeml.connectors.state_db import close_db
    from storeml.connectors.state_store import StateStore, task_buckets
    from storeml.models.profiles import to_records
    from storeml.models.serving import Scorer, score_kind
    from storeml.streams.publish import CUSTOMER_FIELDS, PRODUCT_FIELDS, rebase

    for partition in partitions:
        mine = task_buckets(partition, options["tasks"], options["buckets"])
        if not mine:
            continue
        scratch = Path(options["cache_dir"]) / f"export-{uuid.uuid4().hex}"
        store = StateStore(
            options["root"],
            "export",
            options["buckets"],
            scratch,
            retain=options["retain"],
            cache_mb=options["cache_mb"],
        )
        customers = products = 0
        try:
            store.prepare(mine, options["version"])
            chunks = state_profiles(store.db, mine, options["chunk_rows"], with_sources=False)
            for number, (customer_rows, product_rows) in enumerate(chunks):
                unscored = {
                    kind: to_records(
                        score_kind(
                            kind,
                            rebase(rows, options["version_base"]),
                            Scorer(None, None),
                            None,
                            model_name="none",
                        ),
                        fields,
                    )
                    for kind, rows, fields in (
                        ("customer", customer_rows, CUSTOMER_FIELDS),
                        ("product", product_rows, PRODUCT_FIELDS),
                    )
                }
                write_profiles(
                    options["output"],
                    f"{mine[0]}-{number:05d}",
                    unscored["customer"],
                    unscored["product"],
                )
                customers += len(unscored["customer"])
                products += len(unscored["product"])
        finally:
            close_db(store.db_path)
            shutil.rmtree(scratch, ignore_errors=True)
        yield customers, products
