"""The event lake the stream would have archived, written straight from the synthetic generator."""

from __future__ import annotations

import pandas as pd

from storeml.connectors.event_lake import EventLakeSink
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.settings import Settings

__all__ = ["write_lake_events"]


def write_lake_events(settings: Settings, *, stores: int, events: int, seed: int) -> None:
    """Generate ``events`` over ``stores`` and write the valid ones to ``settings.lake_path``.

    One partition per topic, offsets from 0, as the stream's lake sink writes them.
    """
    generated = [
        e for e in generate(GeneratorConfig(stores=stores, events=events, seed=seed)) if e.record
    ]
    assert settings.lake_path is not None
    lake = EventLakeSink(str(settings.lake_path))
    for kind, topic in (("orders", settings.topic_orders), ("products", settings.topic_products)):
        chosen = [e for e in generated if e.topic_kind == kind]
        lake.write(
            pd.DataFrame(
                {
                    "topic": topic,
                    "partition": 0,
                    "offset": range(len(chosen)),
                    "key": [e.key for e in chosen],
                    "value": [e.value for e in chosen],
                    "store_id": [e.record["store_id"] for e in chosen if e.record],
                    "event_time": [e.record["event_time"] for e in chosen if e.record],
                }
            )
        )
