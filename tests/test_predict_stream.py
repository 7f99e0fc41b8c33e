"""Predict by id equals the stream's score: a real Spark stream writes the profiles, a real
``storeml serve`` (uvicorn) scores them again with the registry's champion.

Broker -> Spark stream -> enriched topic + Redis; then every profile is predicted through the API
by id (the stored profile is scored) and, for a sample, by posting the profile's fields as a row.
Both must give exactly the score and model reference the stream published on the topic.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from storeml.connectors.synthetic import GeneratorConfig
from storeml.settings import Settings
from tests.test_stream_e2e import latest_from_topic, produce

pytestmark = pytest.mark.slow

SCORED = {"customer": "propensity", "product": "predicted_categories"}


def _wait_for_models(api: httpx.Client, store: str, timeout: float = 120.0) -> None:
    """Until the server has opened both champions (503 until its first resolution pass)."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [
            api.post(f"/v1/stores/{store}/models/{kind}:predict", json={"ids": ["nobody"]})
            for kind in SCORED
        ]
        if all(a.status_code == 200 for a in answers):
            return
        assert {a.status_code for a in answers} <= {200, 503}, [a.text for a in answers]
        assert time.monotonic() < deadline, f"models not served: {[a.text for a in answers]}"
        time.sleep(0.2)


def test_predict_by_id_equals_the_streams_score(
    spark: Any, settings: Settings, api_server: Any
) -> None:
    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 2_500})
    handles = train_on_synthetic(settings, stores=4, events=5_000, seed=13)
    produce(settings, GeneratorConfig(stores=4, events=5_000, seed=6))
    query, _ = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None
    published = {
        "customer": latest_from_topic(
            settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
        ),
        "product": latest_from_topic(
            settings, settings.topic_product_profiles, "product_id", "product_profile"
        ),
    }
    assert any(r["predicted_categories"] for r in published["product"].values())

    server = api_server(serve_rate_limit=0)
    limit = settings.serve_batch_limit
    compared = {"customer": 0, "product": 0}
    with server.client(server.admin_key) as api:
        _wait_for_models(api, next(iter(published["customer"]))[0])
        for kind, records in published.items():
            by_store: dict[str, list[str]] = {}
            for store, entity in sorted(records):
                by_store.setdefault(store, []).append(entity)
            for store, entities in by_store.items():
                for start in range(0, len(entities), limit):
                    ids = entities[start : start + limit]
                    answer = api.post(
                        f"/v1/stores/{store}/models/{kind}:predict", json={"ids": ids}
                    )
                    assert answer.status_code == 200, answer.text
                    body = answer.json()
                    assert body["model"] == {
                        "name": handles[kind].name,
                        "version": handles[kind].version,
                        "alias": "champion",
                    }
                    assert body["missing"] == []
                    want = [
                        {
                            "id": entity,
                            SCORED[kind]: records[(store, entity)][SCORED[kind]],
                            "model": records[(store, entity)]["model"],
                        }
                        for entity in ids
                    ]
                    assert body["predictions"] == want
                    compared[kind] += len(ids)
                # a what-if row with the stored profile's fields scores the same
                entity = entities[0]
                profile = api.get(f"/v1/stores/{store}/{kind}s/{entity}").json()
                row = {"id": entity, **profile["fields"]}
                again = api.post(f"/v1/stores/{store}/models/{kind}:predict", json={"rows": [row]})
                assert again.status_code == 200, again.text
                assert (
                    again.json()["predictions"][0][SCORED[kind]]
                    == (records[(store, entity)][SCORED[kind]])
                )
    assert compared == {kind: len(records) for kind, records in published.items()}
