"""Feast's side of the serving benchmark's peer; runs inside Feast's own virtual environment.

Not part of storeml and never imported by it: ``bench/serve_peer.py`` runs this file with the
Python of the cached Feast venv (``~/.cache/storeml-bench/feast-venv``), so it imports only the
standard library, pandas and Feast. It

1. writes ``feature_store.yaml`` into ``--repo`` (project ``storeml_bench``, local provider, file
   registry, the Redis online store at ``--redis``),
2. applies two entities (``store`` on ``store_id``, ``customer`` on ``customer_id``, so a row is
   keyed by the tenant as storeml's hashes are) and one feature view ``customer_profile`` whose
   features are the served profile fields (JSON text for lists and records, timestamps as Feast's
   ``UnixTimestamp``),
3. writes the profiles of ``--profiles`` (Parquet from the main bench) with Feast's own write path,
   ``FeatureStore.write_to_online_store``, in chunks, and prints one JSON line of timings.

``feast serve`` is then started on the same repo by the main bench.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

PROJECT = "storeml_bench"
VIEW = "customer_profile"

#: Feature name -> Feast value type name (``feast.types``).
FEATURES = {
    "profile_version": "Int64",
    "order_count": "Int64",
    "total_spend_minor": "Int64",
    "avg_order_value_minor": "Float64",
    "first_order_time": "UnixTimestamp",
    "last_order_time": "UnixTimestamp",
    "last_event_time": "UnixTimestamp",
    "days_since_last_order": "Float64",
    "top_categories": "String",
    "product_views": "Int64",
    "propensity": "Float64",
    "model": "String",
    "shadow": "String",
}

YAML = """project: {project}
provider: local
registry:
  path: {registry}
  cache_ttl_seconds: 600
online_store:
  type: redis
  connection_string: "{redis}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def write_repo(repo: Path, redis: str) -> None:
    """``feature_store.yaml`` for the Redis at ``redis`` (``host:port,db=N``)."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "data").mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        YAML.format(project=PROJECT, registry=repo / "data" / "registry.db", redis=redis)
    )


def apply(repo: Path, source_path: Path) -> object:
    """Register the entities and the feature view; returns the ``FeatureStore``."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType, types

    store = Entity(name="store", join_keys=["store_id"], value_type=ValueType.STRING)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    source = FileSource(path=str(source_path), timestamp_field="event_timestamp")
    view = FeatureView(
        name=VIEW,
        entities=[store, customer],
        ttl=timedelta(days=3650),
        schema=[Field(name=n, dtype=getattr(types, t)) for n, t in FEATURES.items()],
        online=True,
        source=source,
    )
    fs = FeatureStore(repo_path=str(repo))
    fs.apply([store, customer, view])
    return fs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--redis", required=True, help="host:port,db=0 (Feast's form)")
    parser.add_argument("--profiles", type=Path, required=True, help="Parquet of the profiles")
    parser.add_argument("--chunk", type=int, default=10_000)
    args = parser.parse_args(argv)

    import pandas as pd

    started = time.perf_counter()
    write_repo(args.repo, args.redis)
    frame = pd.read_parquet(args.profiles)
    frame.head(0).to_parquet(args.repo / "data" / "source.parquet")  # schema only
    fs = apply(args.repo, args.repo / "data" / "source.parquet")
    applied = time.perf_counter()
    for start in range(0, len(frame), args.chunk):
        fs.write_to_online_store(VIEW, frame.iloc[start : start + args.chunk])  # type: ignore[attr-defined]
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "rows": len(frame),
                "apply_s": applied - started,
                "write_s": done - applied,
                "rows_per_s": len(frame) / max(done - applied, 1e-9),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
