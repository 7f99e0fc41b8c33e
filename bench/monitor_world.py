"""The monitor benchmark's data: a synthetic world, its history and reference, and the live records.

History and live traffic come from one :class:`~storeml.connectors.synthetic.GeneratorConfig`
(the first ``history_events`` events are history, the rest live). The enriched records are made
by the stream's own pure enrichment code, not by Spark: events are turned into facts
(``models/events.py``), folded micro-batch by micro-batch (``models/profiles.py``: ``fold``,
``apply_delta``, ``customer_profiles``, ``product_profiles``, exactly what each enrich task runs
on its share of a batch) and encoded with ``streams/publish.encode_profiles``. So the records per
input event are what the stream emits at that batch size, and the records are the stream's own
shape; only the model outputs are synthetic (:func:`propensity`, :func:`predictions`: fixed
functions of the profile plus seeded noise, the same in the reference and live, so a stationary
world shows no drift).

The monitors are fitted as training fits them (``fit_monitor`` with ``monitor_options``, from the
last ``monitor_reference_days`` of the history) and logged under ``monitors/`` in an MLflow run
registered as a version of each model with the serving alias; the version carries no per-store
model bundle (the monitor never reads one), which keeps 100,000-store runs to seconds.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "World",
    "LiveBatch",
    "Reference",
    "propensity",
    "predictions",
    "build_reference",
    "register_monitors",
    "live_batches",
    "input_partition",
]

_CATEGORY_NAMES: tuple[str, ...] = ()


@dataclass(frozen=True)
class World:
    """Sizes of one synthetic world; event time runs at ``events_per_second`` (event-time pace)."""

    stores: int
    history_events: int
    live_events: int
    seed: int = 7
    events_per_second: float = 1_000.0
    min_store_events: int = 10
    drift_store: str | None = None
    drift_from_ms: int = 0
    drift_until_ms: int = 2**62
    drift_price_factor: float = 1.0

    def config(self) -> Any:
        from storeml.connectors.synthetic import GeneratorConfig

        return GeneratorConfig(
            stores=self.stores,
            events=self.history_events + self.live_events,
            seed=self.seed,
            events_per_second=self.events_per_second,
            min_store_events=self.min_store_events,
            initial_catalogue_share=1.0,  # stationary: no catalogue growth to look like drift
            update_share=0.0,
            drift_store=self.drift_store,
            drift_from_ms=self.drift_from_ms,
            drift_until_ms=self.drift_until_ms,
            drift_price_factor=self.drift_price_factor,
        )

    @property
    def live_start_ms(self) -> int:
        """Event time of the first live event (before jitter)."""
        cfg = self.config()
        return int(cfg.start_ms + self.history_events * 1000.0 / self.events_per_second)


def _categories() -> tuple[str, ...]:
    global _CATEGORY_NAMES
    if not _CATEGORY_NAMES:
        from storeml.connectors.synthetic import CATEGORIES

        _CATEGORY_NAMES = tuple(sorted(CATEGORIES))
    return _CATEGORY_NAMES


# --- synthetic model outputs ---------------------------------------------------------------------
def propensity(profiles: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """A repeat-purchase probability: a fixed logistic of the profile plus seeded noise."""
    orders = profiles["order_count"].to_numpy(dtype="float64")
    views = profiles["product_views"].to_numpy(dtype="float64")
    days = pd.to_numeric(profiles["days_since_last_order"], errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    days = np.where(np.isnan(days), 60.0, days)
    logit = -1.2 + 0.6 * np.log1p(orders) + 0.2 * np.log1p(views) - 0.02 * days
    logit += rng.normal(0.0, 0.5, len(orders))
    return 1.0 / (1.0 + np.exp(-logit))


def predictions(
    profiles: pd.DataFrame, truth: dict[tuple[str, str], str], rng: np.random.Generator
) -> list[list[dict[str, Any]]]:
    """Top-5 categories of uncategorised products (empty for categorised ones), like the model's."""
    names = _categories()
    out: list[list[dict[str, Any]]] = []
    for store, product, category in zip(
        profiles["store_id"].tolist(),
        profiles["product_id"].tolist(),
        profiles["category"].tolist(),
        strict=True,
    ):
        if category is not None and category == category:
            out.append([])
            continue
        true = truth.get((store, product), names[0])
        others = [c for c in names if c != true]
        picked = [others[i] for i in rng.choice(len(others), 4, replace=False)]
        ranked = [true, *picked] if rng.random() < 0.7 else [picked[0], true, *picked[1:]]
        probs = np.sort(rng.dirichlet(np.full(5, 0.6)))[::-1]
        out.append(
            [
                {"category": c, "probability": float(p), "rank": i}
                for i, (c, p) in enumerate(zip(ranked, probs, strict=True))
            ]
        )
    return out


# --- history, reference, registration -----------------------------------------------------------
@dataclass
class Reference:
    """Reference rows of each monitor kind, the profile state after the history, and truths."""

    frames: dict[str, pd.DataFrame]
    state: Any
    truth: dict[tuple[str, str], str]
    history_events: int
    seconds: float
    order_rows_by_store: dict[str, int] = field(default_factory=dict)


def _facts(events: list[Any], topic: str, offsets: list[tuple[int, int]] | None = None) -> Any:
    from storeml.models.events import ORDER, PRODUCT, facts_from_events

    rows = (
        (
            ORDER if e.topic_kind == "orders" else PRODUCT,
            e.record,
            topic if offsets is None else offsets[i][0],
            0 if offsets is None else offsets[i][1],
            i if offsets is None else offsets[i][2],
        )
        for i, e in enumerate(events)
    )
    return facts_from_events(rows)  # type: ignore[arg-type]


def build_reference(world: World, settings: Any, slices: int = 16) -> tuple[Reference, Iterator]:
    """Fold the history as training does; returns the reference and an iterator of live events."""
    from storeml.batch.monitor_train import reference_start
    from storeml.connectors.synthetic import catalogue, generate
    from storeml.models.monitor_reference import (
        customer_reference,
        order_reference,
        product_reference,
    )
    from storeml.models.profiles import (
        ProfileState,
        apply_delta,
        customer_profiles,
        fold,
        product_profiles,
    )

    started = time.perf_counter()
    config = world.config()
    stream = generate(config)
    history = [e for _, e in zip(range(world.history_events), stream, strict=False)]
    facts = _facts(history, "history")
    since = reference_start(facts, settings.monitor_reference_days)
    truth = {
        (p.store_id, p.product_id): p.category for ps in catalogue(config).values() for p in ps
    }
    rng = np.random.default_rng(world.seed)
    end = int(facts["event_time"].max()) + 1
    edges = [int(facts["event_time"].min()), *np.linspace(since, end, slices + 1).astype(int)]
    state = ProfileState()
    customers, products = [], []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        part = facts[(facts["event_time"] >= lo) & (facts["event_time"] < hi)]
        if part.empty:
            continue
        delta = fold(state, part)
        state = apply_delta(state, delta)
        if i == 0 and since > edges[0]:
            continue
        c = customer_profiles(state, delta, part)
        c["propensity"] = propensity(c, rng)
        customers.append(c)
        p = product_profiles(state, delta, part)
        p["predicted_categories"] = predictions(p, truth, rng)
        products.append(p)
    orders = order_reference(facts[facts["event_time"] >= since], end)
    frames = {
        "orders": orders,
        "customer": customer_reference(pd.concat(customers, ignore_index=True)),
        "product": product_reference(pd.concat(products, ignore_index=True)),
    }
    ref = Reference(
        frames=frames,
        state=state,
        truth=truth,
        history_events=len(history),
        seconds=time.perf_counter() - started,
        order_rows_by_store=orders["store_id"].value_counts().to_dict(),
    )
    return ref, stream


def register_monitors(settings: Any, reference: Reference) -> dict[str, Any]:
    """Fit the monitors and register them as the served version of both models."""
    import mlflow

    from storeml.batch.monitor_train import monitor_options
    from storeml.connectors.mlflow_registry import configure, ensure_experiment, register_bundle
    from storeml.connectors.monitor_registry import MONITORS_ARTIFACT
    from storeml.models.monitor_reference import fit_monitor

    started = time.perf_counter()
    options = monitor_options(settings)
    fitted = {k: fit_monitor(k, f, **options) for k, f in reference.frames.items() if len(f)}
    fit_s = time.perf_counter() - started
    configure(settings.tracking_uri, settings.registry_uri)
    versions: dict[str, str] = {}
    for model, kinds in (
        (settings.customer_model, ("orders", "customer")),
        (settings.product_model, ("product",)),
    ):
        experiment = ensure_experiment(
            model,
            f"{settings.artifact_root.rstrip('/')}/{model}",
            tracking_uri=settings.tracking_uri,
        )
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
            folder = Path(tmp) / MONITORS_ARTIFACT
            folder.mkdir()
            for kind in kinds:
                if kind in fitted:
                    fitted[kind].model_name = model
                    fitted[kind].save(folder / f"{kind}.joblib")
            with mlflow.start_run(experiment_id=experiment, run_name="monitor-bench") as run:
                mlflow.log_artifacts(str(folder), artifact_path=MONITORS_ARTIFACT)
                run_id = run.info.run_id
        handle = register_bundle(
            settings.tracking_uri,
            settings.registry_uri,
            model,
            f"runs:/{run_id}/{MONITORS_ARTIFACT}",
            run_id=run_id,
            alias=settings.serving_alias,
        )
        versions[model] = handle.version
    return {
        "monitors": fitted,
        "versions": versions,
        "fit_s": fit_s,
        "register_s": time.perf_counter() - started - fit_s,
        "bins": {k: m.n_bins for k, m in fitted.items()},
        "stores_with_own_reference": {k: len(m.store_ids) for k, m in fitted.items()},
        "alpha": {k: m.alpha for k, m in fitted.items()},
    }


# --- live traffic ------------------------------------------------------------------------------
def input_partition(key: bytes, partitions: int) -> int:
    """The partition the bench writes an input event to (CRC-32 of its key)."""
    return zlib.crc32(key) % partitions


@dataclass
class LiveBatch:
    """One micro-batch of live events: input messages and the enriched records it produced."""

    inputs: list[tuple[str, int, bytes, bytes]]  # topic, partition, key, value
    enriched: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
    events: int
    customers: int
    products: int
    stores: set[str]
    first_ms: int
    last_ms: int


def live_batches(
    events: Iterator[Any],
    reference: Reference,
    settings: Any,
    versions: dict[str, str],
    batch: int,
    *,
    enriched: bool = True,
    customer_version: bool = True,
) -> Iterator[LiveBatch]:
    """Fold the live events ``batch`` at a time as the stream would; yield what each batch writes.

    Offsets are assigned as the broker will (fresh topics, one producer writing in this order).
    With ``enriched=False`` only the input messages are made (no fold). With
    ``customer_version=False`` customer profiles name no model version (the monitor then applies
    the served version's monitor to them and counts no live performance: a work-around, see
    docs/monitor-bench.md).
    """
    folder = _Folder(reference, settings, versions, enriched)
    if not customer_version:
        folder.models["customer"]["version"] = None
    chunk: list[Any] = []
    for event in events:
        if event.malformed is not None:
            continue
        chunk.append(event)
        if len(chunk) >= batch:
            yield folder.batch(chunk)
            chunk = []
    if chunk:
        yield folder.batch(chunk)


class _Folder:
    """The stream's per-batch work on live events: offsets, fold, scores, encoded records."""

    def __init__(
        self, reference: Reference, settings: Any, versions: dict[str, str], enriched: bool
    ) -> None:
        self.reference = reference
        self.settings = settings
        self.enriched = enriched
        self.state = reference.state
        self.topics = {"orders": settings.topic_orders, "products": settings.topic_products}
        self.next_offset: dict[tuple[str, int], int] = {}
        self.rng = np.random.default_rng(reference.history_events)
        self.models = {
            kind: {"name": name, "version": versions.get(name), "scope": "store"}
            for kind, name in (
                ("customer", settings.customer_model),
                ("product", settings.product_model),
            )
        }

    def batch(self, chunk: list[Any]) -> LiveBatch:
        from storeml.models.profiles import (
            apply_delta,
            customer_profiles,
            fold,
            product_profiles,
            to_records,
        )
        from storeml.streams.publish import CUSTOMER_FIELDS, PRODUCT_FIELDS, encode_profiles

        parts = self.settings.topic_partitions
        inputs, offsets = [], []
        for e in chunk:
            topic = self.topics[e.topic_kind]
            p = input_partition(e.key, parts)
            off = self.next_offset.get((topic, p), 0)
            self.next_offset[(topic, p)] = off + 1
            inputs.append((topic, p, e.key, e.value))
            offsets.append((topic, p, off))
        times = [int(e.record["event_time"]) for e in chunk]
        out = LiveBatch(
            inputs=inputs,
            enriched=[],
            events=len(chunk),
            customers=0,
            products=0,
            stores={e.record["store_id"] for e in chunk},
            first_ms=min(times),
            last_ms=max(times),
        )
        if not self.enriched:
            return out
        facts = _facts(chunk, "", offsets)
        delta = fold(self.state, facts)
        self.state = apply_delta(self.state, delta)
        customers = customer_profiles(self.state, delta, facts)
        customers["propensity"] = propensity(customers, self.rng)
        customers["model"] = [self.models["customer"]] * len(customers)
        customers["shadow"] = None
        products = product_profiles(self.state, delta, facts)
        products["predicted_categories"] = predictions(products, self.reference.truth, self.rng)
        products["model"] = [self.models["product"]] * len(products)
        products["shadow"] = None
        out.enriched = encode_profiles(
            self.settings.topic_customer_profiles,
            self.settings.topic_product_profiles,
            to_records(customers, CUSTOMER_FIELDS),
            to_records(products, PRODUCT_FIELDS),
        )
        out.customers, out.products = len(customers), len(products)
        return out
