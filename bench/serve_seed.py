"""The serving benchmark's data: customer profiles written through the stream's own Redis sink, the
same profiles as a Parquet file for the Feast peer, and a registered customer model for predict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CATEGORIES",
    "store_id",
    "customer_id",
    "make_profiles",
    "seed_redis",
    "write_feast_parquet",
    "register_model",
]

CATEGORIES = ("books", "toys", "garden", "kitchen", "sports", "music", "beauty", "tools")
_DAY_MS = 86_400_000


def store_id(i: int) -> str:
    """The id of store ``i`` (the form ``bench.scoring_bench`` gives its bundle's stores)."""
    return f"store-{i:06d}"


def customer_id(i: int) -> str:
    return f"c{i:07d}"


def make_profiles(
    stores: int, customers: int, *, seed: int, now_ms: int, model: str
) -> list[dict[str, Any]]:
    """``customers`` customer profile records spread evenly over ``stores`` stores.

    Records are in the stream's record form (what ``streams.publish`` hands to the Avro codec):
    ints, floats, epoch-ms times, lists and dicts, None for absent nullable fields. About a fifth
    of the customers never ordered (null order times, empty categories), as in real stores.
    """
    rng = np.random.default_rng(seed)
    orders = rng.poisson(2.5, customers)
    spend = orders * rng.integers(500, 20_000, customers)
    last_event = now_ms - rng.integers(0, 90 * _DAY_MS, customers)
    last_order = last_event - rng.integers(0, 30 * _DAY_MS, customers)
    first_order = last_order - rng.integers(0, 365 * _DAY_MS, customers)
    views = rng.poisson(8.0, customers)
    propensity = rng.uniform(0.0, 1.0, customers)
    n_categories = rng.integers(1, 6, customers)
    offsets = rng.integers(0, 10_000_000, customers)
    out: list[dict[str, Any]] = []
    for i in range(customers):
        n = int(orders[i])
        total = int(spend[i])
        cats: list[dict[str, Any]] = []
        if n:
            picks = rng.choice(len(CATEGORIES), int(n_categories[i]), replace=False)
            weights = np.sort(rng.dirichlet(np.ones(len(picks))))[::-1]
            cats = [
                {
                    "category": CATEGORIES[int(c)],
                    "spend_minor": int(total * float(w)),
                    "share": round(float(w), 6),
                }
                for c, w in zip(picks, weights, strict=True)
            ]
        out.append(
            {
                "store_id": store_id(i % stores),
                "customer_id": customer_id(i // stores),
                "profile_version": n + int(views[i]) + 1,
                "order_count": n,
                "total_spend_minor": total,
                "avg_order_value_minor": total / n if n else None,
                "first_order_time": int(first_order[i]) if n else None,
                "last_order_time": int(last_order[i]) if n else None,
                "last_event_time": int(last_event[i]),
                "days_since_last_order": (
                    (int(last_event[i]) - int(last_order[i])) / _DAY_MS if n else None
                ),
                "top_categories": cats,
                "product_views": int(views[i]),
                "propensity": float(propensity[i]),
                "model": {"name": model, "version": "1", "scope": "store"},
                "source": [
                    {
                        "topic": "bench.orders",
                        "partition": i % 4,
                        "first_offset": int(offsets[i]),
                        "last_offset": int(offsets[i]) + n,
                    }
                ],
                "shadow": None,
            }
        )
    return out


def seed_redis(
    target: Any, prefix: str, records: Sequence[dict[str, Any]], chunk: int = 5_000
) -> dict[str, float]:
    """Write ``records`` with the stream's :class:`RedisProfileSink` (its Lua guard, its encoding)."""
    from storeml.connectors.redis_sink import RedisProfileSink

    started = time.perf_counter()
    sink = RedisProfileSink(target, prefix)
    sink.setup()
    written = 0
    try:
        for start in range(0, len(records), chunk):
            ok, _ = sink.write("customer", records[start : start + chunk], "customer_id")
            written += ok
    finally:
        sink.close()
    seconds = time.perf_counter() - started
    return {"written": written, "seconds": seconds, "rows_per_s": written / max(seconds, 1e-9)}


def write_feast_parquet(records: Sequence[dict[str, Any]], path: Path, now_ms: int) -> None:
    """The same profiles as Feast rows: entity keys, features, JSON text for lists and records."""
    import json

    import pandas as pd

    def times(name: str) -> Any:
        return pd.to_datetime([r[name] for r in records], unit="ms", utc=True)

    def text(name: str) -> list[str | None]:
        return [
            None if r[name] is None else json.dumps(r[name], separators=(",", ":")) for r in records
        ]

    frame = pd.DataFrame(
        {
            "store_id": [r["store_id"] for r in records],
            "customer_id": [r["customer_id"] for r in records],
            "event_timestamp": pd.to_datetime([now_ms] * len(records), unit="ms", utc=True),
            "profile_version": [r["profile_version"] for r in records],
            "order_count": [r["order_count"] for r in records],
            "total_spend_minor": [r["total_spend_minor"] for r in records],
            "avg_order_value_minor": [r["avg_order_value_minor"] for r in records],
            "first_order_time": times("first_order_time"),
            "last_order_time": times("last_order_time"),
            "last_event_time": times("last_event_time"),
            "days_since_last_order": [r["days_since_last_order"] for r in records],
            "top_categories": text("top_categories"),
            "product_views": [r["product_views"] for r in records],
            "propensity": [r["propensity"] for r in records],
            "model": text("model"),
            "shadow": text("shadow"),
        }
    )
    for name in ("avg_order_value_minor", "days_since_last_order"):
        frame[name] = frame[name].astype("float64")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def register_model(
    workdir: Path, stores: int, tracking_uri: str, artifact_root: str, name: str, alias: str
) -> dict[str, Any]:
    """Register a customer bundle of ``stores`` store models as ``name@alias`` in MLflow on SQLite.

    The bundle is ``bench.scoring_bench.write_store_bundle``'s (StandardScaler + logistic
    regression per store, the linear table), logged and registered the way training does.
    """
    import mlflow

    from bench.scoring_bench import write_store_bundle
    from storeml.connectors.mlflow_registry import (
        configure,
        ensure_experiment,
        log_bundle_model,
        register_bundle,
    )
    from storeml.models.bundle_integrity import bundle_digest
    from storeml.models.store_models import make_pyfunc_model
    from storeml.stack import init_mlflow

    started = time.perf_counter()
    init_mlflow(tracking_uri, artifact_root)
    folder = workdir / "bundle"
    write_store_bundle(folder, stores, templates=4, without_model=0.1, seed=11)
    bundle = folder / "artifacts" / "stores"
    configure(tracking_uri)
    experiment = ensure_experiment(name, f"{artifact_root}/{name}", tracking_uri=tracking_uri)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_bundle_model(bundle, make_pyfunc_model(), ["storeml"])
    handle = register_bundle(
        tracking_uri,
        None,
        name,
        info.model_uri,
        run_id=run.info.run_id,
        alias=alias,
        digest=bundle_digest(bundle),
    )
    return {"name": name, "version": handle.version, "seconds": time.perf_counter() - started}
