"""The API over what a real Spark stream published: every profile the enriched topics hold is what
the API returns, predict by id (every profile) and by posted row (a sample) score exactly as the
stream did, and segments equal a filter of all profiles, also while the stream rewrites them.

One stream run (broker, Spark, Redis, MLflow, all real) feeds every assertion here.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from storeml.connectors.synthetic import GeneratorConfig
from storeml.schemas.typed import field_types, parse_time
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


HIDDEN = {"store_id", "customer_id", "product_id", "profile_version", "model", "source"}


def _as_record(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """API ``fields`` back in the Avro record's form (times as epoch ms)."""
    types = field_types(kind)
    return {
        name: parse_time(name, value) if value is not None and types[name].timestamp else value
        for name, value in fields.items()
    }


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_the_api_serves_what_the_stream_published(
    spark: Any, settings: Settings, api_server: Any
) -> None:
    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 2_500})
    handles = train_on_synthetic(settings, stores=4, events=4_000, seed=11)
    produce(settings, GeneratorConfig(stores=4, events=6_000, seed=5))
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
    assert published["customer"] and published["product"]
    assert any(r["predicted_categories"] for r in published["product"].values())
    server = api_server(serve_rate_limit=0)
    server.wait_ready()
    stores = sorted({store for store, _ in published["customer"]})

    with server.client(server.admin_key) as api:
        # --- lookups: every profile, through batchGet; a sample one by one ---------------------
        for kind, plural in (("customer", "customers"), ("product", "products")):
            for store in stores:
                ids = sorted(e for s, e in published[kind] if s == store)
                for chunk in _chunks(ids, 100):
                    answer = api.post(f"/v1/stores/{store}/{plural}:batchGet", json={"ids": chunk})
                    assert answer.status_code == 200, answer.text
                    body = answer.json()
                    assert body["missing"] == []
                    for profile in body["profiles"]:
                        record = published[kind][(store, profile["id"])]
                        assert profile["profile_version"] == record["profile_version"]
                        assert profile["model"] == record["model"]
                        want = {k: v for k, v in record.items() if k not in HIDDEN}
                        assert _as_record(kind, profile["fields"]) == want, (store, profile["id"])
                        assert profile["freshness"]["written_at"] is not None
                single = api.get(f"/v1/stores/{store}/{plural}/{ids[0]}").json()
                assert single == body["profiles"][0] if len(ids) <= 100 else single["id"] == ids[0]

        # --- predict by id scores the stored profile exactly as the stream did -----------------
        _wait_for_models(api, stores[0])
        limit = settings.serve_batch_limit
        compared = {"customer": 0, "product": 0}
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


def _pages(api: Any, store: str, minimum: float, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"field": "propensity", "min": minimum, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        answer = api.get(f"/v1/stores/{store}/segments/customer", params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_segments_equal_a_filter_of_all_profiles_while_the_stream_writes(
    spark: Any, settings: Settings, api_server: Any
) -> None:
    """Pages and exports equal a pandas filter of every published profile; while a second stream
    run rewrites many profiles, paging returns no id twice and misses none that stayed put."""
    import pandas as pd

    from storeml.batch.history import train_on_synthetic
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 1_500})
    train_on_synthetic(settings, stores=3, events=3_000, seed=11)
    produce(settings, GeneratorConfig(stores=3, events=5_000, seed=5))
    query, _ = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None

    def published() -> pd.DataFrame:
        latest = latest_from_topic(
            settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
        )
        return pd.DataFrame(
            [
                {"store": s, "id": c, "propensity": r["propensity"], "v": r["profile_version"]}
                for (s, c), r in latest.items()
            ]
        )

    before = published()
    minimum = 0.3
    server = api_server()
    key = server.key(str(before["store"].iloc[0]), "segments")
    store = str(before["store"].iloc[0])
    mine = before[before["store"] == store]
    want = set(mine[mine["propensity"].notna() & (mine["propensity"] >= minimum)]["id"])
    assert want, "the segment should not be empty"
    with server.client(key) as api:
        assert set(_pages(api, store, minimum, 7)) == want
        export = api.get(
            f"/v1/stores/{store}/segments/customer:export",
            params={"field": "propensity", "min": minimum, "format": "csv"},
        )
        assert export.status_code == 200, export.text
        rows = export.text.strip().splitlines()
        assert rows[0] == "id,score"
        exported = [line.split(",")[0] for line in rows[1:]]
        assert len(exported) == len(set(exported)) and set(exported) == want

        # the same customers keep ordering (new events of the same world), the stream runs again
        produce(settings, GeneratorConfig(stores=3, events=5_000, seed=6))
        query, _ = start_enrichment(spark, settings, available_now=True)
        seen: list[list[str]] = []
        while query.isActive:
            seen.append(_pages(api, store, minimum, 5))
        query.awaitTermination(600)
        assert query.exception() is None
        seen.append(_pages(api, store, minimum, 5))

    after = published()
    moved = set(after["id"][after["store"] == store]) - set(
        pd.merge(before, after, on=["store", "id", "v"])["id"]
    )
    for ids in seen:
        assert len(ids) == len(set(ids)), "an id came twice in one paging"
        assert want - moved <= set(ids), "a profile that did not change was missed"
    final = after[after["store"] == store]
    assert set(seen[-1]) == set(
        final[final["propensity"].notna() & (final["propensity"] >= minimum)]["id"]
    )
    assert moved, "the second run should have rewritten some profiles"
