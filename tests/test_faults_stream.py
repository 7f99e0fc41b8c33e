"""Faults stay with their tenant, through the real stream: a store whose model raises, a
challenger that raises, a served version that cannot be opened. Real broker, Spark, MLflow, Redis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from storeml.connectors.event_producer import produce_events
from storeml.connectors.kafka_admin import read_all, watermark_method_for
from storeml.connectors.redis_sink import FeatureStore
from storeml.connectors.synthetic import GeneratorConfig, generate
from storeml.settings import Settings
from tests.reference import assert_profiles_match, reference_profiles
from tests.test_stream_e2e import input_events, latest_from_topic, produce

pytestmark = pytest.mark.slow


def _wrong_shape() -> Any:
    """A model trained on 3 features: predict_proba on the profile features raises ValueError."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    return LogisticRegression().fit(rng.random((20, 3)), np.arange(20) % 2)


def _register(
    settings: Settings,
    folder: Path,
    alias: str,
    *,
    store_models: dict[str, Any],
    global_model: Any,
    tamper: bool = False,
) -> Any:
    """Write a customer bundle and register it the way training does (with its digest); with
    ``tamper``, its ``index.json`` changes after the digest was taken."""
    from storeml.models.bundle_integrity import bundle_digest
    from storeml.models.features import CUSTOMER_FEATURES
    from storeml.models.store_models import write_bundle
    from tests.registry import log_and_register

    folder = folder / "stores"  # MLflow keeps an artifact folder's name
    write_bundle(
        folder,
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=store_models,
        global_model=global_model,
        linear=False,
        metadata={"model_name": settings.customer_model},
    )
    digest = bundle_digest(folder)
    if tamper:
        index = json.loads((folder / "index.json").read_text())
        index.setdefault("metadata", {})["note"] = "edited"
        (folder / "index.json").write_text(json.dumps(index))
    return log_and_register(
        folder,
        settings.tracking_uri,
        settings.artifact_root,
        settings.customer_model,
        alias,
        digest=digest,
    )


def _notices(settings: Settings) -> list[dict[str, Any]]:
    method = watermark_method_for(settings.kafka_flavor)
    return [
        json.loads(r.value)
        for r in read_all(settings.kafka_config(), settings.topic_notices, method)
    ]


def test_failing_models_stay_with_their_store_and_never_erase_a_score(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    from storeml.batch.history import train_on_synthetic
    from storeml.models.scoring import score_customers
    from storeml.models.store_models import get_model_cache
    from storeml.streams.enrich import start_enrichment

    settings = settings.model_copy(update={"max_records_per_batch": 2_000})
    v1 = train_on_synthetic(settings, stores=5, events=5_000, seed=3)["customer"]
    cache = get_model_cache()
    trained = cache.bundle(v1, settings.tracking_uri, settings.registry_uri)
    own = {store: trained.model_for(store)[0] for store in trained.stores}
    assert len(own) >= 2, "the synthetic history should give several stores a model"
    bad = sorted(own)[0]
    # champion: the same models, but store `bad`'s was trained on other features
    _register(
        settings,
        tmp_path / "champion",
        "champion",
        store_models={**own, bad: _wrong_shape()},
        global_model=trained.global_model(),
    )
    # challenger: every model raises
    _register(
        settings,
        tmp_path / "challenger",
        "challenger",
        store_models={store: _wrong_shape() for store in own},
        global_model=_wrong_shape(),
    )

    produce(settings, GeneratorConfig(stores=5, events=4_000, seed=5))
    reports: list[Any] = []
    query, _ = start_enrichment(spark, settings, available_now=True, on_batch=reports.append)
    query.awaitTermination(600)
    assert query.exception() is None, query.exception()  # nothing crashed

    good, _ = input_events(settings)
    want, _ = reference_profiles(good)
    got = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    assert_profiles_match(got, want)  # every store's profiles are complete and right
    # other stores are scored exactly as by the trained models; `bad` by the global model
    frame = pd.DataFrame(list(got.values()))
    expected = score_customers(frame, trained, v1)
    for record, propensity, ref in zip(
        got.values(), expected["propensity"], expected["model"], strict=True
    ):
        assert record["shadow"] is None  # the failing challenger only disabled shadow
        if record["store_id"] == bad:
            assert record["model"]["scope"] == "global"
            assert record["propensity"] is not None
        else:
            assert record["model"]["scope"] == ref["scope"]
            assert record["propensity"] == pytest.approx(propensity, rel=1e-9)
    assert sum(r.model_faults for r in reports) > 0
    notices = _notices(settings)
    served = [n for n in notices if n["role"] == "served"]
    assert served and {n["store_id"] for n in served} == {bad}
    assert all(n["model"] == settings.customer_model and "features" in n["error"] for n in served)
    assert any(n["role"] == "shadow" for n in notices)

    # the champion moves to a version whose files changed after registration: it cannot be
    # opened, so its rows are published "unavailable" and Redis keeps the scores it holds
    broken = _register(
        settings,
        tmp_path / "tampered",
        "champion",
        store_models=own,
        global_model=trained.global_model(),
        tamper=True,
    )
    lookups = FeatureStore(settings.redis, settings.redis_prefix)
    scored_before = {key: lookups.customer(*key) for key in got}
    more = [e for e in generate(GeneratorConfig(stores=5, events=1_500, seed=6))]
    produce_events(settings.kafka_config(), more, settings.topic_orders, settings.topic_products)
    query, _ = start_enrichment(spark, settings, available_now=True)
    query.awaitTermination(600)
    assert query.exception() is None, query.exception()

    latest = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    moved = [key for key in got if latest[key]["profile_version"] > got[key]["profile_version"]]
    assert moved, "the second phase should touch known customers"
    for key in moved:
        record = latest[key]
        assert record["model"] == {
            "name": settings.customer_model,
            "version": broken.version,
            "scope": "unavailable",
        }
        assert record["propensity"] is None
        stored = lookups.customer(*key)
        before = scored_before[key]
        assert stored is not None and before is not None
        assert int(stored["order_count"]) == record["order_count"]  # the profile moved on
        assert stored["propensity"] == before["propensity"]  # its score stayed
        assert stored["model"] == before["model"]
    assert any(
        n["role"] == "served" and n["version"] == broken.version and n["store_id"] is None
        for n in _notices(settings)
    )
    lookups.close()


def test_the_stream_waits_out_a_redis_outage_and_loses_nothing(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    import time

    from storeml.streams.enrich import start_enrichment
    from tests.test_faults import _Redis

    server = _Redis(tmp_path / "redis")
    server.start()
    settings = settings.model_copy(
        update={
            "redis_url": server.url,
            "max_records_per_batch": 1_000,
            "serving_alias": "",
            "shadow_alias": "",
        }
    )
    first = produce(settings, GeneratorConfig(stores=4, events=2_000, seed=31))
    reports: list[Any] = []
    query, _ = start_enrichment(spark, settings, on_batch=reports.append)

    def wait_for(events: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(r.events for r in reports) < events:
            assert query.exception() is None, query.exception()
            assert time.monotonic() < deadline, f"{sum(r.events for r in reports)} of {events}"
            time.sleep(0.2)

    try:
        wait_for(len(first), 300)
        server.stop()  # Redis goes away mid-run ...
        stopped = time.monotonic()
        second = list(generate(GeneratorConfig(stores=4, events=2_000, seed=32)))
        produce_events(
            settings.kafka_config(), second, settings.topic_orders, settings.topic_products
        )
        time.sleep(22)  # ... for more than 20 seconds
        assert query.exception() is None, query.exception()
        server.start()  # same port, same append-only file
        outage = time.monotonic() - stopped
        good, bad = input_events(settings)
        wait_for(len(good) + len(bad), 300)
    finally:
        query.stop()
        server_url = server.url
    assert any(r.seconds >= 20 for r in reports), "a batch should have waited for Redis"
    assert outage >= 20

    want, _ = reference_profiles(good)
    got = latest_from_topic(
        settings, settings.topic_customer_profiles, "customer_id", "customer_profile"
    )
    assert_profiles_match(got, want)
    lookups = FeatureStore(server_url, settings.redis_prefix)
    assert len(lookups.scan("customer")) == len(want)
    for key, record in got.items():
        stored = lookups.customer(*key)
        assert stored is not None, key
        assert int(stored["profile_version"]) == record["profile_version"]
        assert int(stored["total_spend_minor"]) == record["total_spend_minor"]
    lookups.close()
    server.stop()
