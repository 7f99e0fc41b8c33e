"""Synthetic history for training when a shop has no real history yet (the demo, tests, benches).

Event time is laid out like a real shop's: the history covers :data:`HISTORY_DAYS` days from
2024-01-01; training cuts it at 70% of its events and labels a customer positive when they order
again after the cutoff. Live events (:func:`live_config`) follow the history.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from storeml.connectors.synthetic import GeneratorConfig
from storeml.settings import Settings

__all__ = [
    "HISTORY_DAYS",
    "LIVE_DAYS",
    "history_config",
    "live_config",
    "synthetic_facts",
    "train_on_synthetic",
]

HISTORY_DAYS = 120
LIVE_DAYS = 30
_DAY_MS = 86_400_000
_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def history_config(stores: int, events: int, seed: int) -> GeneratorConfig:
    """The generator settings of a shop's history: ``events`` spread over HISTORY_DAYS days."""
    return GeneratorConfig(
        stores=stores,
        events=events,
        seed=seed,
        start_ms=_START_MS,
        events_per_second=events / (HISTORY_DAYS * 86_400),
        jitter_ms=60_000,
    )


def live_config(
    stores: int, events: int, seed: int, malformed_fraction: float = 0.0
) -> GeneratorConfig:
    """Live events: ``events`` spread over LIVE_DAYS days right after the history."""
    return GeneratorConfig(
        stores=stores,
        events=events,
        seed=seed,
        start_ms=_START_MS + HISTORY_DAYS * _DAY_MS,
        events_per_second=events / (LIVE_DAYS * 86_400),
        jitter_ms=60_000,
        malformed_fraction=malformed_fraction,
    )


def synthetic_facts(stores: int, events: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Facts of a synthetic shop's history and a training cutoff (70% of its events before it)."""
    from storeml.connectors.synthetic import generate
    from storeml.models.events import ORDER, PRODUCT, facts_from_events

    good = [
        (e.topic_kind, e.record)
        for e in generate(history_config(stores, events, seed))
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
