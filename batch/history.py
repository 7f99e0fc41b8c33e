"""Synthetic history for training when a shop has no real history yet (the demo, tests, benches)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from storeml.settings import Settings

__all__ = ["synthetic_facts", "train_on_synthetic"]


def synthetic_facts(stores: int, events: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Facts of a synthetic shop's history and a training cutoff (70% of its events before it)."""
    from storeml.connectors.synthetic import GeneratorConfig, generate
    from storeml.models.events import ORDER, PRODUCT, facts_from_events

    good = [
        (e.topic_kind, e.record)
        for e in generate(GeneratorConfig(stores=stores, events=events, seed=seed))
        if e.malformed is None and e.record is not None
    ]
    facts = facts_from_events(
        (ORDER if kind == "orders" else PRODUCT, record, f"history-{kind}", 0, i)
        for i, (kind, record) in enumerate(good)
    )
    times = sorted(int(record["event_time"]) for _, record in good)
    return facts, times[int(len(times) * 0.7)]


def train_on_synthetic(
    settings: Settings, stores: int, events: int, seed: int, alias: str = "champion"
) -> dict[str, Any]:
    """Train and register every store's models from synthetic history (seed differs from live)."""
    from storeml.batch.train import train_and_register

    facts, cutoff = synthetic_facts(stores, events, seed + 1000)
    return train_and_register(settings, facts, cutoff, alias=alias)
